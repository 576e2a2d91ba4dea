"""The vector-env protocol shared by the toy task and the robosuite vector env.

Rollout and training code only uses this interface. ``step`` executes one *primitive* action per env; the
trainer and ``ogpo.rollout.evaluate`` use it with a per-env chunk queue (spec 2.9's loop, and its seeded random
stream) that announces each new chunk with ``queue_chunks``, so subprocess workers run ahead through it.
``step_chunk`` executes a whole action chunk (up to H primitive actions) per env in one call and reports every
primitive step, for callers that act in whole chunks on all envs at once. Either way a subprocess worker gets
one message per chunk instead of one per action, which is what lets W workers run at nearly W times one env's
rate (benchmarks/envs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ogpo.errors import ShapeError


@dataclass
class StepResult:
    """Result of one vector step, all arrays with leading dim N (num_envs).

    obs: observation after the step; for an env whose episode ended this is already the *reset* observation
    (auto-reset) and the true last observation is in final_obs.
    terminated: episode ended by success/failure (no bootstrap). truncated: time limit (bootstrap).
    success: success flag of the episode, meaningful where terminated | truncated.
    """

    obs: np.ndarray  # [N, obs_dim] float32
    reward: np.ndarray  # [N] float32
    terminated: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    success: np.ndarray  # [N] bool
    final_obs: np.ndarray  # [N, obs_dim] float32 (equals obs where the episode did not end)


@dataclass
class ChunkStepResult:
    """Result of one ``step_chunk`` call for N envs that each executed up to h primitive actions.

    An env stops early when its episode ends inside the chunk (the rest of its chunk is dropped, as the spec's
    queue is cleared at episode end) and is then auto-reset. Arrays are zero beyond ``steps[i]``.

    next_obs[i, j]: observation after env i's j-th step (for the ending step: the true last observation).
    obs: observation after the chunk; for an env whose episode ended this is the *reset* observation.
    terminated / truncated / success: of env i's last executed step (an episode can only end there).
    """

    obs: np.ndarray  # [N, obs_dim] float32
    next_obs: np.ndarray  # [N, h, obs_dim] float32
    reward: np.ndarray  # [N, h] float32
    steps: np.ndarray  # [N] int64, primitive steps executed (<= h)
    terminated: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    success: np.ndarray  # [N] bool
    episode_seeds: np.ndarray | None = None  # [N] seed of the episode each env was in (where known)

    @property
    def final_obs(self) -> np.ndarray:
        """[N, obs_dim] observation after each env's last executed step (before any reset); ``obs`` for an env
        that executed no step."""
        last = self.next_obs[np.arange(len(self.steps)), np.maximum(self.steps - 1, 0)]
        return np.where((self.steps > 0)[:, None], last, self.obs)


def check_chunk(actions: np.ndarray, lengths: np.ndarray | None, num_envs: int, act_dim: int, where: str):
    """Validate ``step_chunk`` arguments in the caller (a bad chunk never reaches a worker, so the vector env
    stays usable); returns (actions float32 [N, h, act_dim], lengths int64 [N])."""
    a = np.asarray(actions, dtype=np.float32)
    if a.ndim != 3 or a.shape[0] != num_envs or a.shape[2] != act_dim or a.shape[1] < 1:
        raise ShapeError(f"{where}: action chunks must have shape [{num_envs}, h >= 1, {act_dim}], got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ShapeError(f"{where}: action chunks contain NaN or inf")
    h = a.shape[1]
    if lengths is None:
        n = np.full(num_envs, h, dtype=np.int64)
    else:
        n = np.asarray(lengths, dtype=np.int64)
        if n.shape != (num_envs,) or (n < 0).any() or (n > h).any():
            got = np.asarray(lengths).tolist()
            raise ShapeError(f"{where}: lengths must be {num_envs} integers in [0, {h}], got {got}")
    return a, n


class VectorEnv(Protocol):
    num_envs: int
    obs_dim: int
    act_dim: int
    horizon: int  # max episode length in primitive steps

    def reset(self, seed: int) -> np.ndarray:
        """Reset all envs (env i seeded from seed + i) and return obs [N, obs_dim]."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with actions [N, act_dim] in [-1, 1]; ended envs auto-reset with a fresh seed."""
        ...

    def queue_chunks(self, env_ids: np.ndarray, chunks: np.ndarray) -> None:
        """Commit envs ``env_ids`` to run ``chunks`` [n, h, act_dim] as their next ``step`` actions (dropped at
        episode end or ``reset``). ``step`` results are unchanged; a subprocess env starts running them at once."""
        ...

    def step_chunk(self, actions: np.ndarray, lengths: np.ndarray | None = None) -> ChunkStepResult:
        """Execute action chunks [N, h, act_dim]: env i runs its first ``lengths[i]`` actions (default h), stopping
        early at episode end; ended envs auto-reset with a fresh seed."""
        ...

    def close(self) -> None: ...
