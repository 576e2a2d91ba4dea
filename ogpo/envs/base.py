"""The vector-env protocol shared by the toy task and the robosuite vector env.

Rollout and training code only uses this interface. ``step`` executes one *primitive* action per env; the
trainer and ``ogpo.rollout.evaluate`` use it with a per-env chunk queue (spec 2.9's loop, and its seeded random
stream) that announces each new chunk with ``queue_chunks``, so a subprocess worker gets one message per chunk
instead of one per action and runs ahead through it while ``step`` keeps its per-step results. That is what
lets W workers run at nearly W times one env's rate (benchmarks/envs.py).
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


def check_chunk(chunks: np.ndarray, num_envs: int, act_dim: int, where: str) -> np.ndarray:
    """Validate ``queue_chunks`` chunks in the caller (a bad chunk never reaches a worker, so the vector env
    stays usable); returns them as float32 [num_envs, h, act_dim]."""
    a = np.asarray(chunks, dtype=np.float32)
    if a.ndim != 3 or a.shape[0] != num_envs or a.shape[2] != act_dim or a.shape[1] < 1:
        raise ShapeError(f"{where}: action chunks must have shape [{num_envs}, h >= 1, {act_dim}], got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ShapeError(f"{where}: action chunks contain NaN or inf")
    return a


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

    def close(self) -> None: ...
