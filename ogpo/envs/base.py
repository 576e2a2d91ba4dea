"""The vector-env protocol shared by the toy task and the robosuite vector env.

Rollout and training code only uses this interface. Every env steps one *primitive* action per call; chunk
execution (an action queue of H actions) is done by the caller (ogpo.rollout) so that replay stores primitive
steps, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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

    def close(self) -> None: ...
