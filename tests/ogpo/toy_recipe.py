"""BC-then-OGPO on the toy task: shared by the learning tests and runnable by hand for the curves.

python -m tests.ogpo.toy_recipe flow|diffusion
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch

from ogpo.agents.bc import BCConfig, train_bc
from ogpo.agents.ogpo import OGPOAgent, OGPOConfig
from ogpo.agents.online import OnlineConfig, OnlineTrainer
from ogpo.critic import CriticConfig
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.toy import PointGapEnv, collect_toy_demos
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig
from ogpo.rollout import evaluate

H = 4


def demo_buffer(n: int, seed: int) -> ReplayBuffer:
    buf = ReplayBuffer(20_000, 2, 2)
    for e in collect_toy_demos(n, seed, noise=0.3):
        buf.add_episode(e["obs"], e["actions"], e["rewards"], e["next_obs"], e["terminated"], e["success"])
    return buf


def policy_fn(gcp, deterministic: bool, gen: torch.Generator):
    def fn(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32)
            return gcp.sample(o, deterministic=deterministic, generator=gen).actions.numpy()

    return fn


def run(
    kind: str,
    seed: int = 0,
    total_env_steps: int = 16_000,
    verbose: bool = True,
    sigma0: float = 0.2,
    utd: float = 0.25,
    **overrides,
) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    gcfg = GCPConfig(kind=kind, obs_dim=2, act_dim=2, H=H, K=5, hidden=[128, 128], sigma0=sigma0, min_std=0.05)
    actor = make_gcp(gcfg)
    target = copy.deepcopy(actor).requires_grad_(False)
    demos = demo_buffer(100, seed)
    eval_env = PointGapEnv(32)

    def bc_eval(step: int) -> float:
        return evaluate(eval_env, policy_fn(target, False, gen), 64, 1000 + step, H).success_rate

    t0 = time.perf_counter()
    bc = train_bc(
        actor, target, demos,
        BCConfig(max_steps=3000, batch_size=128, lr=1e-3, tau=0.05, eval_every=25, target_success=0.3,
                 log_every=10**9),
        evaluate=bc_eval, generator=gen,
    )  # fmt: skip
    bc_time = time.perf_counter() - t0
    bc_success = evaluate(eval_env, policy_fn(actor, True, gen), 200, 7, H).success_rate
    if verbose:
        print(f"[{kind}] BC stopped at step {bc.steps} (gate {bc.last_success:.2f}); ODE success {bc_success:.3f}")
    agent = OGPOAgent(
        actor,
        CriticConfig(obs_dim=2, chunk_dim=H * 2, M=10, hidden=[64, 64]),
        OGPOConfig(**dict(
            variant="ogpo+ca", G=16, ppo_batch_size=64, batch_size=128, gamma=0.95, eps=0.01,
            actor_lr=3e-4, actor_lr_floor=3e-5, lr_warmup=200, lr_period=4000, critic_lr=3e-4,
            tau_actor=0.05, tau_critic=0.05, best_of_n=8, success_buffer_td=True,
        ) | overrides),
        target_actor=target,
        seed=seed,
    )  # fmt: skip
    curve: list[dict] = []
    trainer = OnlineTrainer(
        agent, PointGapEnv(16), eval_env, ReplayBuffer(50_000, 2, 2),
        OnlineConfig(total_env_steps=total_env_steps, start_training=1000, utd=utd, eval_every=2000,
                     eval_episodes=64, checkpoint_every=10**9, log_every=10**9, seed=seed),
    )  # fmt: skip

    def on_eval(row: dict) -> None:
        curve.append(row)
        if verbose:
            print(
                f"[{kind}] {row['env_steps']:6d} steps  success {row['success']:.2f}  len {row['episode_length']:.1f}"
                f"  rollout {row['rollout_success']:.2f}  clip {row['clip_frac']:.3f}  adv {row['adv_abs']:.3f}"
                f"  q {row['q_mean']:.2f}"
                f"  critic {row['critic_loss']:.3f}  t {row['wall_time']:.0f}s",
                flush=True,
            )

    trainer.run(on_eval=on_eval)
    final = evaluate(eval_env, policy_fn(actor, True, gen), 200, 99, H).success_rate
    total = time.perf_counter() - t0
    if verbose:
        print(f"[{kind}] final ODE success {final:.3f} over 200 episodes; BC {bc_time:.0f}s, total {total:.0f}s")
    return {"bc_success": bc_success, "final_success": final, "curve": curve, "seconds": total}


if __name__ == "__main__":
    torch.set_num_threads(1)
    import yaml

    kw = {k: yaml.safe_load(v) for k, v in (a.split("=") for a in sys.argv[2:])}
    run(sys.argv[1] if len(sys.argv) > 1 else "flow", **kw)
