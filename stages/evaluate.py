"""Stage `evaluate`: the BC and fine-tuned policies on the same fixed seeds.

Writes eval/episodes.csv (one row per episode), metrics/eval.json (success with its 95% Wilson interval,
mean return and length per policy), a few rollout GIFs in eval/videos, and metrics/evaluate.json (timing).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ogpo.envs import TOY_TASK, make_env
from ogpo.policy_io import load_deployed_policy
from ogpo.rollout import evaluate
from ogpo.stats import wilson_interval
from stages.common import (
    Timer,
    check_device,
    check_device_name,
    load_params,
    param,
    stage_main,
    write_json_atomic,
    write_text_atomic,
)
from stages.live import write_live

log = logging.getLogger("stages.evaluate")

POLICIES = {"bc": Path("models/bc"), "finetuned": Path("models/finetuned")}
EPISODES = Path("eval/episodes.csv")
VIDEOS = Path("eval/videos")
METRICS = Path("metrics/eval.json")
TIMING = Path("metrics/evaluate.json")


@dataclass
class EvaluateParams:
    """Params section ``evaluate``."""

    episodes: int = param(100, ge=1)
    seed: int = param(424242, ge=0)
    num_envs: int = param(2, ge=1)
    env_horizon: int | None = param(None, ge=1)  # episode length override (None = the task's default)
    mode: str = "ode"  # ode: online actor, deterministic (spec 8.1); sde: EMA actor, stochastic
    videos: int = param(2, ge=0)  # GIFs per policy
    video_size: int = param(128, ge=16)
    device: str = "cpu"
    threads: int | None = param(1, ge=1)  # torch CPU threads (1: env workers share the cores); None = all

    def validate(self) -> None:
        if self.mode not in ("ode", "sde"):
            raise ValueError(f"mode must be ode or sde, got {self.mode!r}")
        check_device_name(self.device)


def _videos(task: str, name: str, policy, H: int, p: EvaluateParams) -> list[str]:
    if p.videos == 0 or task == TOY_TASK:
        return []
    os.environ.setdefault("MUJOCO_GL", "egl")
    from ogpo.envs.robosuite import RobosuiteEnv
    from ogpo.video import record_episode, save_gif

    env = RobosuiteEnv(task, render=True, render_size=p.video_size, horizon=p.env_horizon)
    out = []
    try:
        for i in range(p.videos):
            frames, ok = record_episode(env, policy, H, seed=p.seed + i)
            out.append(str(save_gif(frames, VIDEOS / f"{name}_{i}_{'success' if ok else 'failure'}.gif")))
    finally:
        env.close()
    return out


def _numpy_policy(act, device: str):
    """obs -> chunks on numpy arrays (what ``evaluate`` and the video recorder call)."""

    def fn(obs):
        with torch.no_grad():
            return act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()

    return fn


def run() -> None:
    p = load_params("evaluate", EvaluateParams)
    check_device(p.device, "params.yaml: evaluate.device")
    if p.threads:
        torch.set_num_threads(p.threads)
    metrics: dict[str, dict] = {}
    rows = ["policy,episode,env_index,success,return,length"]
    with Timer() as timer:
        loaded = {}
        for name, path in POLICIES.items():  # load (and verify) both before any rollout
            gen = torch.Generator(device=p.device).manual_seed(p.seed)
            act, gcp, cfg = load_deployed_policy(path, p.mode, p.device, gen)
            loaded[name] = (_numpy_policy(act, p.device), gcp, cfg)
        tasks = {cfg["task"] for _, _, cfg in loaded.values()}
        if len(tasks) != 1:
            raise ValueError(f"policies were trained on different tasks: {sorted(tasks)}")
        task = tasks.pop()
        env = make_env(task, p.num_envs, seed=p.seed, horizon=p.env_horizon)
        VIDEOS.mkdir(parents=True, exist_ok=True)  # a DVC out even when no video is recorded (toy task)
        for old in VIDEOS.glob("*.gif"):
            old.unlink()
        try:
            for name, (policy, gcp, _cfg) in loaded.items():
                res = evaluate(env, policy, p.episodes, p.seed, gcp.cfg.H)
                k, n = int(res.success.sum()), len(res.success)
                lo, hi = wilson_interval(k, n)
                metrics[name] = {
                    "success": k / n,
                    "successes": k,
                    "n": n,
                    "ci_low": lo,
                    "ci_high": hi,
                    "mean_return": float(res.returns.mean()),
                    "mean_length": float(res.lengths.mean()),
                }
                for i in range(n):
                    rows.append(
                        f"{name},{i},{res.seeds[i]},{int(res.success[i])},{res.returns[i]:.4f},{res.lengths[i]}"
                    )
                log.info("%s: success %.3f [%.3f, %.3f] over %d episodes", name, k / n, lo, hi, n)
                metrics[name]["videos"] = _videos(task, name, policy, gcp.cfg.H, p)
        finally:
            env.close()
    write_text_atomic(EPISODES, "\n".join(rows) + "\n")
    write_json_atomic(METRICS, metrics)
    total_eps = sum(m["n"] for m in metrics.values())
    timing = {"wall_time_s": round(timer.wall_time_s, 2), "episodes": total_eps, "task": task, "mode": p.mode}
    write_json_atomic(TIMING, timing)
    write_live("evaluate", summary=metrics | {"wall_time_s": timing["wall_time_s"]})


if __name__ == "__main__":
    stage_main(run)
