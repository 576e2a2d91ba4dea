"""A cheap 2-D point-robot task with sparse success, for learning tests that run in minutes on a CPU.

The robot starts on the left of a wall, must pass through a narrow gap and then reach one of two goal discs
(upper right or lower right). Demonstrations are multimodal: the scripted demonstrator picks a goal at random,
so an under-trained policy averages the modes and heads between the goals, or grazes the wall and loses time
sliding along it. Either way it runs out of time: success is a real, sparse signal, and the fixes are local
(commit to a goal, aim at the gap), which is what fine-tuning should find.
Reward follows the robomimic convention of spec 5 (-1 per step, +5 on success, terminate on success).
All N envs are simulated together in numpy (vectorized), far faster than the learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ogpo.envs.base import StepResult
from ogpo.errors import ShapeError


@dataclass(frozen=True)
class ToyConfig:
    horizon: int = 30  # primitive steps per episode
    step_size: float = 0.1  # displacement per unit action
    wall_half_width: float = 0.05
    gap_centers: tuple[float, ...] = (0.0,)
    gap_half_height: float = 0.08
    goals: tuple[tuple[float, float], ...] = ((0.7, 0.5), (0.7, -0.5))
    goal_radius: float = 0.1
    start_x: float = -0.75
    start_y_range: float = 0.3
    success_bonus: float = 5.0


class PointGapEnv:
    """Vectorized point robot behind a wall with gaps; implements ogpo.envs.base.VectorEnv."""

    obs_dim = 2
    act_dim = 2

    def __init__(self, num_envs: int, cfg: ToyConfig | None = None) -> None:
        self.cfg = cfg or ToyConfig()
        self.num_envs = num_envs
        self.horizon = self.cfg.horizon
        self.pos = np.zeros((num_envs, 2))
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.rng = np.random.default_rng(0)

    def _sample_starts(self, n: int) -> np.ndarray:
        y = self.rng.uniform(-self.cfg.start_y_range, self.cfg.start_y_range, size=n)
        return np.stack([np.full(n, self.cfg.start_x), y], axis=1)

    def reset(self, seed: int) -> np.ndarray:
        self.rng = np.random.default_rng(seed)
        self.pos = self._sample_starts(self.num_envs)
        self.t[:] = 0
        return self.pos.astype(np.float32)

    def _blocked(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        """A move is blocked if the segment enters the wall slab at a height outside every gap."""
        w = self.cfg.wall_half_width
        x0, x1 = old[:, 0], new[:, 0]
        touches = (np.minimum(x0, x1) <= w) & (np.maximum(x0, x1) >= -w)
        # height where the segment is inside the slab: check both slab faces and the endpoints inside it
        ys = []
        for xf in (-w, w):
            dx = x1 - x0
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where(np.abs(dx) > 1e-12, (xf - x0) / dx, 0.0)
            s = np.clip(s, 0.0, 1.0)
            ys.append(old[:, 1] + s * (new[:, 1] - old[:, 1]))
        ys.append(new[:, 1])
        in_gap = np.ones_like(touches)
        for y in ys:
            ok = np.zeros_like(touches)
            for c in self.cfg.gap_centers:
                ok |= np.abs(y - c) <= self.cfg.gap_half_height
            in_gap &= ok
        return touches & ~in_gap

    def _move(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Advance every env by one step (no reset); returns reward, terminated, truncated, success."""
        a = np.clip(a, -1.0, 1.0)
        new = np.clip(self.pos + self.cfg.step_size * a, -1.0, 1.0)
        blocked = self._blocked(self.pos, new)
        # a blocked move keeps only its motion along the wall (the robot slides; it never sticks)
        slide = np.stack([self.pos[:, 0], new[:, 1]], axis=1)
        slide_ok = ~self._blocked(self.pos, slide)
        self.pos = np.where(blocked[:, None], np.where(slide_ok[:, None], slide, self.pos), new)
        self.t += 1
        dist = np.linalg.norm(self.pos[:, None, :] - np.asarray(self.cfg.goals)[None], axis=2)
        success = (dist <= self.cfg.goal_radius).any(axis=1)
        reward = -1.0 + (1.0 + self.cfg.success_bonus) * success  # robomimic r - 1 (+5): 5 on success
        terminated = success.copy()
        truncated = (self.t >= self.horizon) & ~terminated
        return reward.astype(np.float32), terminated, truncated, success

    def _auto_reset(self, ended: np.ndarray) -> None:
        if ended.any():
            self.pos[ended] = self._sample_starts(int(ended.sum()))
            self.t[ended] = 0

    def step(self, actions: np.ndarray) -> StepResult:
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, self.act_dim):
            raise ShapeError(f"toy env actions: expected shape [{self.num_envs}, 2], got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise ShapeError("toy env actions: contain NaN or inf")
        reward, terminated, truncated, success = self._move(a)
        final_obs = self.pos.astype(np.float32)
        self._auto_reset(terminated | truncated)
        return StepResult(
            obs=self.pos.astype(np.float32),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            success=success,
            final_obs=final_obs,
        )

    def queue_chunks(self, env_ids: np.ndarray, chunks: np.ndarray) -> None:
        """Nothing to run ahead: all envs step together in numpy, in the caller."""

    def close(self) -> None:
        pass


def scripted_actions(pos: np.ndarray, goal: np.ndarray, cfg: ToyConfig, rng: np.random.Generator, noise: float):
    """The demonstrator: line up with the gap, pass through it, then head for the chosen goal."""
    w = cfg.wall_half_width
    gy = cfg.gap_centers[0]
    aligned = np.abs(pos[:, 1] - gy) < 0.03
    before = (pos[:, 0] < -w - 0.02) & ~aligned
    inside = ~before & (pos[:, 0] < w + 0.05)
    g = np.asarray(cfg.goals)[goal]
    n = len(pos)
    target = np.where(
        before[:, None],
        np.stack([np.full(n, -w - 0.05), np.full(n, gy)], 1),
        np.where(inside[:, None], np.stack([np.full(n, w + 0.15), np.full(n, gy)], 1), g),
    )
    a = (target - pos) / cfg.step_size
    a = np.clip(a, -1.0, 1.0) + noise * rng.standard_normal(pos.shape)
    return np.clip(a, -1.0, 1.0)


def collect_toy_demos(n_episodes: int, seed: int, noise: float = 0.3, cfg: ToyConfig | None = None) -> list[dict]:
    """Run the scripted demonstrator; returns episodes as dicts of obs, actions, rewards, next_obs, success."""
    cfg = cfg or ToyConfig()
    env = PointGapEnv(n_episodes, cfg)
    obs = env.reset(seed)
    rng = np.random.default_rng(seed + 1)
    goal = rng.integers(len(cfg.goals), size=n_episodes)
    alive = np.ones(n_episodes, dtype=bool)
    traj: list[list[tuple]] = [[] for _ in range(n_episodes)]
    episodes: list[dict | None] = [None] * n_episodes
    while alive.any():
        act = scripted_actions(env.pos, goal, cfg, rng, noise)
        res = env.step(act)
        for i in np.flatnonzero(alive):
            traj[i].append((obs[i], act[i].astype(np.float32), res.reward[i], res.final_obs[i]))
            if res.terminated[i] or res.truncated[i]:
                o, a, r, no = map(np.asarray, zip(*traj[i], strict=True))
                episodes[i] = dict(
                    obs=o,
                    actions=a,
                    rewards=r,
                    next_obs=no,
                    terminated=bool(res.terminated[i]),
                    success=bool(res.success[i]),
                )
                alive[i] = False
        obs = res.obs
    return [e for e in episodes if e is not None]
