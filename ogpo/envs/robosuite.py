"""robosuite manipulation tasks with robomimic's low-dim observations and the OGPO reward convention.

Why this module exists: every consumer (BC pretraining, OGPO fine-tuning, evaluation, demo replay) must see
the *same* observation vector for a task, the same reward and the same episode end. This module owns those
conventions; the vector env (ogpo.envs.vector) and the demo reader (ogpo.data.demos) only call into it.

Conventions (spec section 5):
- Observations are the robomimic low-dim keys concatenated in robomimic's (sorted) key order, as float32:
  ``object`` (robosuite's ``object-state``), then ``robot0_eef_pos``, ``robot0_eef_quat``,
  ``robot0_gripper_qpos`` (and the ``robot1_*`` keys for the bimanual Transport). Sizes: Lift 19,
  Can 23, Square 23, Tool Hang 53, Transport 59. Not normalized.
- Controller: robosuite's default Panda composite controller, whose arm part is OSC_POSE (delta pose in the
  base frame, inputs in [-1, 1]) with the GRIP gripper, as in robomimic's v1.5 datasets.
- Reward ("ogpo" mode): ``r = r_rm - 1 + bonus * success`` with robomimic's sparse ``r_rm = success`` and
  ``bonus = 5``: -1 per step, +5 on the success step; the episode terminates on success and is truncated at
  the task horizon. ``reward_mode="env"`` returns robosuite's own reward instead (sparse 0/1, or dense with
  ``reward_shaping=True``) and still reports success in ``info``.
- Horizons (max primitive steps): Square 400, Transport 800, Tool Hang 1000 (spec 5). Can 400 as in robomimic's
  rollouts. Lift 200: robomimic uses 400 for Lift, but its proficient demos finish in about 50 steps and the
  scripted expert here in about 30, so 200 leaves ample slack while halving the cost of a failed evaluation
  episode on a 2-core CPU (the main Lift consumer). Override with ``horizon=``.
- Resets are soft (``hard_reset=False``: 1-4 ms instead of about 200 ms) and each reset can be seeded: the
  robosuite env's random generator (shared by its placement samplers and robot init noise) is re-seeded in
  place, so ``reset(seed)`` gives the same initial state every time. What robosuite randomizes once per
  model (Lift's cube size) is fixed by ``model_seed`` (default 0, shared by all workers).
- Observations after a state jump (``reset``, ``set_state``) are recomputed from a consistent simulator
  state (``observe()``); ``step()`` returns robosuite's own post-step observation, whose positions lag the
  state by one physics substep (differences below 2e-3); that is what a policy sees online.

Adding a task is one ``register_task(TaskSpec(...))`` entry.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ogpo.errors import EnvError, ShapeError

RewardMode = Literal["ogpo", "env"]
SUCCESS_BONUS = 5.0
DEFAULT_RENDER_SIZE = 128
CONTROL_FREQ = 20


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to build a task's env and interpret its observation vector.

    obs_keys/obs_key_dims give the concatenation order of the flat observation (robomimic key names; the key
    ``object`` is robosuite's ``object-state``). env_kwargs are extra ``robosuite.make`` arguments.
    """

    name: str
    robosuite_env: str
    robots: tuple[str, ...]
    obs_keys: tuple[str, ...]
    obs_key_dims: tuple[int, ...]
    act_dim: int
    horizon: int
    camera: str = "agentview"
    env_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def obs_dim(self) -> int:
        return int(sum(self.obs_key_dims))

    def obs_slices(self) -> dict[str, slice]:
        """Where each robomimic key lives in the flat observation vector."""
        out, start = {}, 0
        for key, dim in zip(self.obs_keys, self.obs_key_dims, strict=True):
            out[key] = slice(start, start + dim)
            start += dim
        return out


def _arm_keys(robot: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    p = f"robot{robot}_"
    return (p + "eef_pos", p + "eef_quat", p + "gripper_qpos"), (3, 4, 2)


def _single_arm(name: str, env: str, object_dim: int, horizon: int, **kw: Any) -> TaskSpec:
    keys, dims = _arm_keys(0)
    return TaskSpec(name, env, ("Panda",), ("object", *keys), (object_dim, *dims), 7, horizon, env_kwargs=kw)


def _two_arm(name: str, env: str, object_dim: int, horizon: int, **kw: Any) -> TaskSpec:
    k0, d0 = _arm_keys(0)
    k1, d1 = _arm_keys(1)
    return TaskSpec(
        name, env, ("Panda", "Panda"), ("object", *k0, *k1), (object_dim, *d0, *d1), 14, horizon, env_kwargs=kw
    )


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (one entry per task); returns the spec."""
    TASKS[spec.name] = spec
    return spec


register_task(_single_arm("lift", "Lift", 10, 200))
register_task(_single_arm("can", "PickPlaceCan", 14, 400))
register_task(_single_arm("square", "NutAssemblySquare", 14, 400))
register_task(_single_arm("tool_hang", "ToolHang", 44, 1000))
register_task(_two_arm("transport", "TwoArmTransport", 41, 800, env_configuration="opposed"))


def task_spec(task: str) -> TaskSpec:
    """The registered spec of ``task``; EnvError listing the known tasks otherwise."""
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise EnvError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def task_for_robosuite_env(env_name: str) -> TaskSpec:
    """Reverse lookup (robosuite class name -> spec), used to interpret demo files."""
    for spec in TASKS.values():
        if spec.robosuite_env == env_name:
            return spec
    known = ", ".join(sorted(s.robosuite_env for s in TASKS.values()))
    raise EnvError(f"robosuite env {env_name!r} has no registered task; known: {known}")


def _import_robosuite():
    """Import robosuite lazily (about 1 s) and silence its INFO/WARNING chatter (kept: errors)."""
    logging.getLogger("robosuite_logs").addFilter(lambda r: r.levelno >= logging.ERROR)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import robosuite

    return robosuite


def controller_config(spec: TaskSpec) -> dict:
    """robosuite's default Panda composite controller (OSC_POSE arm + GRIP gripper)."""
    _import_robosuite()
    from robosuite.controllers import load_composite_controller_config

    return load_composite_controller_config(robot=spec.robots[0])


def make_raw_env(
    spec: TaskSpec,
    *,
    seed: int | None = None,
    render: bool = False,
    reward_shaping: bool = False,
):
    """Build the underlying robosuite env: low-dim obs, soft resets, no robosuite-side episode end."""
    suite = _import_robosuite()
    return suite.make(
        spec.robosuite_env,
        robots=list(spec.robots) if len(spec.robots) > 1 else spec.robots[0],
        controller_configs=controller_config(spec),
        has_renderer=False,
        has_offscreen_renderer=render,
        use_camera_obs=False,
        use_object_obs=True,
        reward_shaping=reward_shaping,
        reward_scale=1.0,
        control_freq=CONTROL_FREQ,
        ignore_done=True,  # the episode end (horizon, success) is ours
        hard_reset=False,
        seed=seed,
        **spec.env_kwargs,
    )


def env_args(spec: TaskSpec, horizon: int | None = None) -> dict:
    """robomimic's ``env_args`` attribute for datasets of this task (env_name, type 1 = robosuite, kwargs)."""
    return {
        "env_name": spec.robosuite_env,
        "type": 1,
        "env_version": _robosuite_version(),
        "env_kwargs": {
            "robots": list(spec.robots),
            "controller_configs": controller_config(spec),
            "has_renderer": False,
            "has_offscreen_renderer": False,
            "use_camera_obs": False,
            "use_object_obs": True,
            "reward_shaping": False,
            "reward_scale": 1.0,
            "control_freq": CONTROL_FREQ,
            "ignore_done": True,
            **spec.env_kwargs,
        },
        "ogpo": {"task": spec.name, "horizon": horizon or spec.horizon, "obs_keys": list(spec.obs_keys)},
    }


def _robosuite_version() -> str:
    return str(_import_robosuite().__version__)


def flatten_obs(spec: TaskSpec, obs: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate a robosuite observation dict in the task's robomimic key order (float32)."""
    parts = []
    for key, dim in zip(spec.obs_keys, spec.obs_key_dims, strict=True):
        v = obs["object-state" if key == "object" else key]
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.shape[0] != dim:
            raise EnvError(f"task {spec.name}: obs key {key!r} has dim {v.shape[0]}, expected {dim}")
        parts.append(v)
    return np.concatenate(parts)


def ogpo_reward(success: bool | np.ndarray, bonus: float = SUCCESS_BONUS) -> np.ndarray | float:
    """Spec 5: ``r_rm - 1 + bonus * success`` with sparse ``r_rm = success`` (-1 per step, +5 at success)."""
    s = np.asarray(success, dtype=np.float32)
    r = s - 1.0 + bonus * s
    return float(r) if r.ndim == 0 else r


# Rendering: the bodies a rollout video frames per robosuite env (with the robots' bases and end-effectors);
# Can and Square include their goal (Can's target-bin marker, Square's peg), Transport all bins and objects.
FOCUS_BODIES: dict[str, tuple[str, ...]] = {
    "Lift": ("cube_main",),
    "PickPlaceCan": ("Can_main", "VisualCan_main"),
    "NutAssemblySquare": ("SquareNut_main", "peg1"),
    "ToolHang": ("stand_root", "frame_root", "tool_root"),
    "TwoArmTransport": (
        "payload_root",
        "trash_main",
        "transport_start_bin_root",
        "transport_target_bin_root",
        "transport_trash_bin_root",
    ),
}
_BOX_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)


def _focus_body_ids(env: RobosuiteEnv) -> np.ndarray:
    """Ids of the task's focus bodies and all their descendants (cached per model); empty if none is known."""
    model, wanted = env.raw.sim.model, FOCUS_BODIES.get(env.spec.robosuite_env, ())
    cached = getattr(env, "_focus_ids", None)
    if cached is not None and cached[0] is model and cached[1] == wanted:
        return cached[2]
    names = [model.body_id2name(i) for i in range(model.nbody)]
    ids = {names.index(n) for n in wanted if n in names}
    parent = model._model.body_parentid
    for i in range(1, model.nbody):  # parents come before children in MuJoCo's body order
        if parent[i] in ids:
            ids.add(i)
    out = np.array(sorted(ids), dtype=np.int64)
    env._focus_ids = (model, wanted, out)
    return out


class RobosuiteEnv:
    """One robosuite task, gym-like: ``reset(seed) -> obs``; ``step(a) -> obs, r, terminated, truncated, info``.

    ``info["success"]`` is the task's ``_check_success()`` after the step. With ``render=True`` the env keeps
    an offscreen renderer and ``render()`` returns an ``[S, S, 3]`` uint8 frame of ``camera``.

    Seeds: ``seed`` is used by the first ``reset()`` without an explicit seed; ``reset(seed)`` makes the
    episode's initial state a pure function of (task, model_seed, seed). ``model_seed`` fixes what robosuite
    randomizes once per model (e.g. Lift's cube size); it is shared by all envs so that which worker runs
    an episode never matters.
    """

    def __init__(
        self,
        task: str,
        *,
        seed: int | None = None,
        model_seed: int = 0,
        horizon: int | None = None,
        reward_mode: RewardMode = "ogpo",
        success_bonus: float = SUCCESS_BONUS,
        terminate_on_success: bool = True,
        reward_shaping: bool = False,
        render: bool = False,
        render_size: int = DEFAULT_RENDER_SIZE,
        camera: str | None = None,
    ) -> None:
        self.spec = task_spec(task)
        if reward_mode not in ("ogpo", "env"):
            raise EnvError(f"reward_mode must be 'ogpo' or 'env', got {reward_mode!r}")
        self.obs_dim = self.spec.obs_dim
        self.act_dim = self.spec.act_dim
        self.horizon = int(horizon or self.spec.horizon)
        self.reward_mode = reward_mode
        self.success_bonus = float(success_bonus)
        self.terminate_on_success = terminate_on_success
        self.render_enabled = render
        self.render_size = int(render_size)
        self.camera = camera or self.spec.camera
        self.seed = seed
        self.model_seed = int(model_seed)
        self._first_reset = True
        self._env = make_raw_env(self.spec, seed=self.model_seed, render=render, reward_shaping=reward_shaping)
        self._t = 0
        self._done = True

    @property
    def raw(self):
        """The underlying robosuite env (for scripted experts, DataCollectionWrapper, replay)."""
        return self._env

    @property
    def t(self) -> int:
        return self._t

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; with a seed the initial state is a pure function of (task, seed)."""
        if seed is None and self._first_reset and self.seed is not None:
            seed = self.seed
        self._first_reset = False
        if seed is not None:
            self.seed = int(seed)
            # re-seed in place: placement samplers and robots hold references to this very generator
            self._env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        self._env.reset()
        self._t = 0
        self._done = False
        return self.observe()

    def _check_action(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.act_dim,):
            raise ShapeError(f"task {self.spec.name}: action must have shape [{self.act_dim}], got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise ShapeError(f"task {self.spec.name}: action contains NaN or inf: {a.tolist()}")
        return np.clip(a, -1.0, 1.0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._done:
            raise EnvError(f"task {self.spec.name}: step() after the episode ended; call reset() first")
        a = self._check_action(action)
        obs, env_reward, _, _ = self._env.step(a)
        self._t += 1
        success = bool(self._env._check_success())
        if self.reward_mode == "ogpo":
            reward = float(success) - 1.0 + self.success_bonus * float(success)
        else:
            reward = float(env_reward)
        terminated = success and self.terminate_on_success
        truncated = (self._t >= self.horizon) and not terminated
        self._done = terminated or truncated
        info = {"success": success, "env_reward": float(env_reward), "t": self._t}
        return flatten_obs(self.spec, obs), reward, terminated, truncated, info

    def check_success(self) -> bool:
        return bool(self._env._check_success())

    def observe(self) -> np.ndarray:
        """The current flat observation, recomputed from the simulator state.

        Two forced updates: robosuite computes relative features (object-to-eef pose) from its observation
        cache *before* refreshing the object pose in the same pass, so one update after a jump in state
        (reset, set_state) leaves them stale or zero. ``sim.forward()`` first, so positions match the state
        (after ``mj_step`` they lag it by one physics substep, which is what ``step()`` reports).
        """
        self._env.sim.forward()
        self._env._get_observations(force_update=True)
        return flatten_obs(self.spec, self._env._get_observations(force_update=True))

    def get_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel, ...), as stored in a dataset's ``states``."""
        return np.asarray(self._env.sim.get_state().flatten(), dtype=np.float64)

    def set_state(self, state: np.ndarray) -> np.ndarray:
        """Put the simulator in ``state`` (flattened) and return the observation there."""
        state = np.asarray(state, dtype=np.float64)
        n = self._env.sim.get_state().flatten().shape[0]
        if state.shape != (n,):
            raise EnvError(f"task {self.spec.name}: state must have shape [{n}], got {list(state.shape)}")
        self._env.sim.set_state_from_flattened(state)
        self._env.sim.forward()
        self._done = False
        return self.observe()

    def reset_to_model(self, model_xml: str) -> np.ndarray:
        """Reload the simulator from a demo's MJCF (asset paths fixed for this install); returns the obs."""
        self._env.reset()
        self._env.reset_from_xml_string(self._env.edit_model_xml(model_xml))
        self._env.sim.reset()
        self._t = 0
        self._done = False
        return self.observe()

    def model_xml(self) -> str:
        return str(self._env.sim.model.get_xml())

    def scene_info(self) -> dict[str, np.ndarray]:
        """Fixed scene geometry the scripted experts need (goal positions); constant across soft resets."""
        env = self._env
        info: dict[str, np.ndarray] = {}
        name = self.spec.robosuite_env
        if name == "PickPlaceCan":
            info["target_pos"] = np.asarray(env.target_bin_placements[env.object_to_id["can"]], dtype=np.float64)
        elif name == "NutAssemblySquare":
            info["target_pos"] = np.asarray(env.sim.data.body_xpos[env.peg1_body_id], dtype=np.float64)
        return info

    def render(self, size: int | None = None) -> np.ndarray:
        """An ``[S, S, 3]`` uint8 frame from ``camera`` (offscreen; needs ``render=True``); S is ``render_size``
        unless ``size`` is given (the video recorder renders larger, then crops and resizes)."""
        if not self.render_enabled:
            raise EnvError(f"task {self.spec.name}: render() needs RobosuiteEnv(..., render=True)")
        s = int(size or self.render_size)
        img = self._env.sim.render(s, s, camera_name=self.camera)
        return np.ascontiguousarray(img[::-1], dtype=np.uint8)  # OpenGL rows are bottom-up

    def focus_points(self) -> np.ndarray:
        """World points ``[N, 3]`` a rollout video should keep in view: each robot's base and end-effector
        site(s), and the 8 corners of every geom's bounding box in the task's object bodies
        (``FOCUS_BODIES``). Empty when the task has no known object (the video then keeps the full frame)."""
        sim = self._env.sim
        bodies = _focus_body_ids(self)
        if len(bodies) == 0:
            return np.zeros((0, 3))
        pts = []
        for robot in self._env.robots:
            pts.append(sim.data.body_xpos[sim.model.body_name2id(robot.robot_model.root_body)])
            pts.extend(sim.data.site_xpos[robot.eef_site_id[arm]] for arm in robot.arms)
        model, data = sim.model._model, sim.data._data
        geoms = np.flatnonzero(np.isin(model.geom_bodyid, bodies))
        aabb = model.geom_aabb[geoms]  # [G, 6]: centre and half-sizes in the geom frame
        local = aabb[:, None, :3] + aabb[:, None, 3:] * _BOX_CORNERS[None]  # [G, 8, 3]
        rot = data.geom_xmat[geoms].reshape(-1, 3, 3)
        world = np.einsum("gij,gkj->gki", rot, local) + data.geom_xpos[geoms][:, None]
        return np.concatenate([np.asarray(pts, dtype=np.float64).reshape(-1, 3), world.reshape(-1, 3)])

    def project_points(self, points: np.ndarray, size: int | None = None) -> np.ndarray:
        """Pixel coordinates ``[N, 2]`` as (column, row) floats of world points in a ``size`` frame of
        ``camera`` (rows top-down, as ``render()`` returns them); NaN for points behind the camera.

        The matrix is robosuite's ``camera_utils.get_camera_transform_matrix``; unlike its
        ``project_points_from_world_to_camera`` nothing is rounded or clipped, so callers see points that
        fall outside the frame."""
        from robosuite.utils.camera_utils import get_camera_transform_matrix

        s = int(size or self.render_size)
        m = get_camera_transform_matrix(self._env.sim, self.camera, s, s)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        h = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ m.T
        return h[:, :2] / np.where(h[:, 2:3] > 1e-9, h[:, 2:3], np.nan)

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()
