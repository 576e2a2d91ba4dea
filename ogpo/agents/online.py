"""The online OGPO loop (spec 2.9): roll out chunks from the EMA actor (Best-of-N), store whole episodes in the
replay, run ``utd`` updates per environment step, evaluate on a schedule, and checkpoint resumable state.

Resuming: the saved state holds everything that determines the future (weights, optimizers, replay, RNG streams,
counters, unfinished trajectories). Environments cannot be snapshotted portably, so on resume each unfinished
trajectory is stored as a time-limit truncation (it bootstraps, like any truncation) and its env is reset; the
env-step counter continues, so no step is repeated or lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ogpo.agents.ogpo import OGPOAgent
from ogpo.checks import check_positive_int
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.base import VectorEnv
from ogpo.errors import ConfigError
from ogpo.rollout import ChunkQueue, EvalResult, evaluate
from ogpo.state import numpy_rng_from_state, numpy_rng_state

log = logging.getLogger(__name__)

METRIC_KEYS = ("actor_loss", "critic_loss", "bc_loss", "adv_mean", "adv_abs", "clip_frac", "q_mean")


@dataclass
class OnlineConfig:
    total_env_steps: int = 2_000_000
    start_training: int = 10_000
    utd: float = 1.0  # updates per environment step
    eval_every: int = 10_000
    eval_episodes: int = 64
    eval_mode: str = "ode"  # online actor, deterministic (spec 8.1)
    rollout_mode: str = "bon"  # EMA actor, SDE, Best-of-N (spec 2.7)
    checkpoint_every: int = 50_000
    log_every: int = 5_000
    seed: int = 0

    def validate(self) -> None:
        check_positive_int("total_env_steps", self.total_env_steps)
        check_positive_int("start_training", self.start_training, minimum=0)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("eval_episodes", self.eval_episodes)
        check_positive_int("checkpoint_every", self.checkpoint_every)
        if not self.utd > 0:
            raise ConfigError(f"utd must be > 0, got {self.utd!r}")
        for name in ("eval_mode", "rollout_mode"):
            if getattr(self, name) not in ("ode", "sde", "bon"):
                raise ConfigError(f"{name} must be ode, sde or bon, got {getattr(self, name)!r}")


class OnlineTrainer:
    def __init__(
        self,
        agent: OGPOAgent,
        env: VectorEnv,
        eval_env: VectorEnv,
        replay: ReplayBuffer,
        cfg: OnlineConfig,
    ) -> None:
        cfg.validate()
        self.agent, self.env, self.eval_env, self.replay, self.cfg = agent, env, eval_env, replay, cfg
        self.device = next(agent.actor.parameters()).device
        self.H = agent.H
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0
        self.owed_updates = 0.0
        self.next_eval = cfg.eval_every
        self.rng = np.random.default_rng(cfg.seed)
        self.sample_gen = torch.Generator(device=self.device)
        self.sample_gen.manual_seed(cfg.seed + 1)
        self.wall_time = 0.0
        self.recent: list[dict] = []  # finished rollout episodes since the last eval (return, length, success)
        self._metric_sum: dict[str, torch.Tensor] = {}
        self._metric_n = 0
        self._traj: list[list[tuple]] = [[] for _ in range(env.num_envs)]
        self._obs: np.ndarray | None = None
        self._queue = ChunkQueue(env.num_envs, self.H, env.act_dim)
        self.stop_requested = False  # set from a signal handler: checkpoint at the next safe point and stop

    # ---- policies --------------------------------------------------------------------------------------
    def _policy(self, mode: str) -> Callable[[np.ndarray], np.ndarray]:
        def fn(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            return self.agent.act(o, mode).cpu().numpy()

        return fn

    def run_eval(self) -> EvalResult:
        seed = 10_000_019 + self.env_steps  # a fixed seed per evaluation point, independent of training RNG
        return evaluate(self.eval_env, self._policy(self.cfg.eval_mode), self.cfg.eval_episodes, seed, self.H)

    # ---- main loop -------------------------------------------------------------------------------------
    def _push_episode(self, i: int, terminated: bool, success: bool) -> None:
        o, a, r, no = zip(*self._traj[i], strict=True)
        self.replay.add_episode(np.stack(o), np.stack(a), np.asarray(r), np.stack(no), terminated, success)
        self._traj[i] = []
        self.episodes += 1

    def run(
        self,
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[OnlineTrainer], None] | None = None,
    ) -> None:
        cfg = self.cfg
        N = self.env.num_envs
        if self._obs is None:
            self._obs = self.env.reset(int(self.rng.integers(2**31)))
            self._queue.clear(np.ones(N, dtype=bool))  # a chunk never carries over into a fresh episode
        policy = self._policy(cfg.rollout_mode)
        t_start = time.perf_counter() - self.wall_time
        last_log = self.env_steps
        last_ckpt = self.env_steps
        ep_ret = np.zeros(N)
        ep_len = np.zeros(N, dtype=np.int64)
        while self.env_steps < cfg.total_env_steps:
            obs = self._obs
            actions = self._queue.next_actions(obs, policy, self.env)
            res = self.env.step(actions)
            for i in range(N):
                self._traj[i].append((obs[i], actions[i], float(res.reward[i]), res.final_obs[i]))
            ep_ret += res.reward
            ep_len += 1
            ended = res.terminated | res.truncated
            for i in np.flatnonzero(ended):
                self._push_episode(i, bool(res.terminated[i]), bool(res.success[i]))
                self.recent.append({"return": ep_ret[i], "length": ep_len[i], "success": bool(res.success[i])})
            ep_ret[ended] = 0
            ep_len[ended] = 0
            self._queue.clear(ended)
            self._obs = res.obs
            self.env_steps += N

            if self.env_steps >= cfg.start_training and self.replay.size >= self.agent.cfg.batch_size * self.H:
                self.owed_updates += N * cfg.utd
                while self.owed_updates >= 1.0:
                    self._update()
                    self.owed_updates -= 1.0

            self.wall_time = time.perf_counter() - t_start
            if self.env_steps - last_log >= cfg.log_every:
                last_log = self.env_steps
                rate = self.env_steps / max(self.wall_time, 1e-9)
                eta = (cfg.total_env_steps - self.env_steps) / max(rate, 1e-9)
                log.info(
                    "env steps %d/%d  updates %d  %.0f steps/s  ETA %.0fs",
                    self.env_steps, cfg.total_env_steps, self.updates, rate, eta,
                )  # fmt: skip
            if self.env_steps >= self.next_eval or self.env_steps >= cfg.total_env_steps:
                row = self._eval_row()
                if on_eval is not None:
                    on_eval(row)
                while self.next_eval <= self.env_steps:
                    self.next_eval += cfg.eval_every
            if on_checkpoint is not None and self.env_steps - last_ckpt >= cfg.checkpoint_every:
                last_ckpt = self.env_steps
                on_checkpoint(self)
            if self.stop_requested:
                if on_checkpoint is not None:
                    on_checkpoint(self)
                raise KeyboardInterrupt

    def _update(self) -> None:
        a = self.agent
        batch = self.replay.sample(a.cfg.batch_size, self.H, a.cfg.gamma, generator=self.sample_gen)
        succ = None
        if self.replay.success_active(a.cfg.batch_size, self.H):
            succ = self.replay.sample(
                a.cfg.batch_size, self.H, a.cfg.gamma, generator=self.sample_gen, success_only=True
            )
        m = a.update(batch, succ)
        for k in METRIC_KEYS:
            if k in m:
                self._metric_sum[k] = self._metric_sum.get(k, 0.0) + m[k]
        self._metric_n += 1
        self.updates += 1

    def _eval_row(self) -> dict[str, Any]:
        ev = self.run_eval()
        n = max(self._metric_n, 1)
        row: dict[str, Any] = {
            "env_steps": self.env_steps,
            "success": ev.success_rate,
            "return": float(ev.returns.mean()),
            "episode_length": float(ev.lengths.mean()),
        }
        for k in METRIC_KEYS:
            row[k] = float(self._metric_sum[k]) / n if k in self._metric_sum else float("nan")
        recent = self.recent
        row["rollout_success"] = float(np.mean([r["success"] for r in recent])) if recent else float("nan")
        row["updates"] = self.updates
        row["wall_time"] = round(self.wall_time, 2)
        self._metric_sum, self._metric_n, self.recent = {}, 0, []
        log.info(
            "eval @ %d env steps: success %.3f  return %.2f  length %.1f",
            self.env_steps, row["success"], row["return"], row["episode_length"],
        )  # fmt: skip
        return row

    # ---- resumable state -------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Counters, RNG streams and unfinished trajectories (the agent and replay are saved by the caller)."""
        tensors: dict[str, torch.Tensor] = {"trainer.sample_gen": self.sample_gen.get_state()}
        trajs = []
        for i, tr in enumerate(self._traj):
            if tr:
                o, a, r, no = zip(*tr, strict=True)
                tensors[f"traj.{i}.obs"] = torch.as_tensor(np.stack(o))
                tensors[f"traj.{i}.actions"] = torch.as_tensor(np.stack(a))
                tensors[f"traj.{i}.rewards"] = torch.as_tensor(np.asarray(r, dtype=np.float32))
                tensors[f"traj.{i}.next_obs"] = torch.as_tensor(np.stack(no))
                trajs.append(i)
        meta = {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "owed_updates": self.owed_updates,
            "next_eval": self.next_eval,
            "wall_time": self.wall_time,
            "rng": numpy_rng_state(self.rng),
            "trajectories": trajs,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.sample_gen.set_state(tensors["trainer.sample_gen"])
        for k in ("env_steps", "updates", "episodes", "next_eval"):
            setattr(self, k, int(meta[k]))
        self.owed_updates = float(meta["owed_updates"])
        self.wall_time = float(meta["wall_time"])
        self.rng = numpy_rng_from_state(meta["rng"])
        for i in meta["trajectories"]:
            self.replay.add_episode(
                tensors[f"traj.{i}.obs"].numpy(),
                tensors[f"traj.{i}.actions"].numpy(),
                tensors[f"traj.{i}.rewards"].numpy(),
                tensors[f"traj.{i}.next_obs"].numpy(),
                terminated=False,
                success=False,
            )
            self.episodes += 1
        self._traj = [[] for _ in range(self.env.num_envs)]
        self._obs = None  # the envs are reset with a seed from the restored RNG stream
