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
observations. They are replayed like robomimic's states-to-obs conversion: reload the demo's MJCF, set each
state and read the observation; the last next-observation comes from playing the last action.

Every malformed input raises DemoFormatError naming the file, demo and key; nothing is written for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ogpo.envs.robosuite import TaskSpec, task_for_robosuite_env, task_spec
from ogpo.errors import DemoFormatError, EnvError

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
    source_format: str = "robomimic"  # or "robosuite_raw"

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
            f"[-1, 1] (tolerance {ACTION_TOL})"
        )


def validate(path: str | os.PathLike, task: str | None = None, filter_key: str | None = None) -> Dataset:
    """Read and fully check a dataset file; returns it. Raises DemoFormatError on any defect."""
    return read_robomimic(path, task=task, filter_key=filter_key)


# -- reading ------------------------------------------------------------------------------------------------
def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise DemoFormatError(f"{path}: no such dataset file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DemoFormatError(f"{path}: not a readable HDF5 file (truncated or another format): {e}") from None


def _read_array(grp: h5py.Group, key: str, where: str) -> np.ndarray:
    if key not in grp:
        raise DemoFormatError(f"{where}: missing key {key!r}")
    try:
        return np.asarray(grp[key][()])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DemoFormatError(f"{where}: key {key!r} is unreadable (truncated file?): {e}") from None


def _flat_obs(grp: h5py.Group, group: str, spec: TaskSpec, where: str) -> np.ndarray:
    if group not in grp:
        raise DemoFormatError(f"{where}: missing group {group!r}")
    parts = []
    for key, dim in zip(spec.obs_keys, spec.obs_key_dims, strict=True):
        if key not in grp[group]:
            raise DemoFormatError(
                f"{where}: missing obs key '{group}/{key}' required by task {spec.name} "
                f"(needs {', '.join(spec.obs_keys)})"
            )
        a = _read_array(grp[group], key, f"{where}/{group}")
        a = a.reshape(a.shape[0], -1) if a.ndim >= 1 else a.reshape(0, 0)
        if a.shape[1] != dim:
            raise DemoFormatError(f"{where}: obs key '{group}/{key}' has dim {a.shape[1]}, expected {dim}")
        parts.append(a.astype(np.float32))
    lens = {p.shape[0] for p in parts}
    if len(lens) != 1:
        raise DemoFormatError(f"{where}: obs keys under {group!r} have different lengths {sorted(lens)}")
    return np.concatenate(parts, axis=1)


def _env_args(f: h5py.File, path: Path) -> dict | None:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        return None
    try:
        return json.loads(raw if isinstance(raw, str) else raw.decode())
    except (ValueError, AttributeError) as e:
        raise DemoFormatError(f"{path}: attribute data.env_args is not valid JSON: {e}") from None


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
    if "mask" in f:
        for k in f["mask"]:
            names = _read_array(f["mask"], k, f"{path}:mask")
            out[k] = [n.decode() if isinstance(n, bytes) else str(n) for n in names.reshape(-1)]
    return out


def _select(f: h5py.File, path: Path, masks: dict[str, list[str]], filter_key: str | None) -> list[str]:
    demos = sorted((k for k in f["data"] if isinstance(f["data"][k], h5py.Group)), key=_demo_sort_key)
    if not demos:
        raise DemoFormatError(f"{path}: group 'data' holds no demos")
    if filter_key is None:
        return demos
    if filter_key not in masks:
        known = ", ".join(sorted(masks)) or "none"
        raise DemoFormatError(f"{path}: filter key {filter_key!r} not found under 'mask/' (available: {known})")
    missing = [n for n in masks[filter_key] if n not in f["data"]]
    if missing:
        raise DemoFormatError(f"{path}: mask/{filter_key} names demos that do not exist: {missing[:5]}")
    return sorted(masks[filter_key], key=_demo_sort_key)


def read_robomimic(path: str | os.PathLike, task: str | None = None, filter_key: str | None = None) -> Dataset:
    """Read a robomimic dataset or a raw robosuite demo file (replayed) into a validated Dataset.

    ``task`` defaults to the one named by the file's env; ``filter_key`` restricts to ``mask/<filter_key>``.
    """
    path = Path(path)
    with _open(path) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DemoFormatError(f"{path}: missing group 'data' (not a robomimic or robosuite demo file)")
        args = _env_args(f, path)
        masks = _masks(f, path)
        names = _select(f, path, masks, filter_key)
        first = f["data"][names[0]]
        if args is None and "obs" not in first and "env" in f["data"].attrs:
            return _read_raw(f, path, task, names, masks, filter_key)
        spec = _resolve_task(task, args.get("env_name") if args else None, path)
        episodes = []
        for name in names:
            g = f["data"][name]
            where = f"{path}: demo {name!r}"
            ep = Episode(
                obs=_flat_obs(g, "obs", spec, where),
                next_obs=_flat_obs(g, "next_obs", spec, where) if "next_obs" in g else None,
                actions=_read_array(g, "actions", where).astype(np.float32),
                rewards=_read_array(g, "rewards", where).astype(np.float32).reshape(-1),
                dones=_read_array(g, "dones", where).astype(np.uint8).reshape(-1),
                success=False,
                states=_read_array(g, "states", where).astype(np.float64) if "states" in g else None,
                model_file=_str_attr(g, "model_file"),
                seed=int(g.attrs["seed"]) if "seed" in g.attrs else None,
                name=name,
            )
            validate_episode(ep, spec, where)
            # robomimic files carry no success flag: their sparse reward is 1 where the task is done
            ep.success = bool(g.attrs["success"]) if "success" in g.attrs else bool(ep.rewards.max() > 0)
            episodes.append(ep)
    return Dataset(str(path), spec, args or {}, episodes, masks, filter_key, "robomimic")


def _str_attr(g: h5py.Group, key: str) -> str | None:
    v = g.attrs.get(key)
    if v is None:
        return None
    return v if isinstance(v, str) else v.decode()


def _read_raw(
    f: h5py.File, path: Path, task: str | None, names: list[str], masks: dict, filter_key: str | None
) -> Dataset:
    """Replay a raw robosuite demo file's states to get the observations (robomimic's states-to-obs)."""
    from ogpo.envs.robosuite import RobosuiteEnv, env_args

    env_name = _str_attr(f["data"], "env")
    spec = _resolve_task(task, env_name, path)
    raw = []
    for name in names:
        g = f["data"][name]
        where = f"{path}: demo {name!r}"
        states = _read_array(g, "states", where).astype(np.float64)
        actions = _read_array(g, "actions", where).astype(np.float32)
        xml = _str_attr(g, "model_file")
        if xml is None:
            raise DemoFormatError(f"{where}: missing attribute 'model_file' (the demo's MJCF)")
        if states.ndim != 2 or states.shape[0] != actions.shape[0]:
            raise DemoFormatError(
                f"{where}: key 'states' has shape {list(states.shape)}, expected [{actions.shape[0]}, d_s]"
            )
        dummy = Episode(np.zeros((len(actions), spec.obs_dim), np.float32), actions, np.zeros(len(actions)),
                        np.zeros(len(actions), np.uint8), True)  # fmt: skip
        validate_episode(dummy, spec, where)
        raw.append((name, states, actions, xml))
    env = RobosuiteEnv(spec.name, reward_mode="env", terminate_on_success=False, horizon=1 << 30)
    episodes = []
    try:
        for name, states, actions, xml in raw:
            where = f"{path}: demo {name!r}"
            T = len(actions)
            try:
                env.reset_to_model(xml)
            except Exception as e:
                raise DemoFormatError(f"{where}: attribute 'model_file' does not load in this robosuite: {e}") from e
            n_state = env.get_state().shape[0]
            if states.shape[1] != n_state:
                raise DemoFormatError(f"{where}: key 'states' has width {states.shape[1]}, the model needs {n_state}")
            obs = np.stack([env.set_state(s) for s in states])
            succ = np.zeros(T, dtype=bool)
            for t in range(1, T):
                env.set_state(states[t])
                succ[t - 1] = env.check_success()
            env.set_state(states[-1])
            last_obs, _, _, _, info = env.step(actions[-1])
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
            validate_episode(ep, spec, where)
            episodes.append(ep)
    finally:
        env.close()
    args = env_args(spec)
    args["env_info"] = _str_attr(f["data"], "env_info")
    return Dataset(str(path), spec, args, episodes, masks, filter_key, "robosuite_raw")


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
