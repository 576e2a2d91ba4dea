"""The on-policy loop (DPPO, baselines-spec 5.3): iterations of "collect ``n_steps`` chunks' worth of env steps on
every env with the current policy, then one agent update on that rollout". It has the same surface as the
off-policy ``ogpo.agents.online.OnlineTrainer`` (counters, ``run(on_eval, on_checkpoint)``, ``run_eval``,
``state_dict``), so the finetune stage drives both the same way; it has no replay (``replay`` is None).

Execution is the off-policy trainer's: all envs step together one primitive action at a time from per-env chunk
queues (``ogpo.rollout.ChunkQueue``, announced with ``queue_chunks`` so subprocess workers run ahead), a new chunk
is drawn for exactly the envs whose queue is empty, and an episode end drops the rest of its chunk. An env whose
episode ended mid-chunk starts its next chunk at once, so envs drift out of step and each has its own sequence
of chunk decisions; the rollout is a [T, N] grid of them padded at the end (``valid``). Env steps are counted
per primitive step, so iterations, evaluations and the budget land on exact env-step counts, as off-policy.

An iteration is ``n_steps * H`` primitive steps per env (cut short by ``total_env_steps``) and starts from
freshly reset envs (DPPO's ``reset_at_iteration``); each env's last chunk is cut where the iteration ends and,
like any unfinished episode, bootstrapped by the agent. No env state crosses an iteration boundary, which is
what makes resuming exact: the trainer checkpoints only between iterations, where nothing exists beyond the seed
stream it restores.

Evaluation happens when the env-step count reaches ``eval_every`` multiples: mid-iteration it evaluates the
policy collecting the rollout (which only changes at updates); a point reached by an iteration's last step is
evaluated after that iteration's update. ``start_training`` and ``utd`` (off-policy options) are not used:
the agent's config sets the iteration size, epochs and minibatches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ogpo.agents.online import OnlineConfig
from ogpo.agents.progress import MetricWindow, ProgressLog, eval_row
from ogpo.algos.base import Agent, RunSeeds
from ogpo.checks import check_positive_int
from ogpo.envs.base import VectorEnv
from ogpo.rollout import ChunkQueue, EvalResult, evaluate
from ogpo.state import numpy_rng_from_state, numpy_rng_state

log = logging.getLogger(__name__)


@dataclass
class ChunkRollout:
    """One iteration's chunk decisions, a [T, N] grid (row t = env n's t-th chunk) on the agent's device.

    obs [T, N, obs_dim]: the state each chunk was chosen in. extras {name: [T, N, dim]}: what
    ``act_with_extras`` returned with the chunk (DPPO: the denoising chain). rewards [T, N]: the chunk's summed
    per-step rewards. steps [T, N]: primitive steps it executed (< H when its episode or the iteration ended
    inside it). terminated / truncated [T, N]: how the episode ended in this chunk, if it did. final_obs
    [T, N, obs_dim]: the observation after the chunk's last step, before any reset. firsts [T, N]: the chunk
    starts an episode. valid [T, N]: a real chunk (env n made ``valid[:, n].sum()`` decisions; the rest is
    padding). last_obs [N, obs_dim]: where each env stands when the iteration ends, after its last chunk.
    """

    obs: torch.Tensor
    extras: dict[str, torch.Tensor]
    rewards: torch.Tensor
    steps: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    firsts: torch.Tensor
    valid: torch.Tensor
    last_obs: torch.Tensor


class OnPolicyAgent(Protocol):
    """What the loop needs beyond ``Agent``: ``update`` takes a ``ChunkRollout`` (not a replay) and returns its
    metrics plus ``grad_steps`` (gradient steps it took)."""

    def update(self, rollout: ChunkRollout, generator: torch.Generator) -> dict[str, Any]: ...


class OnPolicyTrainer:
    """Iterations of ``n_steps`` chunks per env, each followed by ``agent.update(rollout, generator)``."""

    def __init__(
        self,
        agent: Agent,
        env: VectorEnv,
        eval_env: VectorEnv,
        cfg: OnlineConfig,
        seeds: RunSeeds,
        n_steps: int,
    ) -> None:
        cfg.validate()
        cfg.check_modes(agent)
        check_positive_int("n_steps", n_steps)
        self.agent, self.env, self.eval_env, self.cfg = agent, env, eval_env, cfg
        self.replay = None  # on-policy: no replay
        self.n_steps = n_steps
        self.device = next(agent.actor.parameters()).device
        self.H = agent.H
        self.env_steps = 0
        self.updates = 0  # gradient steps
        self.episodes = 0
        self.iterations = 0
        self.next_eval = cfg.eval_every
        self.wall_time = 0.0
        self.rng = seeds.numpy_rng("env")  # env reset seeds, one per iteration
        self.sample_gen = seeds.torch_generator("replay", self.device)  # minibatch shuffling
        self.recent: list[dict] = []  # finished training episodes since the last eval
        self._metrics = MetricWindow()  # per metric: sum and count over iterations since the last eval
        self.stop_requested = False  # set from a signal handler: checkpoint after this iteration and stop

    # ---- acting ----------------------------------------------------------------------------------------
    def _policy(self, mode: str) -> Callable[[np.ndarray], np.ndarray]:
        def fn(obs: np.ndarray) -> np.ndarray:
            o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            return self.agent.act(o, mode).cpu().numpy()

        return fn

    def run_eval(self) -> EvalResult:
        seed = 10_000_019 + self.env_steps  # a fixed seed per evaluation point, as the off-policy trainer
        return evaluate(self.eval_env, self._policy(self.cfg.eval_mode), self.cfg.eval_episodes, seed, self.H)

    def collect(self, on_step: Callable[[], None] | None = None) -> ChunkRollout:
        """Reset every env, then ``n_steps * H`` primitive steps per env (fewer at the end of the budget) with the
        behaviour policy (``cfg.rollout_mode``); ``on_step`` runs after every step but the last."""
        N, H, dev, od = self.env.num_envs, self.H, self.device, self.env.obs_dim
        left = self.cfg.total_env_steps - self.env_steps
        n_prim = max(1, min(self.n_steps * H, -(-left // N)))
        cap = n_prim  # at most one chunk decision per env per step
        obs_g = np.zeros((cap, N, od), np.float32)
        final_g = np.zeros((cap, N, od), np.float32)
        rew_g = np.zeros((cap, N), np.float64)
        steps_g = np.zeros((cap, N), np.int64)
        term_g = np.zeros((cap, N), bool)
        trunc_g = np.zeros((cap, N), bool)
        first_g = np.zeros((cap, N), bool)
        calls: list[tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]] = []  # (envs, chunk rows, extras)
        count = np.zeros(N, np.int64)  # chunks drawn so far per env
        pending_first = np.ones(N, bool)
        queue = ChunkQueue(N, H, self.env.act_dim)
        ep_ret = np.zeros(N)
        ep_len = np.zeros(N, np.int64)
        ar = np.arange(N)

        def policy(o: np.ndarray) -> np.ndarray:
            need = np.flatnonzero(queue.pos >= H)  # ChunkQueue asks for exactly these envs, in this order
            rows = count[need]
            obs_g[rows, need] = o
            first_g[rows, need] = pending_first[need]
            pending_first[need] = False
            count[need] += 1
            with torch.no_grad():
                actions, ex = self.agent.act_with_extras(torch.as_tensor(o, device=dev), self.cfg.rollout_mode)
            calls.append((need, rows, ex))
            return actions.cpu().numpy()

        obs = self.env.reset(int(self.rng.integers(2**31)))
        for j in range(n_prim):
            actions = queue.next_actions(obs, policy, self.env)
            res = self.env.step(actions)
            cur = count - 1
            rew_g[cur, ar] += res.reward
            steps_g[cur, ar] += 1
            final_g[cur, ar] = res.final_obs
            ended = res.terminated | res.truncated
            term_g[cur, ar] = res.terminated
            trunc_g[cur, ar] = res.truncated
            ep_ret += res.reward
            ep_len += 1
            for i in np.flatnonzero(ended):
                self.recent.append({"return": ep_ret[i], "length": ep_len[i], "success": bool(res.success[i])})
            self.episodes += int(ended.sum())
            ep_ret[ended] = 0.0
            ep_len[ended] = 0
            queue.clear(ended)  # a chunk never carries over into a fresh episode
            pending_first |= ended
            obs = res.obs
            self.env_steps += N
            if on_step is not None and j + 1 < n_prim:
                on_step()

        T = int(count.max())
        extras: dict[str, torch.Tensor] = {}
        for need, rows, ex in calls:
            for k, v in ex.items():
                if k not in extras:
                    extras[k] = torch.zeros(T, N, *v.shape[1:], dtype=v.dtype, device=dev)
                extras[k][torch.as_tensor(rows, device=dev), torch.as_tensor(need, device=dev)] = v

        def tt(x: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.as_tensor(x[:T], dtype=dtype, device=dev)

        return ChunkRollout(
            obs=tt(obs_g),
            extras=extras,
            rewards=tt(rew_g, torch.float32),
            steps=tt(steps_g),
            terminated=tt(term_g),
            truncated=tt(trunc_g),
            final_obs=tt(final_g),
            firsts=tt(first_g),
            valid=torch.as_tensor(np.arange(T)[:, None] < count[None, :], device=dev),
            last_obs=torch.as_tensor(obs, dtype=torch.float32, device=dev),
        )

    # ---- main loop -------------------------------------------------------------------------------------
    def run(
        self,
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[OnPolicyTrainer], None] | None = None,
    ) -> None:
        """Iterate until ``total_env_steps``; evaluate at ``eval_every`` multiples and at the end; checkpoint (and
        honour ``stop_requested``) between iterations."""
        cfg = self.cfg
        t_start = time.perf_counter() - self.wall_time
        progress = ProgressLog(log, cfg.total_env_steps, cfg.log_every, self.env_steps, cfg.eval_every)
        last_ckpt = self.env_steps

        def maybe_eval() -> None:
            if self.env_steps >= self.next_eval or self.env_steps >= cfg.total_env_steps:
                self.wall_time = time.perf_counter() - t_start
                t_eval = time.perf_counter()
                row = self._eval_row()
                if on_eval is not None:
                    on_eval(row)
                progress.evaluated(time.perf_counter() - t_eval)
                while self.next_eval <= self.env_steps:
                    self.next_eval += cfg.eval_every

        while self.env_steps < cfg.total_env_steps:
            rollout = self.collect(on_step=maybe_eval)
            m = dict(self.agent.update(rollout, self.sample_gen))
            self.updates += int(m.pop("grad_steps", 1))
            self.iterations += 1
            self._metrics.add(m, self.agent.metric_names)  # critic-only iterations report no policy metrics

            self.wall_time = time.perf_counter() - t_start
            progress.tick(self.env_steps, self.updates, prefix=f"iteration {self.iterations}  ")
            maybe_eval()
            if on_checkpoint is not None and self.env_steps - last_ckpt >= cfg.checkpoint_every:
                last_ckpt = self.env_steps
                on_checkpoint(self)
            if self.stop_requested:
                if on_checkpoint is not None:
                    on_checkpoint(self)
                raise KeyboardInterrupt

    def _eval_row(self) -> dict[str, Any]:
        metrics = self._metrics.means(self.agent.metric_names)
        row = eval_row(self.run_eval(), self.env_steps, metrics, self.recent, self.updates, self.wall_time, log)
        self.recent = []
        return row

    # ---- resumable state (between iterations) ----------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The agent's state, the shuffling generator, the env seed stream, counters and the metric averages
        since the last evaluation. Taken between iterations (``on_checkpoint`` is only called there)."""
        tensors, agent_meta = self.agent.state_dict()
        tensors = {f"agent.{k}": v for k, v in tensors.items()}
        tensors["trainer.sample_gen"] = self.sample_gen.get_state()
        meta = {
            "agent": agent_meta,
            "loop": "on_policy",
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "iterations": self.iterations,
            "next_eval": self.next_eval,
            "wall_time": self.wall_time,
            "rng": numpy_rng_state(self.rng),
            "metrics": self._metrics.state(),
            "recent": [{k: float(v) for k, v in r.items()} for r in self.recent],
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.agent.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("agent.")}, meta["agent"])
        self.sample_gen.set_state(tensors["trainer.sample_gen"])
        for k in ("env_steps", "updates", "episodes", "iterations", "next_eval"):
            setattr(self, k, int(meta[k]))
        self.wall_time = float(meta["wall_time"])
        self.rng = numpy_rng_from_state(meta["rng"])
        self._metrics.load_state(meta["metrics"])
        self.recent = [dict(r, success=bool(r["success"])) for r in meta["recent"]]
