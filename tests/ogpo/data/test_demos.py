"""Demo I/O: lossless robomimic round trip, raw robosuite demo replay, and a clear error for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ogpo.data.demos import Episode, read_robomimic, train_valid_masks, validate, write_robomimic
from ogpo.envs.robosuite import env_args, task_spec
from ogpo.errors import ConfigError, DemoFormatError, EnvError

LIFT = task_spec("lift")


def _episodes(n: int = 3, seed: int = 0, T: int = 6) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = T + i
        out.append(
            Episode(
                obs=rng.normal(size=(t, 19)).astype(np.float32),
                next_obs=rng.normal(size=(t, 19)).astype(np.float32),
                actions=rng.uniform(-1, 1, size=(t, 7)).astype(np.float32),
                rewards=np.r_[np.zeros(t - 1), 1.0].astype(np.float32),
                dones=np.r_[np.zeros(t - 1), 1].astype(np.uint8),
                success=True,
                states=rng.normal(size=(t, 32)),
                model_file="<mujoco/>",
                seed=100 + i,
            )
        )
    return out


def _args() -> dict:
    return {"env_name": "Lift", "type": 1, "env_kwargs": {}}


def test_roundtrip_is_lossless(tmp_path):
    eps = _episodes()
    names = [f"demo_{i}" for i in range(len(eps))]
    path = write_robomimic(tmp_path / "d.hdf5", eps, _args(), masks=train_valid_masks(names, 0.34))
    ds = read_robomimic(path)
    assert ds.task.name == "lift" and len(ds) == 3 and ds.lengths == [6, 7, 8]
    assert ds.masks == {"train": ["demo_0", "demo_1"], "valid": ["demo_2"]} and ds.success_rate == 1.0
    for a, b in zip(eps, ds.episodes, strict=True):
        for key in ("obs", "next_obs", "actions", "rewards", "dones", "states"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        assert (b.model_file, b.seed, b.success) == (a.model_file, a.seed, True)
    # robomimic layout on disk: per-key obs in the task's order
    with h5py.File(path) as f:
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Lift"
        assert set(f["data/demo_0/obs"]) == set(LIFT.obs_keys)
        np.testing.assert_array_equal(f["data/demo_1/obs/robot0_eef_quat"][()], eps[1].obs[:, 13:17])
    sub = read_robomimic(path, filter_key="valid")
    assert [e.name for e in sub] == ["demo_2"]
    assert ds.content_hash() == read_robomimic(path).content_hash() != sub.content_hash()
    lo, hi = ds.action_bounds()
    assert lo.shape == (7,) and (lo >= -1).all() and (hi <= 1).all()


def test_robomimic_file_without_success_attr_infers_it_from_rewards(tmp_path):
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(2), _args())
    with h5py.File(path, "a") as f:
        del f["data/demo_0"].attrs["success"]
        del f["data/demo_1"].attrs["success"]
        f["data/demo_1/rewards"][...] = 0.0
    ds = read_robomimic(path)
    assert [e.success for e in ds] == [True, False]


# -- bad input: every case names the file, the demo and the key, and nothing is written -----------------------
def _bad(tmp_path: Path, mutate) -> Path:
    path = write_robomimic(tmp_path / "bad.hdf5", _episodes(2), _args(), masks={"train": ["demo_0"]})
    with h5py.File(path, "a") as f:
        mutate(f)
    return path


def _set(key, value):
    def mutate(f):
        del f[key]
        f[key] = value

    return mutate


def _zero_rows(f, demo):
    """Every array of ``demo`` (obs keys included) with zero rows: what once failed with 'cannot reshape'."""
    names = []
    f[f"data/{demo}"].visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
    for name in names:
        node = f[f"data/{demo}/{name}"]
        _set(node.name, np.zeros((0, *node.shape[1:]), node.dtype))(f)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda f: f.move("data", "other"), r"missing group 'data'"),
        (lambda f: f.__delitem__("data/demo_1/obs/object"), r"demo 'demo_1': missing obs key 'obs/object'"),
        (_set("data/demo_0/actions", np.zeros((6, 6), np.float32)), r"demo 'demo_0': key 'actions' has shape \[6, 6\]"),
        (_set("data/demo_0/actions", np.full((6, 7), 1.5, np.float32)), r"demo 'demo_0': key 'actions' value 1\.5"),
        (_set("data/demo_1/obs/robot0_eef_pos", np.full((7, 3), np.nan)), r"demo 'demo_1': key 'obs' contains NaN"),
        (_set("data/demo_0/rewards", np.array([np.inf] * 6)), r"demo 'demo_0': key 'rewards' contains NaN or inf"),
        (
            lambda f: [
                _set(f"data/demo_0/{k}", np.zeros((0,) + f[f"data/demo_0/{k}"].shape[1:]))(f)
                for k in ("actions", "rewards", "dones")
            ],  # fmt: skip
            r"demo 'demo_0': zero-length demo",
        ),
        (_set("data/demo_0/dones", np.zeros(5)), r"demo 'demo_0': key 'dones' has 5 rows"),
        (_set("data/demo_0/obs/object", np.zeros((6, 9))), r"obs key 'obs/object' has dim 9, expected 10"),
        (lambda f: f["data"].attrs.__setitem__("env_args", "{not json"), r"env_args is not valid JSON"),
        (lambda f: [f["data"].__delitem__(k) for k in list(f["data"])], r"group 'data' holds no demos"),
        (
            _set("data/demo_0/actions", np.full((6, 7), b"0.25")),
            r"demo 'demo_0': key 'actions' holds strings \(dtype \|S4, shape \[6, 7\]\), expected numbers",
        ),
        (_set("data/demo_1/rewards", np.array(["x"] * 7, dtype=object)), r"demo 'demo_1': key 'rewards' holds strings"),
        (
            _set("data/demo_0/obs/object", np.zeros((6, 10), np.complex64)),
            r"obs key 'obs/object' holds dtype complex64",
        ),
        (_set("data/demo_0/obs/object", 3.0), r"demo 'demo_0': obs key 'obs/object' is a scalar"),
        (
            lambda f: [f["data/demo_0"].__delitem__("actions"), f["data/demo_0"].create_group("actions")],
            r"demo 'demo_0': key 'actions' is a group, expected an array",
        ),
        (lambda f: _zero_rows(f, "demo_1"), r"demo 'demo_1': zero-length demo \(key 'actions' has no rows\)"),
        (lambda f: f["data/demo_0"].attrs.__setitem__("seed", "abc"), r"demo 'demo_0': attribute 'seed' is 'abc'"),
        (lambda f: f["data/demo_0"].attrs.__setitem__("model_file", 7), r"attribute 'model_file' is a int"),
        (lambda f: f["data"].attrs.__setitem__("env_args", "[1, 2]"), r"env_args is a JSON list, expected an object"),
        (_set("mask/train", np.array([b"\xff\xfe"])), r"mask/train holds a demo name that is not UTF-8"),
    ],
)
def test_malformed_dataset_gives_clear_error(tmp_path, mutate, pattern):
    path = _bad(tmp_path, mutate)
    with pytest.raises(DemoFormatError, match=pattern) as err:
        validate(path)
    assert str(path) in str(err.value)


def test_unknown_filter_key_task_mismatch_and_unknown_task(tmp_path):
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(2), _args(), masks={"train": ["demo_0"]})
    with pytest.raises(DemoFormatError, match=r"filter key 'valid' not found under 'mask/' \(available: train\)"):
        read_robomimic(path, filter_key="valid")
    with pytest.raises(DemoFormatError, match="env 'Lift' does not match task 'square'"):
        read_robomimic(path, task="square")
    with pytest.raises(EnvError, match="unknown task 'nope'"):
        read_robomimic(path, task="nope")


def test_empty_filter_mask_is_a_clear_error(tmp_path):
    """robomimic's 90/10 split writes an empty mask/valid below 10 demos; selecting it once crashed."""
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(2), _args(), masks={"train": ["demo_0", "demo_1"]})
    with h5py.File(path, "a") as f:
        f["mask/valid"] = np.array([], dtype="S")  # what robomimic's create_hdf5_filter_key writes for no demos
    assert read_robomimic(path).masks == {"train": ["demo_0", "demo_1"], "valid": []}
    with pytest.raises(DemoFormatError) as err:
        read_robomimic(path, filter_key="valid")
    assert str(err.value) == (
        f"filter mask 'valid' in {path} selects no demos: mask/valid is empty "
        "(the file's masks: train (2 demos), valid (0 demos); 2 demos in all)"
    )


def test_out_of_range_actions_are_clipped_on_request_and_counted(tmp_path):
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(2), _args())
    recorded = np.tile(np.array([1.13, -1.04, 0.5, 1.0, -1.0, 0.0, 1.0005]), (6, 1))  # float64, as robosuite stores
    with h5py.File(path, "a") as f:
        _set("data/demo_0/actions", recorded)(f)
    with pytest.raises(DemoFormatError, match=r"demo 'demo_0': key 'actions' value 1\.13 at step 0, dim 0 .*clip=True"):
        read_robomimic(path)
    ds = read_robomimic(path, clip=True)
    np.testing.assert_array_equal(ds.episodes[0].actions, np.clip(recorded, -1, 1).astype(np.float32))
    assert ds.actions_clipped == 3 * 6 and ds.action_abs_max == 1.13  # 1.13, -1.04 and 1.0005; 1.0 stays
    np.testing.assert_array_equal(ds.episodes[1].actions, _episodes(2)[1].actions)  # in range: untouched
    with h5py.File(path, "a") as f:  # clipping never hides a non-finite action
        f["data/demo_0/actions"][2, 4] = -np.inf
    with pytest.raises(
        DemoFormatError, match=r"demo 'demo_0': key 'actions' contains NaN or inf \(first at index \[2, 4\]\)"
    ):
        read_robomimic(path, clip=True)
    clean = read_robomimic(write_robomimic(tmp_path / "c.hdf5", _episodes(2), _args()), clip=True)
    assert clean.actions_clipped == 0 and 0 < clean.action_abs_max <= 1


def test_limit_reads_the_first_demos_of_the_selection(tmp_path):
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(3), _args(), masks={"train": ["demo_2", "demo_0"]})
    assert [e.name for e in read_robomimic(path, limit=2)] == ["demo_0", "demo_1"]
    assert [e.name for e in read_robomimic(path, filter_key="train", limit=1)] == ["demo_0"]
    with pytest.raises(ConfigError, match=rf"asked for 3 demos but {path} has 2 in mask 'train'"):
        read_robomimic(path, filter_key="train", limit=3)


def test_damaged_object_header_names_file_demo_and_key(tmp_path):
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(2), _args())
    with h5py.File(path) as f:
        addr = h5py.h5o.get_info(f["data/demo_1/obs/robot0_eef_quat"].id).addr
    data = bytearray(path.read_bytes())
    data[addr + 18 : addr + 20] = (
        b"\xa5\x5a"  # h5py: KeyError 'Unable to synchronously open object (message not aligned)'
    )
    path.write_bytes(bytes(data))
    with pytest.raises(DemoFormatError) as err:
        read_robomimic(path)
    assert str(err.value) == (
        f"{path}: demo 'demo_1': obs key 'obs/robot0_eef_quat' is unreadable, the HDF5 file is corrupt or truncated "
        "(Unable to synchronously open object (message not aligned))"
    )


def test_damaged_bytes_anywhere_give_a_demo_format_error(tmp_path):
    """h5py raises KeyError, OSError, RuntimeError or UnicodeDecodeError depending on which bytes are damaged."""
    good = write_robomimic(tmp_path / "good.hdf5", _episodes(2), _args(), masks={"train": ["demo_0"]})
    data = good.read_bytes()
    bad = tmp_path / "bad.hdf5"
    failures = 0
    for offset in range(0, len(data), 199):
        bad.write_bytes(data[:offset] + b"\xa5\x5a\xa5\x5a" + data[offset + 4 :])
        try:
            read_robomimic(bad)
        except DemoFormatError as e:
            assert str(bad) in str(e)
            failures += 1
    assert failures > 10  # the sweep does hit metadata


def test_truncated_and_non_hdf5_files(tmp_path):
    path = write_robomimic(tmp_path / "d.hdf5", _episodes(3, T=50), _args())
    cut = tmp_path / "cut.hdf5"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DemoFormatError, match="cut.hdf5"):
        read_robomimic(cut)
    txt = tmp_path / "notes.hdf5"
    txt.write_text("hello")
    with pytest.raises(DemoFormatError, match="notes.hdf5: not a readable HDF5 file"):
        read_robomimic(txt)
    with pytest.raises(DemoFormatError, match="no such dataset file"):
        read_robomimic(tmp_path / "missing.hdf5")


def test_write_rejects_bad_episodes_and_leaves_nothing(tmp_path):
    eps = _episodes(2)
    eps[1].actions[2, 3] = -1.2
    out = tmp_path / "out.hdf5"
    with pytest.raises(DemoFormatError, match=r"demo 'demo_1': key 'actions' value -1\.2 at step 2, dim 3"):
        write_robomimic(out, eps, _args())
    with pytest.raises(DemoFormatError, match="mask 'train' names unknown demos"):
        write_robomimic(out, _episodes(1), _args(), masks={"train": ["demo_7"]})
    assert list(tmp_path.iterdir()) == []


# -- raw robosuite demo files (DataCollectionWrapper + gather_demonstrations_as_hdf5) --------------------------
@pytest.mark.slow
def test_raw_robosuite_demo_replay_matches_env_observations(tmp_path):
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper

    from ogpo.envs.experts import make_expert
    from ogpo.envs.robosuite import RobosuiteEnv, flatten_obs

    env = RobosuiteEnv("lift")
    expert = make_expert("lift", 1, seed=0)
    raw = DataCollectionWrapper(env.raw, str(tmp_path / "raw"))
    recorded = []
    for seed in (0, 1):
        env.reset(seed)  # seeds the placement; the wrapper's reset below replays the same sampler state
        env.raw.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        obs = flatten_obs(LIFT, raw.reset())
        expert.reset(0, obs)
        ep = []
        for _ in range(60):
            ep.append(obs)
            obs_d, _, _, _ = raw.step(expert.act(obs[None])[0])
            obs = flatten_obs(LIFT, obs_d)
            if env.raw._check_success():
                break
        recorded.append(np.stack(ep))
    raw.close()
    out = tmp_path / "out"
    out.mkdir()
    gather_demonstrations_as_hdf5(str(tmp_path / "raw"), str(out), json.dumps({"robots": ["Panda"]}))

    ds = read_robomimic(out / "demo.hdf5", task="lift")
    assert ds.source_format == "robosuite_raw" and len(ds) == 2 and all(e.success for e in ds)
    by_len = {len(r): r for r in recorded}
    check = RobosuiteEnv("lift")
    check.reset(0)
    for ep in ds:
        rec = by_len[len(ep)]
        # the replayed observations are the env's observations at those states (the demo's MJCF reloads
        # with float round-off, hence 1e-6) ...
        np.testing.assert_allclose(ep.obs, np.stack([check.set_state(s) for s in ep.states]), atol=1e-6)
        # ... and match what the env reported while recording (step obs lag the state by one physics substep)
        np.testing.assert_allclose(ep.obs, rec, atol=5e-3)
        assert ep.next_obs.shape == ep.obs.shape and ep.rewards[-1] == 1.0 and ep.dones[-1] == 1
    check.close()
    env.close()
    # a raw file with a missing model_file attribute is rejected, naming demo and key
    bad = tmp_path / "bad.hdf5"
    shutil.copy(out / "demo.hdf5", bad)
    with h5py.File(bad, "a") as f:
        del f["data/demo_1"].attrs["model_file"]
    with pytest.raises(DemoFormatError, match="demo 'demo_1': missing attribute 'model_file'"):
        read_robomimic(bad)


def test_env_args_name_the_task():
    args = env_args(task_spec("square"))
    assert args["env_name"] == "NutAssemblySquare" and args["ogpo"]["task"] == "square"
    assert args["env_kwargs"]["controller_configs"]["body_parts"]["right"]["type"] == "OSC_POSE"
