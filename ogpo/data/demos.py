"""Demonstration datasets in robomimic's HDF5 layout, and raw robosuite demo files read by state replay.

Why: users arrive with robomimic datasets or with raw files from robosuite's own collection tools, and our
scripted demos must be readable by the same code. Everything downstream (BC, critic fitting) consumes a
``Dataset`` of ``Episode`` objects whose observations are already flat ``[T, obs_dim]`` float32 vectors in
the task's robomimic key order (ogpo.envs.robosuite), so nothing else needs to know about HDF5 keys.

robomimic layout (what ``write_robomimic`` writes and ``read_robomimic`` reads)::

    data/                       attrs: env_args (JSON), total (number of samples)
      demo_<n>/                 attrs: num_samples, success, [model_file], [seed]
        obs/<key>  next_obs/<key>  [T, d_key]   (float32 here; robomimic's own files use float64)
        actions [T, d_a]  rewards [T]  dones [T]  [states [T, d_s]]
    mask/<filter_key>           names of the demos in that subset (bytes), e.g. train / valid

Rewards are stored as given (robomimic's sparse 0/1 for our scripted demos, like robomimic's files); dones
follow robomimic's ``done_mode=2``: 1 where the task succeeded and at the last step.

Raw robosuite files (``DataCollectionWrapper`` + ``gather_demonstrations_as_hdf5``): ``data`` attrs ``env``
and ``env_info``; ``demo_<n>`` with ``states``, ``actions`` and the ``model_file`` attribute; no
observations. robomimic's ``scripts/conversion/convert_robosuite.py`` turns such a file, in place, into a
robomimic file that still has no observations: ``data`` gains ``env_args`` and ``total``, each demo
``num_samples``, and ``mask/train``, ``mask/valid`` appear (``valid`` is empty below 10 demos). Both are
replayed like robomimic's ``dataset_states_to_obs.py``: reload the demo's MJCF, set each state and read the
observation; the last next-observation comes from playing the last action. Success, rewards and dones come
from the replay.

Actions: robosuite stores recorded actions as given (up to about 1.13 from a SpaceMouse) and its controller
clips them to [-1, 1] before use. ``read_robomimic(..., clip=True)`` (what ingest does) clips them the same
way and counts the clipped values; without it, and in ``write_robomimic``, an action outside [-1, 1] is an
error.

Every malformed input raises DemoFormatError naming the file, demo and key, including bytes damaged inside
the HDF5 file (h5py's KeyError/OSError/RuntimeError are caught around every read); nothing is written for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ogpo.envs.robosuite import TaskSpec, task_for_robosuite_env, task_spec
from ogpo.errors import ConfigError, DemoFormatError, EnvError, OGPOError

ACTION_TOL = 1e-3  # actions may exceed [-1, 1] by this much (float noise) before the file is rejected
_DEMO_RE = re.compile(r"^demo_(\d+)$")


@dataclass
class Episode:
    """One demonstration with flat observations in the task's key order (robomimic concatenation)."""

    obs: np.ndarray  # [T, obs_dim] float32
    actions: np.ndarray  # [T, d_a] float32
    rewards: np.ndarray  # [T] float32
    dones: np.ndarray  # [T] uint8
    success: bool
    next_obs: np.ndarray | None = None  # [T, obs_dim] float32
    states: np.ndarray | None = None  # [T, d_s] float64 flattened MuJoCo states
    model_file: str | None = None
    seed: int | None = None
    name: str = ""

    def __len__(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class Dataset:
    """A validated demo dataset: episodes in file order (demo index), its task, env_args and masks."""

    path: str
    task: TaskSpec
    env_args: dict
    episodes: list[Episode]
    masks: dict[str, list[str]] = field(default_factory=dict)
    filter_key: str | None = None
    source_format: str = "robomimic"  # or "robomimic_states" (replayed), "robosuite_raw" (replayed)
    actions_clipped: int = 0  # action values the reader clipped to [-1, 1] (read with clip=True)
    action_abs_max: float = 0.0  # the largest |action| in the file's selected demos, before clipping

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)

    @property
    def obs_dim(self) -> int:
        return self.task.obs_dim

    @property
    def act_dim(self) -> int:
        return self.task.act_dim

    @property
    def lengths(self) -> list[int]:
        return [len(e) for e in self.episodes]

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension min and max over all actions."""
        a = np.concatenate([e.actions for e in self.episodes])
        return a.min(0), a.max(0)

    def content_hash(self) -> str:
        """sha256 over the data (names, arrays, success flags) in a fixed order, independent of HDF5 layout."""
        return content_hash(self.episodes, self.task)


def content_hash(episodes: Sequence[Episode], spec: TaskSpec) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"task": spec.name, "obs_keys": list(spec.obs_keys)}).encode())
    for e in episodes:
        h.update(e.name.encode() + b"\0" + bytes([int(e.success)]))
        for arr in (e.obs, e.next_obs, e.actions, e.rewards, e.dones, e.states):
            if arr is None:
                h.update(b"none")
            else:
                a = np.ascontiguousarray(arr)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


def _demo_sort_key(name: str) -> tuple[int, str]:
    m = _DEMO_RE.match(name)
    return (int(m.group(1)) if m else 1 << 60, name)


# -- validation ---------------------------------------------------------------------------------------------
def validate_episode(ep: Episode, spec: TaskSpec, where: str) -> None:
    """Shapes, lengths, finiteness and the action range of one episode; ``where`` names file and demo."""
    T = ep.actions.shape[0] if ep.actions.ndim >= 1 else 0
    if T == 0:
        raise DemoFormatError(f"{where}: zero-length demo (key 'actions' has no rows)")
    if ep.actions.ndim != 2 or ep.actions.shape[1] != spec.act_dim:
        raise DemoFormatError(
            f"{where}: key 'actions' has shape {list(ep.actions.shape)}, expected [T, {spec.act_dim}] "
            f"for task {spec.name}"
        )
    arrays = {"obs": ep.obs, "actions": ep.actions, "rewards": ep.rewards, "dones": ep.dones}
    if ep.next_obs is not None:
        arrays["next_obs"] = ep.next_obs
    if ep.states is not None:
        arrays["states"] = ep.states
    for key, arr in arrays.items():
        if arr.shape[0] != T:
            raise DemoFormatError(f"{where}: key {key!r} has {arr.shape[0]} rows, 'actions' has {T}")
        if key in ("obs", "next_obs") and arr.shape[1:] != (spec.obs_dim,):
            raise DemoFormatError(f"{where}: key {key!r} has shape {list(arr.shape)}, expected [T, {spec.obs_dim}]")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0].tolist()
            raise DemoFormatError(f"{where}: key {key!r} contains NaN or inf (first at index {bad})")
    worst = float(np.abs(ep.actions).max())
    if worst > 1.0 + ACTION_TOL:
        t, d = np.unravel_index(int(np.abs(ep.actions).argmax()), ep.actions.shape)
        raise DemoFormatError(
            f"{where}: key 'actions' value {float(ep.actions[t, d]):.4g} at step {t}, dim {d} is outside "
            f"[-1, 1] (tolerance {ACTION_TOL}); robosuite's controller clips actions to [-1, 1], and so does "
            "ingest (read_robomimic(..., clip=True))"
        )


def validate(path: str | os.PathLike, task: str | None = None, filter_key: str | None = None) -> Dataset:
    """Read and fully check a dataset file; returns it. Raises DemoFormatError on any defect."""
    return read_robomimic(path, task=task, filter_key=filter_key)


# -- reading ------------------------------------------------------------------------------------------------
# What h5py raises on a damaged file depends on which bytes are damaged: KeyError ("Unable to synchronously open
# object (message not aligned)"), RuntimeError ("Link iteration failed ..."), OSError ("Can't synchronously read
# data ..."), UnicodeDecodeError (a ValueError) for a damaged name. OGPOError (ConfigError is a ValueError too)
# passes through untouched.
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)
_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats


@contextmanager
def _readable(where: str) -> Iterator[None]:
    """Turn h5py's errors on a corrupt or truncated file into one DemoFormatError naming ``where``."""
    try:
        yield
    except OGPOError:
        raise
    except _H5_ERRORS as e:
        reason = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise DemoFormatError(f"{where} is unreadable, the HDF5 file is corrupt or truncated ({reason})") from None


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DemoFormatError(f"{path}: no such dataset file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DemoFormatError(f"{path}: not a readable HDF5 file (truncated or another format): {e}") from None


def _read_array(grp: h5py.Group, key: str, where: str, numeric: bool = True, what: str | None = None) -> np.ndarray:
    """``grp[key]`` as an array; with ``numeric`` its dtype must be bool, integer or float (not strings).

    ``what`` names the array in messages (default ``key '<key>'``).
    """
    what = what or f"key {key!r}"
    with _readable(f"{where}: {what}"):
        if key not in grp:
            raise DemoFormatError(f"{where}: missing {what}")
        node = grp[key]
        if not isinstance(node, h5py.Dataset):
            kind = "a group" if isinstance(node, h5py.Group) else f"an HDF5 {type(node).__name__}"
            raise DemoFormatError(f"{where}: {what} is {kind}, expected an array")
        a = np.asarray(node[()])
    if numeric and a.dtype.kind not in _NUMERIC_KINDS:
        kind = "strings" if a.dtype.kind in "SUO" else f"dtype {a.dtype}"
        raise DemoFormatError(
            f"{where}: {what} holds {kind} (dtype {a.dtype.str}, shape {list(a.shape)}), expected numbers"
        )
    return a


def _rows(a: np.ndarray, what: str, where: str) -> np.ndarray:
    """``a`` as [T, d]: a [T] array becomes [T, 1], trailing dims are flattened (zero-length T included)."""
    if a.ndim == 0:
        raise DemoFormatError(f"{where}: {what} is a scalar, expected one row per step")
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))


def _flat_obs(grp: h5py.Group, group: str, spec: TaskSpec, where: str) -> np.ndarray:
    with _readable(f"{where}: group {group!r}"):
        if group not in grp:
            raise DemoFormatError(f"{where}: missing group {group!r}")
        sub = grp[group]
        if not isinstance(sub, h5py.Group):
            raise DemoFormatError(f"{where}: {group!r} is an array, expected a group of obs keys")
        present = set(sub)
    parts = []
    for key, dim in zip(spec.obs_keys, spec.obs_key_dims, strict=True):
        if key not in present:
            raise DemoFormatError(
                f"{where}: missing obs key '{group}/{key}' required by task {spec.name} "
                f"(needs {', '.join(spec.obs_keys)})"
            )
        what = f"obs key '{group}/{key}'"
        a = _rows(_read_array(sub, key, where, what=what), what, where)
        if a.shape[1] != dim:
            raise DemoFormatError(f"{where}: obs key '{group}/{key}' has dim {a.shape[1]}, expected {dim}")
        parts.append(a.astype(np.float32))
    lens = {p.shape[0] for p in parts}
    if len(lens) != 1:
        raise DemoFormatError(f"{where}: obs keys under {group!r} have different lengths {sorted(lens)}")
    return np.concatenate(parts, axis=1)


def _env_args(data: h5py.Group, path: Path) -> dict | None:
    raw = data.attrs.get("env_args")
    if raw is None:
        return None
    try:
        args = json.loads(raw if isinstance(raw, str) else raw.decode())
    except (ValueError, AttributeError) as e:
        raise DemoFormatError(f"{path}: attribute data.env_args is not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise DemoFormatError(f"{path}: attribute data.env_args is a JSON {type(args).__name__}, expected an object")
    return args


def _resolve_task(task: str | None, env_name: str | None, path: Path) -> TaskSpec:
    if task is not None:
        spec = task_spec(task)
        if env_name is not None and env_name != spec.robosuite_env:
            raise DemoFormatError(
                f"{path}: dataset env {env_name!r} does not match task {spec.name!r} ({spec.robosuite_env})"
            )
        return spec
    if env_name is None:
        raise DemoFormatError(f"{path}: no env_args/env attribute in 'data'; pass task= to read it")
    try:
        return task_for_robosuite_env(env_name)
    except EnvError as e:
        raise DemoFormatError(f"{path}: {e}") from None


def _masks(f: h5py.File, path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with _readable(f"{path}: group 'mask'"):
        keys = list(f["mask"]) if "mask" in f else []
    for k in keys:
        names = _read_array(f["mask"], k, str(path), numeric=False, what=f"mask/{k}")
        try:
            out[k] = [n.decode() if isinstance(n, bytes) else str(n) for n in names.reshape(-1)]
        except UnicodeDecodeError:
            raise DemoFormatError(f"{path}: mask/{k} holds a demo name that is not UTF-8 text") from None
    return out


def _select(data: h5py.Group, path: Path, masks: dict[str, list[str]], filter_key: str | None) -> list[str]:
    with _readable(f"{path}: group 'data'"):
        demos = sorted((k for k in data if isinstance(data[k], h5py.Group)), key=_demo_sort_key)
    if not demos:
        raise DemoFormatError(f"{path}: group 'data' holds no demos")
    if filter_key is None:
        return demos
    if filter_key not in masks:
        known = ", ".join(sorted(masks)) or "none"
        raise DemoFormatError(f"{path}: filter key {filter_key!r} not found under 'mask/' (available: {known})")
    if not masks[filter_key]:
        sizes = ", ".join(f"{k} ({len(v)} demos)" for k, v in sorted(masks.items()))
        raise DemoFormatError(
            f"filter mask {filter_key!r} in {path} selects no demos: mask/{filter_key} is empty "
            f"(the file's masks: {sizes}; {len(demos)} demos in all)"
        )
    missing = [n for n in masks[filter_key] if n not in demos]
    if missing:
        raise DemoFormatError(f"{path}: mask/{filter_key} names demos that do not exist: {missing[:5]}")
    return sorted(set(masks[filter_key]), key=_demo_sort_key)


def _str_attr(g: h5py.Group, key: str, where: str) -> str | None:
    with _readable(f"{where}: attribute {key!r}"):
        v = g.attrs.get(key)
    if v is None:
        return None
    if (isinstance(v, np.ndarray) and v.shape == ()) or isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise DemoFormatError(f"{where}: attribute {key!r} is not UTF-8 text") from None
    if not isinstance(v, str):
        raise DemoFormatError(f"{where}: attribute {key!r} is a {type(v).__name__}, expected a string")
    return v


def _int_attr(g: h5py.Group, key: str, where: str) -> int | None:
    with _readable(f"{where}: attribute {key!r}"):
        v = g.attrs.get(key)
    if v is None:
        return None
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise DemoFormatError(f"{where}: attribute {key!r} is {v!r}, expected an integer")
    return int(v)


def clip_actions(actions: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip to [-1, 1] as robosuite's controllers do before use; returns the actions and how many values moved.

    Demos recorded through ``DataCollectionWrapper`` store the actions as given (a SpaceMouse gives up to
    about 1.13); the controller clips them, so the clipped actions are what the robot executed. NaN and inf
    stay as they are (validation rejects them).
    """
    finite = np.isfinite(actions)
    outside = finite & (np.abs(np.where(finite, actions, 0.0)) > 1.0)
    n = int(np.count_nonzero(outside))
    if not n:
        return actions, 0
    return np.where(outside, np.clip(actions, -1.0, 1.0), actions).astype(actions.dtype, copy=False), n


@dataclass
class _Reading:
    """Running totals of one read: clipped action values and the largest |action| seen before clipping."""

    clip: bool
    clipped: int = 0
    max_abs: float = 0.0

    def actions(self, actions: np.ndarray) -> np.ndarray:
        """The file's actions as float32, clipped when asked (in the file's precision, before the cast)."""
        actions = actions.astype(np.float64)
        finite = actions[np.isfinite(actions)]
        if finite.size:
            self.max_abs = max(self.max_abs, float(np.abs(finite).max()))
        if self.clip:
            actions, n = clip_actions(actions)
            self.clipped += n
        with np.errstate(over="ignore"):  # beyond float32: inf, rejected by validation
            return actions.astype(np.float32)


def read_robomimic(
    path: str | os.PathLike,
    task: str | None = None,
    filter_key: str | None = None,
    *,
    clip: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Read a demo file into a validated Dataset: robomimic with observations, or states replayed to them.

    Three layouts are read: robomimic datasets with ``obs``; robomimic files with ``states`` but no ``obs``
    (what robomimic's ``convert_robosuite.py`` leaves before ``dataset_states_to_obs.py``) and raw robosuite
    files (``gather_demonstrations_as_hdf5``), both replayed. ``task`` defaults to the one named by the file's
    env; ``filter_key`` restricts to ``mask/<filter_key>``; ``limit`` keeps the first demos of the selection
    (ConfigError if it holds fewer). ``clip`` clips actions to [-1, 1] as robosuite's controller does (the
    count is ``Dataset.actions_clipped``); without it an action outside [-1, 1] is an error.
    """
    path = Path(path)
    reading = _Reading(clip)
    with _open(path) as f:
        with _readable(f"{path}: group 'data'"):
            if "data" not in f or not isinstance(f["data"], h5py.Group):
                raise DemoFormatError(f"{path}: missing group 'data' (not a robomimic or robosuite demo file)")
            data = f["data"]
            args = _env_args(data, path)
        env_name = args.get("env_name") if args else _str_attr(data, "env", f"{path}: group 'data'")
        masks = _masks(f, path)
        names = _select(data, path, masks, filter_key)
        if limit is not None:
            if limit > len(names):
                subset = f" in mask {filter_key!r}" if filter_key else ""
                raise ConfigError(f"asked for {limit} demos but {path} has {len(names)}{subset}")
            names = names[:limit]
        first = f"{path}: demo {names[0]!r}"
        with _readable(first):
            has_obs, has_states = "obs" in data[names[0]], "states" in data[names[0]]
        if not has_obs and not has_states:
            raise DemoFormatError(f"{first}: missing group 'obs' (and no key 'states' to replay observations from)")
        spec = _resolve_task(task, env_name, path)
        if has_obs:
            episodes = [_read_obs_demo(data, name, spec, f"{path}: demo {name!r}", reading) for name in names]
        else:
            recorded = [_read_state_demo(data, name, spec, f"{path}: demo {name!r}", reading) for name in names]
            env_info = _str_attr(data, "env_info", f"{path}: group 'data'")
    if has_obs:
        fmt = "robomimic"
    else:
        episodes = _replay(path, spec, recorded)
        fmt = "robosuite_raw" if args is None else "robomimic_states"
        if args is None:
            from ogpo.envs.robosuite import env_args

            args = env_args(spec)
            args["env_info"] = env_info
    ds = Dataset(str(path), spec, args or {}, episodes, masks, filter_key, fmt)
    ds.actions_clipped, ds.action_abs_max = reading.clipped, reading.max_abs
    return ds


def _read_obs_demo(data: h5py.Group, name: str, spec: TaskSpec, where: str, reading: _Reading) -> Episode:
    with _readable(where):
        g = data[name]
        has_next, has_states = "next_obs" in g, "states" in g
        success = bool(g.attrs["success"]) if "success" in g.attrs else None
    ep = Episode(
        obs=_flat_obs(g, "obs", spec, where),
        next_obs=_flat_obs(g, "next_obs", spec, where) if has_next else None,
        actions=reading.actions(_read_array(g, "actions", where)),
        rewards=_read_array(g, "rewards", where).astype(np.float32).reshape(-1),
        dones=_read_array(g, "dones", where).astype(np.uint8).reshape(-1),
        success=False,
        states=_read_array(g, "states", where).astype(np.float64) if has_states else None,
        model_file=_str_attr(g, "model_file", where),
        seed=_int_attr(g, "seed", where),
        name=name,
    )
    validate_episode(ep, spec, where)
    # robomimic files carry no success flag: their sparse reward is 1 where the task is done
    ep.success = success if success is not None else bool(ep.rewards.max() > 0)
    return ep


def _read_state_demo(
    data: h5py.Group, name: str, spec: TaskSpec, where: str, reading: _Reading
) -> tuple[str, np.ndarray, np.ndarray, str]:
    """A demo to replay: its states, actions (checked, clipped when asked) and MJCF."""
    with _readable(where):
        g = data[name]
    actions = _read_array(g, "actions", where)
    states = _read_array(g, "states", where)
    xml = _str_attr(g, "model_file", where)
    T = actions.shape[0] if actions.ndim >= 1 else 0
    if T == 0:
        raise DemoFormatError(f"{where}: zero-length demo (key 'actions' has no rows)")
    if states.ndim != 2 or states.shape[0] != T:
        raise DemoFormatError(f"{where}: key 'states' has shape {list(states.shape)}, expected [{T}, d_s]")
    if xml is None:
        raise DemoFormatError(f"{where}: missing attribute 'model_file' (the demo's MJCF)")
    actions = reading.actions(actions)
    states = states.astype(np.float64)
    zeros = np.zeros(T, np.float32)
    obs = np.zeros((T, spec.obs_dim), np.float32)
    dummy = Episode(obs, actions, zeros, zeros.astype(np.uint8), True, states=states)
    validate_episode(dummy, spec, where)  # shapes, NaN/inf in actions and states, the action range
    return name, states, actions, xml


def _replay(path: Path, spec: TaskSpec, recorded: list[tuple[str, np.ndarray, np.ndarray, str]]) -> list[Episode]:
    """Replay states to observations, like robomimic's states-to-obs: reload the demo's MJCF, set each state."""
    from ogpo.envs.robosuite import RobosuiteEnv

    env = RobosuiteEnv(spec.name, reward_mode="env", terminate_on_success=False, horizon=1 << 30)
    episodes = []
    try:
        for name, states, actions, xml in recorded:
            where = f"{path}: demo {name!r}"
            try:
                env.reset_to_model(xml)
            except Exception as e:
                raise DemoFormatError(f"{where}: attribute 'model_file' does not load in this robosuite: {e}") from e
            n_state = env.get_state().shape[0]
            if states.shape[1] != n_state:
                raise DemoFormatError(f"{where}: key 'states' has width {states.shape[1]}, the model needs {n_state}")
            episodes.append(_replay_one(env, spec, name, states, actions, xml, where))
    finally:
        env.close()
    return episodes


def _replay_one(env, spec: TaskSpec, name: str, states: np.ndarray, actions: np.ndarray, xml: str, where: str):
    T = len(actions)
    t = 0
    try:
        obs = []
        for t in range(T):
            obs.append(env.set_state(states[t]))
        obs = np.stack(obs)
        succ = np.zeros(T, dtype=bool)
        for t in range(1, T):
            env.set_state(states[t])
            succ[t - 1] = env.check_success()
        t = T - 1
        env.set_state(states[-1])
        last_obs, _, _, _, info = env.step(actions[-1])
    except OGPOError:
        raise
    except Exception as e:  # MuJoCo or robosuite failing on a state the file holds
        raise DemoFormatError(f"{where}: key 'states' does not replay at step {t}: {type(e).__name__}: {e}") from e
    succ[-1] = info["success"]
    next_obs = np.concatenate([obs[1:], last_obs[None]], axis=0)
    dones = succ.copy()
    dones[-1] = True
    ep = Episode(
        obs=obs,
        next_obs=next_obs,
        actions=actions,
        rewards=succ.astype(np.float32),
        dones=dones.astype(np.uint8),
        success=bool(succ.any()),
        states=states,
        model_file=xml,
        name=name,
    )
    validate_episode(ep, spec, where)  # a replay that produced NaN observations is caught here
    return ep


# -- writing ------------------------------------------------------------------------------------------------
def _split(flat: np.ndarray, spec: TaskSpec) -> dict[str, np.ndarray]:
    return {k: flat[:, sl] for k, sl in spec.obs_slices().items()}


def write_robomimic(
    path: str | os.PathLike,
    episodes: Sequence[Episode],
    env_args: dict,
    task: str | None = None,
    masks: dict[str, Sequence[str]] | None = None,
) -> Path:
    """Validate ``episodes`` and write them atomically (temp file + rename) in robomimic layout.

    Episodes without a name become ``demo_<i>``; ``masks`` maps a filter key to demo names.
    """
    path = Path(path)
    spec = _resolve_task(task, env_args.get("env_name"), path)
    if not episodes:
        raise DemoFormatError(f"{path}: refusing to write a dataset with no episodes")
    names = [e.name or f"demo_{i}" for i, e in enumerate(episodes)]
    if len(set(names)) != len(names):
        raise DemoFormatError(f"{path}: duplicate demo names")
    for name, ep in zip(names, episodes, strict=True):
        validate_episode(ep, spec, f"{path}: demo {name!r}")
    for key, members in (masks or {}).items():
        unknown = sorted(set(members) - set(names))
        if unknown:
            raise DemoFormatError(f"{path}: mask {key!r} names unknown demos {unknown[:5]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["total"] = int(sum(len(e) for e in episodes))
            for name, ep in zip(names, episodes, strict=True):
                g = data.create_group(name)
                g.attrs["num_samples"] = len(ep)
                g.attrs["success"] = bool(ep.success)
                if ep.model_file is not None:
                    g.attrs["model_file"] = ep.model_file
                if ep.seed is not None:
                    g.attrs["seed"] = int(ep.seed)
                for k, v in _split(np.asarray(ep.obs, np.float32), spec).items():
                    g.create_dataset(f"obs/{k}", data=v)
                if ep.next_obs is not None:
                    for k, v in _split(np.asarray(ep.next_obs, np.float32), spec).items():
                        g.create_dataset(f"next_obs/{k}", data=v)
                g.create_dataset("actions", data=np.asarray(ep.actions, np.float32))
                g.create_dataset("rewards", data=np.asarray(ep.rewards, np.float32))
                g.create_dataset("dones", data=np.asarray(ep.dones, np.uint8))
                if ep.states is not None:
                    g.create_dataset("states", data=np.asarray(ep.states, np.float64))
            for key, members in (masks or {}).items():
                f.create_dataset(f"mask/{key}", data=np.array([m.encode() for m in members], dtype="S"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def train_valid_masks(names: Sequence[str], valid_fraction: float = 0.1) -> dict[str, list[str]]:
    """robomimic's train/valid filter keys: the last ``valid_fraction`` of demos (at least one) is valid."""
    n_valid = max(1, int(round(len(names) * valid_fraction))) if len(names) > 1 else 0
    return {"train": list(names[: len(names) - n_valid]), "valid": list(names[len(names) - n_valid :])}
