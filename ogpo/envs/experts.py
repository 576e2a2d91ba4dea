"""Scripted experts for lift, can and square: phase machines on object poses read from the flat observation.

Why: public dataset hosts are unreachable from our machines, so the project makes its own demonstrations,
reproducibly (a seed fixes every episode). Each expert is batched over N envs (one phase machine per env) so
it runs in the caller of a vector env, like a policy. ``noise`` > 0 gives "multi-human"-like variety: every
episode draws its own speed, approach height, grasp offset and pauses, and Gaussian action noise of std
``noise`` is added, so demonstrations differ in timing and path (as in robomimic's MH datasets) while
mostly still succeeding. ``noise = 0`` is deterministic given the env seed.

Control: robosuite's OSC_POSE takes a delta pose in the (identity-rotated) base frame, 0.05 m and 0.5 rad per
unit action; the experts command a proportional step toward a waypoint, and an orientation that keeps the
gripper pointing down at a chosen yaw (fingers close along ``Rz(yaw) @ y``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ogpo.envs.robosuite import TaskSpec, task_spec
from ogpo.errors import EnvError

if TYPE_CHECKING:
    from ogpo.data.demos import Episode

POS_SCALE = 0.05  # metres per unit action (OSC_POSE output_max)
ROT_SCALE = 0.5  # radians per unit action
OPEN, CLOSE = -1.0, 1.0
# gripper pointing down, fingers closing along world y: the robots' start orientation (180 deg about x)
R_DOWN = np.diag([1.0, -1.0, -1.0])


def quat_to_mat(q: np.ndarray) -> np.ndarray:
    """robosuite quaternions (x, y, z, w), shape [..., 4] -> rotation matrices [..., 3, 3]."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def mat_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vectors [..., 3] of rotation matrices [..., 3, 3] (log map, stable near 0 and pi)."""
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    v = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = np.sin(angle)
    small = sin < 1e-6
    out = np.where(small[..., None], 0.5 * v, v * (angle / np.where(small, 1.0, 2.0 * sin))[..., None])
    near_pi = small & (cos < 0)
    if near_pi.any():  # angle ~ pi: axis from the largest diagonal entry of (R + I) / 2
        B = (R[near_pi] + np.eye(3)) / 2.0
        i = np.argmax(np.diagonal(B, axis1=-2, axis2=-1), axis=-1)
        axis = B[np.arange(len(i)), :, i] / np.sqrt(np.maximum(B[np.arange(len(i)), i, i], 1e-12))[:, None]
        out[near_pi] = axis * np.pi
    return out


def rot_z(yaw: np.ndarray) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    z, o = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def yaw_of(q: np.ndarray) -> np.ndarray:
    """Heading (rotation about world z) of quaternions (x, y, z, w)."""
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def wrap(a: np.ndarray, period: float = 2 * np.pi) -> np.ndarray:
    """Wrap angles into [-period/2, period/2)."""
    return (a + period / 2) % period - period / 2


class ScriptedExpert:
    """Batched phase machine. Subclasses define ``_waypoints`` (target pos, yaw, gripper, phase advance).

    Call ``reset(i, obs_i)`` whenever env i starts an episode (including auto-resets) and ``act(obs)`` every
    step. Per-episode variety is drawn at reset from the expert's own generator (seeded by the caller).
    """

    spec: TaskSpec

    def __init__(self, task: str, num_envs: int, seed: int, noise: float = 0.0, scene: dict | None = None) -> None:
        self.spec = task_spec(task)
        if noise < 0:
            raise EnvError(f"expert noise must be >= 0, got {noise}")
        self.n = num_envs
        self.noise = float(noise)
        self.scene = scene or {}
        self.rng = np.random.default_rng(seed)
        sl = self.spec.obs_slices()
        self._eef = sl["robot0_eef_pos"]
        self._eef_q = sl["robot0_eef_quat"]
        self._grip = sl["robot0_gripper_qpos"]
        self.phase = np.zeros(num_envs, dtype=np.int64)
        self.timer = np.zeros(num_envs, dtype=np.int64)
        self.gain = np.ones(num_envs)
        self.offset = np.zeros((num_envs, 3))  # grasp offset (m)
        self.hover = np.full(num_envs, 0.10)  # approach height above the grasp point (m)
        self.pause = np.zeros(num_envs, dtype=np.int64)  # extra steps of closing / settling
        self.yaw_goal = np.zeros(num_envs)
        self.anchor = np.zeros((num_envs, 3))  # a position latched at a phase change

    def reset(self, i: int, obs: np.ndarray) -> None:
        """Start env i's episode: phase 0 and fresh per-episode variety."""
        self.phase[i] = 0
        self.timer[i] = 0
        self.yaw_goal[i] = 0.0
        self.anchor[i] = obs[self._eef]
        if self.noise > 0:
            nz = min(self.noise, 1.0)
            self.gain[i] = self.rng.uniform(1.0 - 0.5 * nz, 1.0 + 0.3 * nz)
            self.offset[i] = self.rng.normal(0.0, 0.004 * nz, size=3) * np.array([1.0, 1.0, 0.5])
            self.hover[i] = self.rng.uniform(0.06, 0.06 + 0.08 * nz + 0.04)
            self.pause[i] = int(self.rng.integers(0, 1 + int(10 * nz)))
        else:
            self.gain[i], self.offset[i], self.hover[i], self.pause[i] = 1.0, 0.0, 0.10, 0

    def reset_all(self, obs: np.ndarray) -> None:
        for i in range(self.n):
            self.reset(i, obs[i])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions [N, act_dim] in [-1, 1] for observations [N, obs_dim]."""
        obs = np.asarray(obs, dtype=np.float64)
        eef = obs[:, self._eef]
        target, grip = self._waypoints(obs, eef)
        self.timer += 1
        a = np.zeros((self.n, self.spec.act_dim))
        step = (target - eef) / POS_SCALE
        a[:, :3] = np.clip(self.gain[:, None] * 1.5 * step, -1.0, 1.0)
        R_cur = quat_to_mat(obs[:, self._eef_q])
        R_des = rot_z(self.yaw_goal) @ R_DOWN
        a[:, 3:6] = np.clip(mat_to_rotvec(R_des @ np.swapaxes(R_cur, -1, -2)) / ROT_SCALE, -1.0, 1.0)
        a[:, 6] = grip
        if self.noise > 0:
            a[:, :6] += self.noise * self.rng.standard_normal((self.n, 6))
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def _advance(self, mask: np.ndarray) -> None:
        self.phase[mask] += 1
        self.timer[mask] = 0

    def _regrasp_if_missed(self, obs: np.ndarray, holding: np.ndarray, min_gap: float = 0.01) -> None:
        """Back to phase 0 where the gripper closed on nothing (finger gap below ``min_gap``): a retry is
        what a human demonstrator does, and it keeps the expert's success rate high."""
        q = obs[:, self._grip]
        missed = holding & ((q[:, 0] - q[:, 1]) < min_gap)
        self.phase[missed] = 0
        self.timer[missed] = 0

    def _waypoints(self, obs: np.ndarray, eef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class LiftExpert(ScriptedExpert):
    """Above the cube, descend, close, lift. Success (cube 4 cm above the table) ends the episode."""

    def _waypoints(self, obs, eef):
        cube = obs[:, 0:3] + self.offset
        p = self.phase
        target = eef.copy()
        grip = np.full(self.n, OPEN)
        above = cube + np.stack([np.zeros(self.n), np.zeros(self.n), self.hover], 1)
        # 0: hover above the cube
        m = p == 0
        target[m] = above[m]
        xy_err = np.linalg.norm(eef[:, :2] - cube[:, :2], axis=1)
        self._advance(m & (xy_err < 0.01) & (np.abs(eef[:, 2] - above[:, 2]) < 0.02))
        # 1: descend onto the cube
        m = p == 1
        target[m] = cube[m] + np.array([0.0, 0.0, -0.005])
        self._advance(m & ((eef[:, 2] - cube[:, 2]) < 0.01))
        # 2: close
        m = p == 2
        target[m] = cube[m] + np.array([0.0, 0.0, -0.005])
        grip[m] = CLOSE
        self.anchor[m] = cube[m]
        self._advance(m & (self.timer >= 8 + self.pause))
        self._regrasp_if_missed(obs, p >= 3)
        # 3: lift
        m = p >= 3
        target[m] = self.anchor[m] + np.array([0.0, 0.0, 0.2])
        grip[m] = CLOSE
        return target, grip


class CanExpert(ScriptedExpert):
    """Grasp the can, lift it over the bin wall, carry it above its target quadrant, lower, release, retreat."""

    CARRY_Z = 0.98
    # The target quadrant's centre is at the edge of the Panda's reach with the gripper pointing down, so the
    # can is dropped between the centre and the quadrant's inner corner (still 4-5 cm inside the quadrant).
    DROP_SHIFT = np.array([-0.05, -0.06, 0.0])

    def _waypoints(self, obs, eef):
        can = obs[:, 7:10] + self.offset
        goal = np.broadcast_to(self.scene["target_pos"] + self.DROP_SHIFT, (self.n, 3))
        p = self.phase
        target = eef.copy()
        grip = np.full(self.n, OPEN)
        zeros = np.zeros(self.n)
        # 0: hover above the can
        m = p == 0
        above = can + np.stack([zeros, zeros, self.hover], 1)
        target[m] = above[m]
        xy_err = np.linalg.norm(eef[:, :2] - can[:, :2], axis=1)
        self._advance(m & (xy_err < 0.01) & (np.abs(eef[:, 2] - above[:, 2]) < 0.02))
        # 1: descend to the can's centre
        m = p == 1
        target[m] = can[m]
        self._advance(m & ((eef[:, 2] - can[:, 2]) < 0.01))
        # 2: close
        m = p == 2
        target[m] = can[m]
        grip[m] = CLOSE
        self._advance(m & (self.timer >= 10 + self.pause))
        self._regrasp_if_missed(obs, (p >= 3) & (p <= 5))
        # 3: lift straight up
        m = p == 3
        target[m] = np.stack([eef[:, 0], eef[:, 1], np.full(self.n, self.CARRY_Z)], 1)[m]
        grip[m] = CLOSE
        self._advance(m & (eef[:, 2] > self.CARRY_Z - 0.03))
        # 4: carry above the target (closed loop on the can's position, not the gripper's)
        m = p == 4
        carry = eef + np.concatenate([goal[:, :2] - can[:, :2], np.zeros((self.n, 1))], 1)
        carry[:, 2] = self.CARRY_Z
        target[m] = carry[m]
        grip[m] = CLOSE
        self._advance(m & (np.linalg.norm(goal[:, :2] - can[:, :2], axis=1) < 0.02))
        # 5: lower into the bin
        m = p == 5
        low = carry.copy()
        low[:, 2] = goal[:, 2] + 0.12
        target[m] = low[m]
        grip[m] = CLOSE
        self._advance(m & (eef[:, 2] < goal[:, 2] + 0.14))
        # 6: release, then 7: retreat upwards (success needs the gripper > 4 cm from the can)
        m = p == 6
        target[m] = eef[m]
        self._advance(m & (self.timer >= 6 + self.pause))
        m = p >= 7
        target[m] = (eef + np.array([0.0, 0.0, 0.1]))[m]
        return target, grip


class SquareExpert(ScriptedExpert):
    """Grasp the square nut by its handle, square it up, carry it over the peg, lower it on, release.

    The handle sits 0.054 m along the nut's x axis; the fingers close across it (along the nut's y axis).
    After the grasp the wrist turns so the nut's yaw is a multiple of 90 degrees, which maximises the
    clearance between the nut's hole and the square peg.
    """

    HANDLE = 0.054
    CARRY_Z = 1.02

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.k_target = np.full(self.n, np.nan)  # nut yaw goal as a multiple of 90 deg, latched after grasp

    def reset(self, i: int, obs: np.ndarray) -> None:
        super().reset(i, obs)
        self.k_target[i] = np.nan

    @staticmethod
    def _choose_k(nut_yaw: np.ndarray, grip_yaw: np.ndarray) -> np.ndarray:
        """Which multiple of 90 deg to square the nut to: never 0 (handle beyond the peg is out of the Panda's
        reach), and the one needing the least wrist rotation from the start pose (joint 7 stops near 166 deg)."""
        offset = wrap(grip_yaw - nut_yaw, 2 * np.pi)
        ks = np.array([1.0, 2.0, -1.0])
        need = np.abs(wrap(ks[None] * np.pi / 2 + offset[:, None], 2 * np.pi))  # gripper yaw it takes
        turn = np.abs(wrap(ks[None] * np.pi / 2 - nut_yaw[:, None], 2 * np.pi))
        return ks[np.argmin(need + 0.1 * turn, axis=1)]

    def _waypoints(self, obs, eef):
        nut = obs[:, 7:10]
        nut_yaw = yaw_of(obs[:, 10:14])
        axis = np.stack([np.cos(nut_yaw), np.sin(nut_yaw), np.zeros(self.n)], 1)
        handle = nut + self.HANDLE * axis + self.offset * np.array([1.0, 1.0, 0.0])
        peg = np.broadcast_to(self.scene["target_pos"], (self.n, 3))
        p = self.phase
        target = eef.copy()
        grip = np.full(self.n, OPEN)
        zeros = np.zeros(self.n)
        # grasp yaw: fingers along the nut's y axis, i.e. gripper yaw = nut yaw modulo pi (smallest turn)
        grasp_yaw = wrap(nut_yaw, np.pi)
        # 0: hover above the handle, turning the wrist
        m = p == 0
        self.yaw_goal[m] = grasp_yaw[m]
        above = handle + np.stack([zeros, zeros, self.hover], 1)
        target[m] = above[m]
        R_cur = quat_to_mat(obs[:, self._eef_q])
        cur_yaw = np.arctan2(R_cur[:, 1, 0], R_cur[:, 0, 0])  # the gripper's x axis = Rz(yaw) @ x
        yaw_err = np.abs(wrap(cur_yaw - self.yaw_goal, 2 * np.pi))
        xy_err = np.linalg.norm(eef[:, :2] - handle[:, :2], axis=1)
        self._advance(m & (xy_err < 0.01) & (np.abs(eef[:, 2] - above[:, 2]) < 0.02) & (yaw_err < 0.05))
        # 1: descend to just above the handle, then 2: onto it once centred (a fast descent drifts sideways)
        m = p == 1
        self.yaw_goal[m] = grasp_yaw[m]
        target[m] = (handle + np.array([0.0, 0.0, 0.03]))[m]
        self._advance(m & (np.abs(eef[:, 2] - handle[:, 2] - 0.03) < 0.01) & (xy_err < 0.005))
        m = p == 2
        self.yaw_goal[m] = grasp_yaw[m]
        target[m] = handle[m]
        self._advance(m & ((eef[:, 2] - handle[:, 2]) < 0.008) | (m & (self.timer > 30)))
        # 3: close
        m = p == 3
        target[m] = handle[m]
        grip[m] = CLOSE
        self._advance(m & (self.timer >= 10 + self.pause))
        self._regrasp_if_missed(obs, p >= 4)
        # 4: lift and square the nut up: turn the wrist until the nut's yaw is the latched multiple of 90 deg
        fresh = (p >= 4) & np.isnan(self.k_target)
        self.k_target[fresh] = self._choose_k(nut_yaw, cur_yaw)[fresh]
        self.k_target[p < 4] = np.nan
        square_err = wrap(nut_yaw - np.nan_to_num(self.k_target) * np.pi / 2, 2 * np.pi)
        held = (p >= 4) & (p <= 6)
        self.yaw_goal[held] = (cur_yaw - square_err)[held]
        m = p == 4
        lift = np.stack([eef[:, 0], eef[:, 1], np.full(self.n, self.CARRY_Z)], 1)
        target[m] = lift[m]
        grip[m] = CLOSE
        self._advance(m & (eef[:, 2] > self.CARRY_Z - 0.03) & (np.abs(square_err) < 0.04))
        # 5: carry the nut's centre over the peg (closed loop on the observed nut position)
        m = p == 5
        carry = eef + np.concatenate([peg[:, :2] - nut[:, :2], np.zeros((self.n, 1))], 1)
        carry[:, 2] = self.CARRY_Z
        target[m] = carry[m]
        grip[m] = CLOSE
        self._advance(m & (np.linalg.norm(peg[:, :2] - nut[:, :2], axis=1) < 0.004))
        # 6: lower the nut onto the peg, keeping it centred
        m = p == 6
        low = carry.copy()
        low[:, 2] = eef[:, 2] - 0.04
        target[m] = low[m]
        grip[m] = CLOSE
        self._advance(m & (nut[:, 2] < 0.84))
        # 7: release, 8: retreat upwards
        m = p == 7
        target[m] = eef[m]
        self._advance(m & (self.timer >= 6 + self.pause))
        m = p >= 8
        target[m] = (eef + np.array([0.0, 0.0, 0.1]))[m]
        return target, grip


EXPERTS: dict[str, type[ScriptedExpert]] = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}


def make_expert(task: str, num_envs: int, seed: int, noise: float = 0.0, scene: dict | None = None):
    """The scripted expert of ``task``; EnvError for tasks without one."""
    task_spec(task)
    if task not in EXPERTS:
        raise EnvError(f"no scripted expert for task {task!r}; available: {', '.join(sorted(EXPERTS))}")
    return EXPERTS[task](task, num_envs, seed, noise, scene)


def collect_demos(
    task: str,
    n: int,
    seed: int,
    noise: float = 0.0,
    *,
    num_workers: int = 2,
    keep_failures: bool = False,
    max_episodes: int | None = None,
    horizon: int | None = None,
    store_model: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[Episode]:
    """Run the scripted expert of ``task`` on a vector env until ``n`` episodes are kept.

    Kept are successful episodes only (like robomimic's human datasets); with ``keep_failures`` exactly the
    episodes seeded ``seed .. seed + n - 1``, successful or not (a success-rate estimate). Episodes
    come back sorted by their episode seed, with states (and the MJCF when ``store_model``) so that they
    can be replayed; rewards are robomimic's sparse 0/1 and dones follow robomimic's done_mode=2. The result
    is a pure function of (task, n, seed, noise, num_workers). EnvError if the expert cannot reach ``n``
    within ``max_episodes`` attempts (default 3n + 10).
    """
    from ogpo.data.demos import Episode
    from ogpo.envs.vector import make_vector_env

    if not isinstance(n, int) or n < 1:
        raise EnvError(f"collect_demos: n must be an integer >= 1, got {n!r}")
    max_episodes = max_episodes or 3 * n + 10
    env = make_vector_env(
        task, num_workers, seed, record_states=True, reward_mode="env", reward_shaping=False, horizon=horizon
    )
    try:
        scene = env.call("scene_info")[0]
        model = env.call("model_xml")[0] if store_model else None
        expert = make_expert(task, num_workers, seed=seed, noise=noise, scene=scene)
        obs = env.reset(seed)
        states = env.last_states
        expert.reset_all(obs)
        buf: list[list[tuple]] = [[] for _ in range(num_workers)]
        kept: list[Episode] = []
        attempts = 0
        while len(kept) < n:
            act = expert.act(obs)
            res = env.step(act)
            for i in range(num_workers):
                buf[i].append((obs[i], act[i], res.reward[i], res.final_obs[i], states[i], res.success[i]))
                if not (res.terminated[i] or res.truncated[i]):
                    continue
                attempts += 1
                o, a, r, no, st, sc = (np.asarray(x) for x in zip(*buf[i], strict=True))
                buf[i] = []
                expert.reset(i, res.obs[i])
                ok = bool(res.success[i])
                ep_seed = int(res.episode_seeds[i])
                # keep_failures: exactly the episodes seeded seed .. seed + n - 1 (an unbiased success estimate)
                if (keep_failures and ep_seed < seed + n) or (ok and not keep_failures):
                    dones = sc.astype(np.uint8)
                    dones[-1] = 1
                    kept.append(
                        Episode(
                            obs=o.astype(np.float32),
                            actions=a.astype(np.float32),
                            rewards=r.astype(np.float32),
                            dones=dones,
                            success=ok,
                            next_obs=no.astype(np.float32),
                            states=st.astype(np.float64),
                            model_file=model,
                            seed=ep_seed,
                        )
                    )
                    if progress is not None:
                        progress(len(kept), n)
            if len(kept) < n and attempts >= max_episodes:
                raise EnvError(
                    f"scripted expert for {task!r} kept {len(kept)} of {n} demos after {attempts} episodes "
                    f"(noise {noise}); lower the noise or raise max_episodes"
                )
            obs, states = res.obs, res.states
    finally:
        env.close()
    kept = sorted(kept, key=lambda e: e.seed)[:n]
    return kept
