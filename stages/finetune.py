"""Stage `finetune`: BC policy + critic -> a fine-tuned policy by any registered algorithm (``finetune.algo``:
ogpo, ogpo+, ogpo+ca, dsrl, qc, expo, dppo; ``ogpo algos`` lists them), its learning curve, resumable state.

Every algorithm starts from the very same BC checkpoint and critic init. ``finetune.agent`` is validated by the
chosen algorithm's config class before any work. The online replay starts empty (no demos, spec 2.6). The
trainer's full state (``trainer.state_dict()``: agent, replay, RNG streams, counters) is checkpointed atomically
to ``state/finetune`` (outside DVC outs) every ``online.checkpoint_every`` env steps and on Ctrl-C; a re-run
resumes from it when the params and inputs are the same, and the state is deleted when the stage completes.
One run seed (``finetune.seed``) is split into independent streams for network init, env resets, exploration
noise and replay sampling.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ogpo.agents.online import OnlineConfig, OnlineTrainer, curve_columns
from ogpo.algos import AlgoSpec, RunSeeds, algorithms, check_gcp_kind, get_algo
from ogpo.checkpoint import file_sha256, load_checkpoint, recover_checkpoint, save_checkpoint
from ogpo.critic import CriticPair
from ogpo.data.replay import ReplayBuffer
from ogpo.envs import make_env
from ogpo.errors import CheckpointError, ConfigError
from ogpo.policy_io import load_critic, load_policy_pair, save_critic, save_policy
from stages.common import (
    Timer,
    check_device,
    check_device_name,
    git_revision,
    load_params,
    param,
    parse_params,
    stage_main,
    write_json_atomic,
    write_text_atomic,
)
from stages.live import write_live

log = logging.getLogger("stages.finetune")

BC = Path("models/bc")
CRITIC = Path("models/critic")
OUT = Path("models/finetuned")
OUT_CRITIC = Path("models/finetuned_critic")
CURVE = Path("plots/learning_curve.csv")
METRICS = Path("metrics/finetune.json")


@dataclass
class FinetuneParams:
    """Params section ``finetune``. ``agent`` holds the chosen algorithm's options (validated by its config
    class into ``agent_cfg``)."""

    algo: str = "ogpo+ca"
    seed: int = param(0, ge=0)
    device: str = "auto"  # auto = cuda when available
    threads: int | None = param(1, ge=1)  # torch CPU threads (1: env workers share the cores); None = all
    num_envs: int = param(2, ge=1)  # rollout envs (subprocess workers for robosuite)
    eval_num_envs: int = param(2, ge=1)
    replay_capacity: int = param(2_000_000, ge=1)
    env_horizon: int | None = param(None, ge=1)  # episode length override (None = the task's default)
    state_dir: str = "state/finetune"
    agent: dict[str, Any] = field(default_factory=dict)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def validate(self) -> None:
        check_device_name(self.device, "device", allow_auto=True)
        self.online.validate()


def load_finetune_params(path: str | Path = "params.yaml") -> tuple[FinetuneParams, AlgoSpec, Any]:
    """The ``finetune`` section, the algorithm's registry entry and its validated config (ConfigError first)."""
    p = load_params("finetune", FinetuneParams, path)
    spec = get_algo_or_explain(p.algo)
    _check_agent_keys(spec, p.agent)
    try:
        cfg = parse_params(spec.defaults | p.agent, spec.config, "finetune.agent")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return p, spec, cfg


def get_algo_or_explain(name: str) -> AlgoSpec:
    try:
        return get_algo(name)
    except ConfigError:
        raise ConfigError(
            f"finetune.algo {name!r} is not a registered algorithm; registered: {', '.join(algorithms())}"
        ) from None


def _check_agent_keys(spec: AlgoSpec, agent: dict[str, Any]) -> None:
    """A key of another algorithm's options gets a message naming that algorithm (before pydantic's generic
    unknown-key error); ``variant`` points at ``finetune.algo``."""
    own = {f.name for f in dataclasses.fields(spec.config)}
    for key in agent:
        if key in own:
            continue
        if key == "variant":
            raise ConfigError(
                "finetune.agent.variant was replaced by finetune.algo (ogpo, ogpo+ or ogpo+ca); move the value there"
            )
        owners = [n for n, s in algorithms().items() if key in {f.name for f in dataclasses.fields(s.config)}]
        close = difflib.get_close_matches(str(key), sorted(own), n=1)
        hint = f" (did you mean finetune.agent.{close[0]}?)" if close else ""
        if owners:
            raise ConfigError(
                f"finetune.agent.{key} is an option of {', '.join(owners)}, not of {spec.name}{hint}; "
                f"{spec.name}'s options: {', '.join(sorted(own))}"
            )


def _fingerprint(p: FinetuneParams, cfg: Any) -> str:
    """Identifies the run a saved state belongs to: params (minus where and how wide it runs: the device, the
    torch thread count, the state folder) and the input checkpoints. A run stopped on one thread count resumes
    on another, as it does on another device."""
    d = asdict(p)
    for k in ("device", "threads", "state_dir"):
        d.pop(k)
    d["agent"] = asdict(cfg)
    d["inputs"] = [file_sha256(BC / "weights.safetensors"), file_sha256(CRITIC / "weights.safetensors")]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _write_curve(rows: list[dict], columns: list[str]) -> None:
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in columns))
    write_text_atomic(CURVE, "\n".join(lines) + "\n")


def run() -> None:
    p, spec, cfg = load_finetune_params()
    if p.threads:
        torch.set_num_threads(p.threads)
    dev = torch.device(check_device(p.device, "params.yaml: finetune.device", allow_auto=True))
    actor, target, bc_cfg = load_policy_pair(BC, dev)
    check_gcp_kind(spec, actor.cfg.kind)
    critic, _ = load_critic(CRITIC, dev)
    task = bc_cfg["task"]
    if critic.online.cfg.chunk_dim != actor.chunk_dim or critic.online.cfg.obs_dim != actor.cfg.obs_dim:
        raise CheckpointError(f"{CRITIC}: critic dims do not match the BC policy in {BC}")
    seeds = RunSeeds(p.seed)
    torch.manual_seed(seeds.int_seed("init"))
    agent = spec.build(actor, target, critic, cfg, seeds)
    state_path = Path(p.state_dir)
    fingerprint = _fingerprint(p, cfg)
    columns = curve_columns(agent)
    curve: list[dict] = []
    env = make_env(task, p.num_envs, seed=seeds.int_seed("env"), horizon=p.env_horizon)
    eval_env = make_env(task, p.eval_num_envs, seed=seeds.int_seed("eval_env"), horizon=p.env_horizon)
    if agent.loop == "on_policy":
        trainer = agent.make_trainer(env, eval_env, p.online, seeds)
    else:
        replay = ReplayBuffer(p.replay_capacity, actor.cfg.obs_dim, actor.cfg.act_dim, dev, extras=agent.replay_extras)
        trainer = OnlineTrainer(agent, env, eval_env, replay, p.online, seeds)
    if recover_checkpoint(state_path) and (state_path / "config.json").exists():
        tensors, saved = load_checkpoint(state_path)
        if saved.get("fingerprint") == fingerprint:
            trainer.load_state_dict(tensors, saved["trainer"])
            curve = list(saved["curve"])
            log.info("resumed from %s at %d env steps", state_path, trainer.env_steps)
        else:
            log.warning("%s belongs to other params or inputs: starting fresh", state_path)

    def on_eval(row: dict) -> None:
        curve.append(row)
        _write_curve(curve, columns)
        write_live("finetune", curve, "env_steps")

    def on_checkpoint(tr: Any) -> None:
        tensors, meta = tr.state_dict()
        save_checkpoint(state_path, tensors, {"fingerprint": fingerprint, "curve": curve, "trainer": meta})
        log.info("checkpoint: %d env steps -> %s", tr.env_steps, state_path)

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
    meta |= {
        "stage": "finetune",
        "git_rev": git_revision(),
        "algo": spec.name,
        "algo_config": asdict(cfg),
        "env_steps": trainer.env_steps,
    }
    save_policy(OUT, agent.actor, agent.target_actor, meta, deploy=agent.deploy_modules())
    trained_critic = getattr(agent, "critic", None)
    if isinstance(trained_critic, CriticPair):
        save_critic(OUT_CRITIC, trained_critic, {"task": task, "stage": "finetune", "algo": spec.name})
    else:  # the algorithm has no Q ensemble (DPPO): pass the input critic through, marked as untouched
        save_critic(OUT_CRITIC, critic, {"task": task, "stage": "finetune", "algo": spec.name, "trained": False})
    _write_curve(curve, columns)
    wall = trainer.wall_time
    metrics = {
        "algo": spec.name,
        "wall_time_s": round(timer.wall_time_s, 2),
        "train_wall_time_s": round(wall, 2),
        "env_steps": trainer.env_steps,
        "env_steps_per_s": round(trainer.env_steps / max(wall, 1e-9), 2),
        "updates": trainer.updates,
        "updates_per_s": round(trainer.updates / max(wall, 1e-9), 2),
        "episodes": trainer.episodes,
        "final_success": curve[-1]["success"] if curve else None,
        "device": str(dev),
    }
    write_json_atomic(METRICS, metrics)
    write_live("finetune", curve, "env_steps", metrics)
    shutil.rmtree(state_path, ignore_errors=True)  # the stage completed: its resumable state is spent


if __name__ == "__main__":
    stage_main(run)
