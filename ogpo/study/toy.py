"""BC-then-fine-tuning on the toy task (``ogpo.envs.toy.PointGapEnv``) for any registered algorithm, in-process.

The toy task is where every algorithm can be compared in minutes on a CPU: the learning tests and the ``toy``
studies use it. The recipe is fixed so that every algorithm starts from the same BC weights for a given GCP
kind and BC seed: 100 noisy scripted demos, a flow or diffusion GCP (2x128, K 5, H 4), BC stopped at the
first gate evaluation at or above 30% success (64 episodes) and an EMA copy as the target. Fine-tuning uses
a fresh 10-head critic (2x64, the toy has no offline critic fit), 16 rollout envs, 32 evaluation envs and
OGPO's toy settings (``OGPO_TOY``) for the OGPO family; other algorithms run their own config defaults.

``run`` does both halves with one seed (what the learning tests call); a study trains BC once
(``train_toy_bc``) and fine-tunes every (algorithm, seed) from that checkpoint (``finetune_toy``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ogpo.agents.bc import BCConfig, train_bc
from ogpo.agents.online import OnlineConfig, OnlineTrainer
from ogpo.algos import Agent, RunSeeds, check_gcp_kind, get_algo
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.toy import PointGapEnv, collect_toy_demos
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCP, GCPConfig
from ogpo.rollout import evaluate

H = 4
FINAL_EPISODES = 200
FINAL_EVAL_SEED = 99  # the final evaluation's episode seeds (the same for every run)
BC_EVAL_SEED = 7

# The OGPO+CA toy settings (what the OGPO learning test has always used); other algorithms use their own
# config defaults under their own overrides.
OGPO_TOY = dict(
    G=16, ppo_batch_size=64, batch_size=128, gamma=0.95, eps=0.01, actor_lr=3e-4, actor_lr_floor=3e-5,
    lr_warmup=200, lr_period=4000, critic_lr=3e-4, tau_actor=0.05, tau_critic=0.05, best_of_n=8,
    success_buffer_td=True,
)  # fmt: skip


def toy_gcp_config(kind: str, sigma0: float = 0.2) -> GCPConfig:
    return GCPConfig(kind=kind, obs_dim=2, act_dim=2, H=H, K=5, hidden=[128, 128], sigma0=sigma0, min_std=0.05)


def demo_buffer(n: int, seed: int) -> ReplayBuffer:
    buf = ReplayBuffer(20_000, 2, 2)
    for e in collect_toy_demos(n, seed, noise=0.3):
        buf.add_episode(e["obs"], e["actions"], e["rewards"], e["next_obs"], e["terminated"], e["success"])
    return buf


def policy_fn(gcp: GCP, deterministic: bool, gen: torch.Generator) -> Callable[[np.ndarray], np.ndarray]:
    def fn(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32)
            return gcp.sample(o, deterministic=deterministic, generator=gen).actions.numpy()

    return fn


def agent_policy(agent: Agent, mode: str) -> Callable[[np.ndarray], np.ndarray]:
    device = next(agent.actor.parameters()).device

    def fn(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device), mode).cpu().numpy()

    return fn


@dataclass
class ToyBC:
    """The BC start: online and EMA actor, where the gate stopped it, and its ODE success on fixed seeds."""

    actor: GCP
    target: GCP
    steps: int
    gate_success: float
    successes: int  # ODE successes over ``episodes`` fixed-seed episodes
    episodes: int
    seconds: float

    @property
    def success(self) -> float:
        return self.successes / self.episodes


def train_toy_bc(
    kind: str, seed: int = 0, sigma0: float = 0.2, verbose: bool = False, episodes: int = FINAL_EPISODES
) -> ToyBC:
    """BC on 100 noisy scripted demos until the 30% gate, then its ODE success over ``episodes`` fixed-seed
    episodes; the start every toy run fine-tunes."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    actor = make_gcp(toy_gcp_config(kind, sigma0))
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
    seconds = time.perf_counter() - t0
    final = evaluate(eval_env, policy_fn(actor, True, gen), episodes, BC_EVAL_SEED, H)
    successes = int(final.success.sum())
    if verbose:
        print(f"[{kind}] BC stopped at step {bc.steps} (gate {bc.last_success:.2f}); ODE success "
              f"{successes / episodes:.3f}", flush=True)  # fmt: skip
    return ToyBC(actor, target, bc.steps, bc.last_success, successes, episodes, seconds)


def finetune_toy(
    actor: GCP,
    target: GCP,
    algo: str,
    seed: int,
    total_env_steps: int = 16_000,
    utd: float = 0.25,
    agent_overrides: dict | None = None,
    online_overrides: dict | None = None,
    critic_hidden: tuple[int, ...] = (64, 64),
    final_episodes: int = FINAL_EPISODES,
    on_eval: Callable[[dict], None] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``actor``/``target`` (modified in place) with ``algo`` for ``total_env_steps``; the curve
    rows, the final eval-mode success over ``final_episodes`` fixed-seed episodes, the time and the agent."""
    spec = get_algo(algo)
    check_gcp_kind(spec, actor.cfg.kind)
    agent_kw = (OGPO_TOY if spec.config.__name__ == "OGPOConfig" else {}) | (agent_overrides or {})
    cfg = spec.make_config(**agent_kw)
    seeds = RunSeeds(seed)
    torch.manual_seed(seeds.int_seed("init"))
    critic = CriticPair(CriticConfig(obs_dim=2, chunk_dim=H * 2, M=10, hidden=list(critic_hidden)))
    agent = spec.build(actor, target, critic, cfg, seeds)
    eval_env = PointGapEnv(32)
    curve: list[dict] = []
    online = dict(total_env_steps=total_env_steps, start_training=1000, utd=utd, eval_every=2000, eval_episodes=64,
                  checkpoint_every=10**9, log_every=10**9) | (online_overrides or {})  # fmt: skip
    ocfg = OnlineConfig(**online)
    if agent.loop == "on_policy":
        trainer = agent.make_trainer(PointGapEnv(16), eval_env, ocfg, seeds)
    else:
        replay = ReplayBuffer(50_000, 2, 2, extras=agent.replay_extras)
        trainer = OnlineTrainer(agent, PointGapEnv(16), eval_env, replay, ocfg, seeds)

    def record(row: dict) -> None:
        curve.append(row)
        if verbose:
            metrics = "  ".join(f"{k} {row[k]:.3g}" for k in agent.metric_names)
            print(
                f"[{algo}/{actor.cfg.kind}] {row['env_steps']:6d} steps  success {row['success']:.2f}"
                f"  len {row['episode_length']:.1f}  rollout {row['rollout_success']:.2f}  {metrics}"
                f"  t {row['wall_time']:.0f}s",
                flush=True,
            )
        if on_eval is not None:
            on_eval(row)

    t0 = time.perf_counter()
    trainer.run(on_eval=record)
    final_eval = evaluate(eval_env, agent_policy(agent, "eval"), final_episodes, FINAL_EVAL_SEED, H)
    return {
        "final_success": final_eval.success_rate,
        "final_successes": int(final_eval.success.sum()),
        "episodes": final_episodes,
        "curve": curve,
        "seconds": time.perf_counter() - t0,
        "env_steps": trainer.env_steps,
        "updates": trainer.updates,
        "eval_episodes": ocfg.eval_episodes,
        "agent": agent,
    }


def run(
    kind: str,
    seed: int = 0,
    total_env_steps: int = 16_000,
    verbose: bool = True,
    sigma0: float = 0.2,
    utd: float = 0.25,
    algo: str = "ogpo+ca",
    agent_overrides: dict | None = None,
    online_overrides: dict | None = None,
    critic_hidden: tuple[int, ...] = (64, 64),
    **overrides: Any,
) -> dict[str, Any]:
    """BC to the gate, then ``algo`` for ``total_env_steps``, one seed for both; BC and final success over 200
    episodes. ``overrides`` (legacy) and ``agent_overrides`` update the agent config; ``online_overrides`` the
    OnlineConfig."""
    check_gcp_kind(get_algo(algo), kind)
    t0 = time.perf_counter()
    bc = train_toy_bc(kind, seed, sigma0, verbose)
    out = finetune_toy(
        bc.actor, bc.target, algo, seed, total_env_steps, utd, overrides | (agent_overrides or {}), online_overrides,
        critic_hidden, verbose=verbose,
    )  # fmt: skip
    total = time.perf_counter() - t0
    if verbose:
        print(f"[{algo}/{kind}] final eval-mode success {out['final_success']:.3f} over {out['episodes']} episodes; "
              f"BC {bc.seconds:.0f}s, total {total:.0f}s", flush=True)  # fmt: skip
    return out | {"bc_success": bc.success, "bc_successes": bc.successes, "seconds": total}
