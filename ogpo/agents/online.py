"""The off-policy online loop (OGPO spec 2.9), shared by every off-policy algorithm in the registry: roll out
chunks from the agent's behaviour policy, store whole episodes in the replay, run ``utd`` agent updates per
environment step once the agent's update gate opens, evaluate on a schedule, and checkpoint resumable state.

The trainer knows agents only through ``ogpo.algos.base.Agent``. It owns the run state: ``state_dict`` holds
the agent's (weights, optimizers, RNG streams, counters), the replay, the trainer's RNG streams, counters and
unfinished trajectories, so any algorithm resumes exactly. Environments cannot be snapshotted portably, so on
resume each unfinished trajectory is stored as a time-limit truncation (it bootstraps, like any truncation)
and its env is reset with a seed from the restored stream; the env-step counter continues, so no step is
repeated or lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ogpo.agents.progress import MetricWindow, ProgressLog, eval_row
from ogpo.algos.base import Agent, RunSeeds
from ogpo.checks import check_positive_int
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.base import VectorEnv
from ogpo.errors import ConfigError
from ogpo.rollout import ChunkQueue, EvalResult, evaluate
from ogpo.state import numpy_rng_from_state, numpy_rng_state

log = logging.getLogger(__name__)

EVAL_COLUMNS = ("env_steps", "success", "return", "episode_length")
RUN_COLUMNS = ("rollout_success", "updates", "wall_time")


def curve_columns(agent: Agent) -> list[str]:
    """Learning-curve CSV columns for this agent: evaluation, the agent's own metrics, then run counters."""
    return [*EVAL_COLUMNS, *agent.metric_names, *RUN_COLUMNS]


@dataclass
class OnlineConfig:
    total_env_steps: int = 2_000_000
    start_training: int = 10_000
    utd: float = 1.0  # updates per environment step
    eval_every: int = 10_000
    eval_episodes: int = 64
    eval_mode: str = "eval"  # the agent's evaluation policy (OGPO: online actor, ODE; spec 8.1)
    rollout_mode: str = "rollout"  # the agent's behaviour policy (OGPO: EMA actor, SDE, Best-of-N; spec 2.7)
    checkpoint_every: int = 50_000
    log_every: int = 5_000

    def validate(self) -> None:
        check_positive_int("total_env_steps", self.total_env_steps)
        check_positive_int("start_training", self.start_training, minimum=0)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("eval_episodes", self.eval_episodes)
        check_positive_int("checkpoint_every", self.checkpoint_every)
        if not self.utd > 0:
            raise ConfigError(f"utd must be > 0, got {self.utd!r}")

    def check_modes(self, agent: Agent) -> None:
        """ConfigError before any work when the agent does not know a mode."""
        for name in ("eval_mode", "rollout_mode"):
            if getattr(self, name) not in agent.modes:
                raise ConfigError(
                    f"{name} {getattr(self, name)!r} is not a mode of {agent.name}; its modes: {', '.join(agent.modes)}"
                )


class OnlineTrainer:
    def __init__(
        self,
        agent: Agent,
        env: VectorEnv,
        eval_env: VectorEnv,
        replay: ReplayBuffer,
        cfg: OnlineConfig,
        seeds: RunSeeds,
    ) -> None:
        cfg.validate()
        cfg.check_modes(agent)
        self.agent, self.env, self.eval_env, self.replay, self.cfg = agent, env, eval_env, replay, cfg
        self.device = next(agent.actor.parameters()).device
        self.H = agent.H
        self.env_steps = 0
        self.updates = 0
        self.episodes = 0
        self.owed_updates = 0.0
        self.next_eval = cfg.eval_every
        self.rng = seeds.numpy_rng("env")  # env reset seeds
        self.sample_gen = seeds.torch_generator("replay", self.device)  # replay batches
        self.wall_time = 0.0
        self.recent: list[dict] = []  # finished rollout episodes since the last eval (return, length, success)
        self._metrics = MetricWindow()
        self._traj: list[list[tuple]] = [[] for _ in range(env.num_envs)]
        self._obs: np.ndarray | None = None
        self._queue = ChunkQueue(env.num_envs, self.H, env.act_dim)
        self._extras = {k: np.zeros((env.num_envs, d), np.float32) for k, d in agent.replay_extras.items()}
        self.stop_requested = False  # set from a signal handler: checkpoint at the next safe point and stop

    # ---- policies --------------------------------------------------------------------------------------
    def _policy(self, mode: str) -> Callable[[np.ndarray], np.ndarray]:
        def fn(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            return self.agent.act(o, mode).cpu().numpy()

        return fn

    def _rollout_policy(self, mode: str) -> Callable[[np.ndarray], np.ndarray]:
        """The behaviour policy; the per-chunk extras it returns are kept for the envs that drew a chunk."""
        if not self._extras:
            return self._policy(mode)

        def fn(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            actions, extras = self.agent.act_with_extras(o, mode)
            need = self._queue.pos >= self.H  # the envs this call serves (ChunkQueue fills exactly these)
            for k, v in extras.items():
                self._extras[k][need] = v.cpu().numpy()
            return actions.cpu().numpy()

        return fn

    def run_eval(self) -> EvalResult:
        seed = 10_000_019 + self.env_steps  # a fixed seed per evaluation point, independent of training RNG
        return evaluate(self.eval_env, self._policy(self.cfg.eval_mode), self.cfg.eval_episodes, seed, self.H)

    # ---- main loop -------------------------------------------------------------------------------------
    def _push_episode(self, i: int, terminated: bool, success: bool) -> None:
        o, a, r, no, starts, extras = _stack(self._traj[i], list(self._extras))
        self.replay.add_episode(o, a, r, no, terminated, success, chunk_start=starts, extras=extras)
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
        policy = self._rollout_policy(cfg.rollout_mode)
        t_start = time.perf_counter() - self.wall_time
        progress = ProgressLog(
            log, cfg.total_env_steps, cfg.log_every, self.env_steps, cfg.eval_every, cfg.start_training
        )
        last_ckpt = self.env_steps
        ep_ret = np.zeros(N)
        ep_len = np.zeros(N, dtype=np.int64)
        while self.env_steps < cfg.total_env_steps:
            obs = self._obs
            actions = self._queue.next_actions(obs, policy, self.env)
            started = self._queue.pos == 1  # a new chunk begins at this step
            res = self.env.step(actions)
            for i in range(N):
                # a copy: the per-env row is overwritten when the env draws its next chunk
                extras = tuple(self._extras[k][i].copy() if started[i] else np.zeros_like(self._extras[k][i])
                               for k in self._extras)  # fmt: skip
                self._traj[i].append((obs[i], actions[i], float(res.reward[i]), res.final_obs[i], bool(started[i]),
                                      *extras))  # fmt: skip
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

            if self.env_steps >= cfg.start_training and self.agent.ready(self.replay):
                self.owed_updates += N * cfg.utd
                while self.owed_updates >= 1.0:
                    self._update()
                    self.owed_updates -= 1.0

            self.wall_time = time.perf_counter() - t_start
            progress.tick(self.env_steps, self.updates)
            if self.env_steps >= self.next_eval or self.env_steps >= cfg.total_env_steps:
                t_eval = time.perf_counter()
                row = self._eval_row()
                if on_eval is not None:
                    on_eval(row)
                progress.evaluated(time.perf_counter() - t_eval)
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
        self._metrics.add(self.agent.update(self.replay, self.sample_gen), self.agent.metric_names)
        self.updates += 1

    def _eval_row(self) -> dict[str, Any]:
        metrics = self._metrics.means(self.agent.metric_names)
        row = eval_row(self.run_eval(), self.env_steps, metrics, self.recent, self.updates, self.wall_time, log)
        self.recent = []
        return row

    # ---- resumable state -------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a resume needs, flat (safetensors tensors + JSON meta): the agent's state, the replay,
        the trainer's RNG streams, counters and unfinished trajectories."""
        tensors, agent_meta = self.agent.state_dict()
        tensors = {f"agent.{k}": v for k, v in tensors.items()}
        tensors |= {f"replay.{k}": v for k, v in self.replay.state_tensors().items()}
        tensors["trainer.sample_gen"] = self.sample_gen.get_state()
        trajs = []
        for i, tr in enumerate(self._traj):
            if tr:
                for name, x in zip(_TRAJ_FIELDS, _stack(tr, list(self._extras)), strict=False):
                    if isinstance(x, dict):
                        tensors |= {f"traj.{i}.extra.{k}": torch.as_tensor(v) for k, v in x.items()}
                    else:
                        tensors[f"traj.{i}.{name}"] = torch.as_tensor(x)
                trajs.append(i)
        meta = {
            "agent": agent_meta,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "owed_updates": self.owed_updates,
            "next_eval": self.next_eval,
            "wall_time": self.wall_time,
            "rng": numpy_rng_state(self.rng),
            "trajectories": trajs,
            "metrics": self._metrics.state(),  # the averages and rollout episodes since the last evaluation
            "recent": [{k: float(v) for k, v in r.items()} for r in self.recent],
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.agent.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("agent.")}, meta["agent"])
        self.replay.load_state_tensors({k[7:]: v for k, v in tensors.items() if k.startswith("replay.")})
        self.sample_gen.set_state(tensors["trainer.sample_gen"])
        for k in ("env_steps", "updates", "episodes", "next_eval"):
            setattr(self, k, int(meta[k]))
        self.owed_updates = float(meta["owed_updates"])
        self.wall_time = float(meta["wall_time"])
        self.rng = numpy_rng_from_state(meta["rng"])
        self._metrics.load_state(meta.get("metrics", {}))
        self.recent = [dict(r) for r in meta.get("recent", [])]
        for i in meta["trajectories"]:
            t = {name: tensors[f"traj.{i}.{name}"].numpy() for name in _TRAJ_FIELDS[:5]}
            extras = {k: tensors[f"traj.{i}.extra.{k}"].numpy() for k in self._extras}
            self.replay.add_episode(**t, extras=extras, terminated=False, success=False)
            self.episodes += 1
        self._traj = [[] for _ in range(self.env.num_envs)]
        self._obs = None  # the envs are reset with a seed from the restored RNG stream


_TRAJ_FIELDS = ("obs", "actions", "rewards", "next_obs", "chunk_start", "extras")


def _stack(steps: list[tuple], extra_names: list[str]) -> tuple:
    """Per-step tuples (obs, action, reward, next_obs, chunk_start, *extras) -> stacked arrays + extras dict."""
    cols = list(zip(*steps, strict=True))
    o, a, r, no, starts = (np.stack(c) for c in cols[:5])
    extras = {k: np.stack(c).astype(np.float32) for k, c in zip(extra_names, cols[5:], strict=True)}
    return o, a, r.astype(np.float32), no, starts.astype(bool), extras
