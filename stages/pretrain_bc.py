"""Stage `pretrain_bc`: demonstrations -> a deliberately weak BC policy (the paper's "poorly initialized" start).

BC runs until the evaluated success reaches ``bc.target_success`` (0.45 by default, so the start is <= ~50%)
or ``bc.max_steps``. Writes models/bc (policy checkpoint), plots/bc_curve.csv, metrics/pretrain_bc.json.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ogpo.agents.bc import BCConfig, train_bc
from ogpo.data.demo_buffer import load_demo_buffer
from ogpo.envs import make_env
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig
from ogpo.policy_io import save_policy
from ogpo.rollout import evaluate, gcp_policy
from stages.common import (
    Timer,
    check_device,
    check_device_name,
    git_revision,
    load_params,
    param,
    stage_main,
    write_json_atomic,
    write_text_atomic,
)
from stages.live import write_live

log = logging.getLogger("stages.pretrain_bc")

DATA = Path("data/demos.hdf5")
SUMMARY = Path("data/summary.json")
OUT = Path("models/bc")
CURVE = Path("plots/bc_curve.csv")
METRICS = Path("metrics/pretrain_bc.json")


@dataclass
class PretrainParams:
    """Params section ``pretrain_bc``. gcp.obs_dim/act_dim are taken from the dataset."""

    seed: int = param(0, ge=0)
    device: str = "cpu"
    threads: int | None = param(1, ge=1)  # torch CPU threads (1: env workers share the cores); None = all
    num_envs: int = param(2, ge=1)  # parallel evaluation envs
    eval_episodes: int = param(32, ge=1)
    env_horizon: int | None = param(None, ge=1)  # episode length override (None = the task's default)
    eval_mode: str = "sde"  # the gate uses the EMA actor with the SDE sampler, as the official code
    gcp: GCPConfig = field(default_factory=GCPConfig)
    bc: BCConfig = field(default_factory=BCConfig)

    def validate(self) -> None:
        if self.eval_mode not in ("sde", "ode"):
            raise ValueError(f"eval_mode must be sde or ode, got {self.eval_mode!r}")
        check_device_name(self.device)
        self.bc.validate()


def run() -> None:
    p = load_params("pretrain_bc", PretrainParams)
    check_device(p.device, "params.yaml: pretrain_bc.device")
    if p.threads:
        torch.set_num_threads(p.threads)
    with Timer() as timer:
        torch.manual_seed(p.seed)
        gen = torch.Generator(device=p.device).manual_seed(p.seed)
        demos, info = load_demo_buffer(DATA, device=p.device)
        task = info["task"]
        p.gcp.obs_dim, p.gcp.act_dim = info["obs_dim"], info["act_dim"]
        actor = make_gcp(p.gcp).to(p.device)
        target = copy.deepcopy(actor).requires_grad_(False)
        env = make_env(task, p.num_envs, seed=p.seed, horizon=p.env_horizon)
        try:

            def gate(step: int) -> float:
                gcp, det = (target, False) if p.eval_mode == "sde" else (actor, True)
                res = evaluate(env, gcp_policy(gcp, det, gen), p.eval_episodes, 50_000 + step, p.gcp.H)
                return res.success_rate

            result = train_bc(actor, target, demos, p.bc, evaluate=gate, generator=gen)
        finally:
            env.close()
    meta = {
        "task": task,
        "obs_keys": info.get("obs_keys"),
        "H": p.gcp.H,
        "kind": p.gcp.kind,
        "K": p.gcp.K,
        "normalization": "none",
        "git_rev": git_revision(),
        "data_hash": info.get("content_hash"),
        "stage": "pretrain_bc",
        "bc_steps": result.steps,
    }
    save_policy(OUT, actor, target, meta)
    CURVE.parent.mkdir(parents=True, exist_ok=True)
    lines = ["step,success,loss"] + [f"{r['step']},{r['success']:.6f},{r['loss']:.6f}" for r in result.curve]
    write_text_atomic(CURVE, "\n".join(lines) + "\n")
    metrics = {
        "wall_time_s": round(timer.wall_time_s, 2),
        "bc_steps": result.steps,
        "updates": result.steps,
        "updates_per_s": round(result.steps / max(timer.wall_time_s, 1e-9), 2),
        "stopped_early": result.stopped_early,
        "gate_success": result.last_success,
        "gate_mode": p.eval_mode,
    }  # params are DVC's to show (params.yaml), not echoed here
    write_json_atomic(METRICS, metrics)
    write_live("pretrain_bc", result.curve, "step", metrics)
    log.info("BC: %d steps, gate success %s, saved %s", result.steps, result.last_success, OUT)


if __name__ == "__main__":
    stage_main(run)
