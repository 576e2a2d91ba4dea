"""Stage `finetune`: BC policy + critic -> OGPO(+/CA) fine-tuned policy, learning curve, resumable state.

The online replay starts empty (no demos, spec 2.6). Full training state is checkpointed atomically to
``state/finetune`` (outside DVC outs) every ``online.checkpoint_every`` env steps and on Ctrl-C; a re-run
resumes from it when the params and inputs are the same, and the state is deleted when the stage completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ogpo.agents.ogpo import OGPOAgent, OGPOConfig
from ogpo.agents.online import METRIC_KEYS, OnlineConfig, OnlineTrainer
from ogpo.checkpoint import (
    file_sha256,
    load_checkpoint,
    load_module_tensors,
    module_tensors,
    recover_checkpoint,
    save_checkpoint,
)
from ogpo.data.replay import ReplayBuffer
from ogpo.envs import make_env
from ogpo.errors import CheckpointError
from ogpo.policy_io import load_critic, load_policy_pair, save_critic, save_policy
from ogpo.state import optimizer_from_flat, optimizer_to_flat
from stages.common import Timer, git_revision, load_params, param, stage_main, write_json_atomic, write_text_atomic

log = logging.getLogger("stages.finetune")

BC = Path("models/bc")
CRITIC = Path("models/critic")
OUT = Path("models/finetuned")
OUT_CRITIC = Path("models/finetuned_critic")
CURVE = Path("plots/learning_curve.csv")
METRICS = Path("metrics/finetune.json")
CURVE_COLUMNS = ["env_steps", "success", "return", "episode_length", *METRIC_KEYS, "rollout_success", "updates",
                 "wall_time"]  # fmt: skip


@dataclass
class FinetuneParams:
    """Params section ``finetune``."""

    seed: int = param(0, ge=0)
    device: str = "auto"  # auto = cuda when available
    threads: int | None = param(1, ge=1)  # torch CPU threads (1: env workers share the cores); None = all
    num_envs: int = param(2, ge=1)  # rollout envs (subprocess workers for robosuite)
    eval_num_envs: int = param(2, ge=1)
    replay_capacity: int = param(2_000_000, ge=1)
    env_horizon: int | None = param(None, ge=1)  # episode length override (None = the task's default)
    state_dir: str = "state/finetune"
    agent: OGPOConfig = field(default_factory=OGPOConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def validate(self) -> None:
        self.agent.validate()
        self.online.validate()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fingerprint(p: FinetuneParams) -> str:
    """Identifies the run a saved state belongs to: params (minus where it runs) and the input checkpoints."""
    d = asdict(p)
    for k in ("device", "state_dir"):
        d.pop(k)
    d["inputs"] = [file_sha256(BC / "weights.safetensors"), file_sha256(CRITIC / "weights.safetensors")]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _save_state(path: Path, trainer: OnlineTrainer, curve: list[dict], fingerprint: str) -> None:
    agent = trainer.agent
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"fingerprint": fingerprint, "curve": curve, "agent_step": agent.step}
    for name, mod in agent.modules().items():
        tensors |= module_tensors(name, mod)
    for name, opt in agent.optimizers().items():
        t, m = optimizer_to_flat(name, opt)
        tensors |= t
        meta[name] = m
    tensors |= {f"replay.{k}": v for k, v in trainer.replay.state_tensors().items()}
    tensors["agent.generator"] = agent.generator.get_state()
    t, m = trainer.state()
    tensors |= t
    meta["trainer"] = m
    save_checkpoint(path, tensors, meta)
    log.info("checkpoint: %d env steps -> %s", trainer.env_steps, path)


def _load_state(path: Path, trainer: OnlineTrainer) -> list[dict]:
    tensors, meta = load_checkpoint(path)
    agent = trainer.agent
    for name, mod in agent.modules().items():
        load_module_tensors(name, mod, tensors)
    for name, opt in agent.optimizers().items():
        optimizer_from_flat(name, opt, tensors, meta[name])
    agent.step = int(meta["agent_step"])
    agent.generator.set_state(tensors["agent.generator"])
    trainer.replay.load_state_tensors({k[7:]: v for k, v in tensors.items() if k.startswith("replay.")})
    trainer.load_state(tensors, meta["trainer"])
    return list(meta["curve"])


def _write_curve(rows: list[dict]) -> None:
    lines = [",".join(CURVE_COLUMNS)]
    for r in rows:
        lines.append(",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in CURVE_COLUMNS))
    write_text_atomic(CURVE, "\n".join(lines) + "\n")


def run() -> None:
    p = load_params("finetune", FinetuneParams)
    if p.threads:
        torch.set_num_threads(p.threads)
    dev = _device(p.device)
    actor, target, bc_cfg = load_policy_pair(BC, dev)
    critic, _ = load_critic(CRITIC, dev)
    task = bc_cfg["task"]
    if critic.online.cfg.chunk_dim != actor.chunk_dim or critic.online.cfg.obs_dim != actor.cfg.obs_dim:
        raise CheckpointError(f"{CRITIC}: critic dims do not match the BC policy in {BC}")
    torch.manual_seed(p.seed)
    agent = OGPOAgent(actor, critic.online.cfg, p.agent, target_actor=target, seed=p.seed)
    agent.critic.load_state_dict(critic.state_dict())
    replay = ReplayBuffer(p.replay_capacity, actor.cfg.obs_dim, actor.cfg.act_dim, device=dev)
    state_path = Path(p.state_dir)
    fingerprint = _fingerprint(p)
    curve: list[dict] = []
    env = make_env(task, p.num_envs, seed=p.seed, horizon=p.env_horizon)
    eval_env = make_env(task, p.eval_num_envs, seed=p.seed + 7919, horizon=p.env_horizon)
    trainer = OnlineTrainer(agent, env, eval_env, replay, p.online)
    if recover_checkpoint(state_path) and (state_path / "config.json").exists():
        saved = json.loads((state_path / "config.json").read_text())
        if saved.get("fingerprint") == fingerprint:
            curve = _load_state(state_path, trainer)
            log.info("resumed from %s at %d env steps", state_path, trainer.env_steps)
        else:
            log.warning("%s belongs to other params or inputs: starting fresh", state_path)

    def on_eval(row: dict) -> None:
        curve.append(row)
        _write_curve(curve)

    def on_checkpoint(tr: OnlineTrainer) -> None:
        _save_state(state_path, tr, curve, fingerprint)

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: setattr(trainer, "stop_requested", True))
    try:
        with Timer() as timer:
            trainer.run(on_eval=on_eval, on_checkpoint=on_checkpoint)
    finally:
        signal.signal(signal.SIGINT, previous)
        env.close()
        eval_env.close()
    meta = dict(bc_cfg)
    for k in ("format", "gcp", "weights_sha256"):
        meta.pop(k, None)
    meta |= {"stage": "finetune", "git_rev": git_revision(), "variant": p.agent.variant, "env_steps": trainer.env_steps}
    save_policy(OUT, agent.actor, agent.target_actor, meta)
    save_critic(OUT_CRITIC, agent.critic, {"task": task, "stage": "finetune"})
    _write_curve(curve)
    wall = trainer.wall_time
    write_json_atomic(
        METRICS,
        {
            "wall_time_s": round(timer.wall_time_s, 2),
            "train_wall_time_s": round(wall, 2),
            "env_steps": trainer.env_steps,
            "env_steps_per_s": round(trainer.env_steps / max(wall, 1e-9), 2),
            "updates": trainer.updates,
            "updates_per_s": round(trainer.updates / max(wall, 1e-9), 2),
            "episodes": trainer.episodes,
            "final_success": curve[-1]["success"] if curve else None,
            "device": str(dev),
        },
    )
    shutil.rmtree(state_path, ignore_errors=True)  # the stage completed: its resumable state is spent


if __name__ == "__main__":
    stage_main(run)
