"""The ingest stage on what robosuite and robomimic really write, and on bad demo files.

Inputs are made here with the real tools' layouts:
- raw robosuite files recorded with robosuite's ``DataCollectionWrapper`` and gathered with the
  ``gather_demonstrations_as_hdf5`` function of its ``scripts/collect_human_demonstrations.py`` (a plain
  import: that script imports its device drivers only under ``__main__``). Saturated commands are recorded
  as +-1.13, as a SpaceMouse gives them; robosuite's controller clips them to +-1, so the episodes still
  succeed and robosuite saves them;
- robomimic files as its ``scripts/conversion/convert_robosuite.py`` leaves them (written here with h5py: the
  raw file plus ``env_args``, ``total``, ``num_samples`` and the ``train``/``valid`` masks of its 90/10 split,
  ``valid`` empty below 10 demos), which have states but no observations.

A failed run exits 1 with one line on stderr, no traceback, and leaves the previous outputs byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from ogpo.data.demos import Episode, write_robomimic

ROOT = Path(__file__).resolve().parents[2]
OVERSHOOT = 1.13  # the largest recorded action in a real SpaceMouse demo file
OUTPUTS = ("data/demos.hdf5", "data/summary.json", "metrics/ingest.json")


# -- inputs made with robosuite's own tools and in robomimic's layout ----------------------------------------
def record_raw_robosuite(directory: Path, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """Record short scripted Lift episodes through DataCollectionWrapper and gather them like robosuite does."""
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper

    from ogpo.envs.experts import make_expert
    from ogpo.envs.robosuite import RobosuiteEnv, flatten_obs, task_spec

    lift = task_spec("lift")
    env = RobosuiteEnv("lift")
    expert = make_expert("lift", 1, seed=0)
    recorder = DataCollectionWrapper(env.raw, str(directory / "episodes"))
    for seed in seeds:
        env.raw.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        obs = flatten_obs(lift, recorder.reset())
        expert.reset(0, obs)
        for _ in range(80):
            action = expert.act(obs[None])[0]
            action = np.where(np.abs(action) >= 1.0, OVERSHOOT * action, action)  # saturated: recorded as 1.13
            obs = flatten_obs(lift, recorder.step(action)[0])
            if env.raw._check_success():
                break
    recorder.close()
    out = directory / "gathered"
    out.mkdir()
    gather_demonstrations_as_hdf5(str(directory / "episodes"), str(out), json.dumps({"robots": ["Panda"]}))
    return out / "demo.hdf5"


def convert_like_robomimic(raw: Path, dst: Path, n_demos: int | None = None) -> Path:
    """What robomimic's convert_robosuite.py does to a raw file, in robomimic's layout; demos repeat to n_demos."""
    shutil.copy(raw, dst)
    with h5py.File(dst, "a") as f:
        data = f["data"]
        recorded = sorted(data, key=lambda k: int(k[5:]))
        for i in range(len(recorded), n_demos or 0):
            data.copy(data[recorded[i % len(recorded)]], f"demo_{i + 1}")
        env_meta = {
            "type": 1,  # EnvType.ROBOSUITE_TYPE
            "env_name": data.attrs["env"],
            "env_version": data.attrs["repository_version"],
            "env_kwargs": json.loads(data.attrs["env_info"]),
        }
        data.attrs["env_args"] = json.dumps(env_meta, indent=4)
        total = 0
        for ep in data:
            data[ep].attrs["num_samples"] = data[ep]["actions"].shape[0]
            total += data[ep]["actions"].shape[0]
        data.attrs["total"] = total
        demos = sorted(data)
        n_valid = int(0.1 * len(demos))  # split_train_val_from_hdf5(val_ratio=0.1)
        f["mask/train"] = np.array(demos[n_valid:], dtype="S")  # create_hdf5_filter_key
        f["mask/valid"] = np.array(demos[:n_valid], dtype="S")
    return dst


def robomimic_reads(path: Path, filter_key: str | None = None) -> dict:
    """The reads robomimic's own readers make (robomimic 0.3.0, utils/file_utils.py and utils/dataset.py).

    ``get_env_metadata_from_dataset``, ``get_shape_metadata_from_dataset`` (first demo's actions and obs keys)
    and ``SequenceDataset.load_demo_info`` + its in-memory load (mask names, demo order by index,
    ``num_samples``, obs/next_obs/actions/rewards/dones per demo). robomimic itself is not installable here.
    """
    with h5py.File(path, "r") as f:
        env_meta = json.loads(f["data"].attrs["env_args"])
        assert {"env_name", "type", "env_kwargs"} <= set(env_meta) and isinstance(env_meta["env_kwargs"], dict)
        demo = f["data/{}".format(list(f["data"].keys())[0])]
        shape_meta = {
            "ac_dim": demo["actions"].shape[1],
            "all_shapes": {k: demo[f"obs/{k}"].shape[1:] for k in sorted(demo["obs"])},
        }
        if filter_key is not None:
            demos = [elem.decode("utf-8") for elem in np.array(f[f"mask/{filter_key}"][:])]
        else:
            demos = list(f["data"].keys())
        demos = [demos[i] for i in np.argsort([int(elem[5:]) for elem in demos])]
        lengths = {}
        for ep in demos:
            n = int(f[f"data/{ep}"].attrs["num_samples"])
            for k in shape_meta["all_shapes"]:
                assert f[f"data/{ep}/obs/{k}"].shape[0] == n and f[f"data/{ep}/next_obs/{k}"].shape[0] == n
            for k in ("actions", "rewards", "dones"):
                assert f[f"data/{ep}/{k}"].shape[0] == n
            lengths[ep] = n
    return {**shape_meta, "env_name": env_meta["env_name"], "lengths": lengths}


LIFT_SHAPES = {"object": (10,), "robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,)}


def raw_arrays(path: Path, key: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {ep: f[f"data/{ep}/{key}"][()] for ep in f["data"]}


# -- running the stage ----------------------------------------------------------------------------------------
def workspace(root: Path, source: Path, filter_key: str | None = None, prior: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    params = {"source": str(source), "task": "lift", "count": None, "seed": 0, "noise": 0.0, "filter_key": filter_key}
    (root / "params.yaml").write_text(yaml.safe_dump({"ingest": params}))
    if prior:  # outputs of an earlier run, which a failed run must leave alone
        eps = [_episode(6, seed=0), _episode(7, seed=1)]
        write_robomimic(root / OUTPUTS[0], eps, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
        (root / OUTPUTS[1]).write_text(json.dumps({"episodes": 2, "content_sha256": "prior"}, indent=2) + "\n")
        (root / OUTPUTS[2]).parent.mkdir(parents=True, exist_ok=True)
        (root / OUTPUTS[2]).write_text('{"episodes": 2}\n')
    return root


def snapshot(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*")) if p.is_file()}


def run_cli(ws: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "stages.ingest"], cwd=ws, env=env, capture_output=True, text=True, timeout=300
    )


def run_in_process(ws: Path, monkeypatch, capsys) -> tuple[int, str]:
    """The stage's CLI entry point in this process (no interpreter start, robosuite already imported)."""
    from stages.common import stage_main
    from stages.ingest import run

    monkeypatch.chdir(ws)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        stage_main(run, name="stages.ingest")
    return info.value.code, capsys.readouterr().err


def _episode(T: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        obs=rng.normal(size=(T, 19)).astype(np.float32),
        next_obs=rng.normal(size=(T, 19)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(T, 7)).astype(np.float32),
        rewards=np.r_[np.zeros(T - 1), 1.0].astype(np.float32),
        dones=np.r_[np.zeros(T - 1), 1].astype(np.uint8),
        success=True,
        states=rng.normal(size=(T, 32)),
    )


# -- fixtures: one recording for the module -------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_file(tmp_path_factory) -> Path:
    path = record_raw_robosuite(tmp_path_factory.mktemp("robosuite"))
    actions = raw_arrays(path, "actions")
    assert len(actions) == 2, "both recorded episodes must succeed (robosuite saves only successful ones)"
    assert max(np.abs(a).max() for a in actions.values()) == pytest.approx(OVERSHOOT)
    return path


@pytest.fixture(scope="module")
def raw_ingested(raw_file, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    ws = workspace(tmp_path_factory.mktemp("ws_raw"), raw_file)
    return ws, run_cli(ws)


# -- what the tools write is accepted ----------------------------------------------------------------------
@pytest.mark.slow
def test_raw_robosuite_file_with_out_of_range_actions_is_clipped_and_replayed(raw_file, raw_ingested):
    ws, out = raw_ingested
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    summary = json.loads((ws / "data/summary.json").read_text())
    recorded = raw_arrays(raw_file, "actions")
    outside = sum(int(np.count_nonzero(np.abs(a) > 1.0)) for a in recorded.values())
    assert outside > 0
    assert summary["actions_clipped"] == outside
    assert summary["actions_abs_max_source"] == pytest.approx(OVERSHOOT)
    assert (summary["source_format"], summary["episodes"], summary["success_rate"]) == ("robosuite_raw", 2, 1.0)
    assert -1.0 <= min(summary["action_min"]) and max(summary["action_max"]) <= 1.0
    assert f"clipped {outside} action values to [-1, 1]" in out.stderr  # logged too
    ingested = raw_arrays(ws / "data/demos.hdf5", "actions")
    for name, a in recorded.items():  # clipped exactly as the controller clips, nothing else changed
        np.testing.assert_array_equal(ingested[name], np.clip(a, -1.0, 1.0).astype(np.float32))
    states = raw_arrays(ws / "data/demos.hdf5", "states")
    for name, s in raw_arrays(raw_file, "states").items():
        np.testing.assert_array_equal(states[name], s)
    meta = robomimic_reads(ws / "data/demos.hdf5")
    assert (meta["ac_dim"], meta["all_shapes"], meta["env_name"]) == (7, LIFT_SHAPES, "Lift")
    assert sorted(meta["lengths"].values()) == sorted(len(a) for a in recorded.values())
    assert robomimic_reads(ws / "data/demos.hdf5", "train")["lengths"]


@pytest.mark.slow
def test_convert_robosuite_file_is_replayed_like_a_raw_file(raw_file, raw_ingested, tmp_path, monkeypatch, capsys):
    src = convert_like_robomimic(raw_file, tmp_path / "converted.hdf5", n_demos=8)
    with h5py.File(src, "r") as f:  # what convert_robosuite.py leaves for 8 demos
        assert "obs" not in f["data/demo_1"] and f["mask/valid"].shape == (0,) and len(f["mask/train"]) == 8
    ws = workspace(tmp_path / "ws", src)
    code, err = run_in_process(ws, monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((ws / "data/summary.json").read_text())
    assert (summary["source_format"], summary["episodes"], summary["success_rate"]) == ("robomimic_states", 8, 1.0)
    assert summary["masks"] == {"train": 8}  # the empty valid mask is dropped, not written
    per_demo = {k: int(np.count_nonzero(np.abs(a) > 1.0)) for k, a in raw_arrays(src, "actions").items()}
    assert summary["actions_clipped"] == sum(per_demo.values()) > 0
    meta = robomimic_reads(ws / "data/demos.hdf5", "train")
    assert (meta["ac_dim"], meta["all_shapes"], len(meta["lengths"])) == (7, LIFT_SHAPES, 8)
    # the replayed observations are those of the raw file's replay: same states, same model
    raw_ws, raw_out = raw_ingested
    assert raw_out.returncode == 0, raw_out.stderr
    with h5py.File(ws / "data/demos.hdf5") as conv, h5py.File(raw_ws / "data/demos.hdf5") as raw:
        for i in range(1, 9):
            same = f"demo_{(i - 1) % 2 + 1}"
            for key in LIFT_SHAPES:
                for group in ("obs", "next_obs"):
                    np.testing.assert_array_equal(
                        conv[f"data/demo_{i}/{group}/{key}"], raw[f"data/{same}/{group}/{key}"]
                    )
            for key in ("actions", "rewards", "dones", "states"):
                np.testing.assert_array_equal(conv[f"data/demo_{i}/{key}"], raw[f"data/{same}/{key}"])


def test_output_of_a_robomimic_source_reads_with_robomimics_readers(tmp_path, monkeypatch, capsys):
    src = _robomimic_source(tmp_path / "src.hdf5")
    ws = workspace(tmp_path / "ws", src)
    code, err = run_in_process(ws, monkeypatch, capsys)
    assert code == 0, err
    meta = robomimic_reads(ws / "data/demos.hdf5", "train")
    assert (meta["ac_dim"], meta["all_shapes"], meta["lengths"]) == (7, LIFT_SHAPES, {"demo_0": 6})
    summary = json.loads((ws / "data/summary.json").read_text())
    assert (summary["source_format"], summary["actions_clipped"]) == ("robomimic", 0)


# -- bad input: one line naming file, demo and key; exit 1; the previous outputs untouched --------------------
@pytest.mark.slow
def test_empty_valid_mask_is_a_clear_error_from_the_cli(raw_file, tmp_path):
    src = convert_like_robomimic(raw_file, tmp_path / "converted.hdf5", n_demos=8)
    ws = workspace(tmp_path / "ws", src, filter_key="valid", prior=True)
    before = snapshot(ws)
    out = run_cli(ws)
    assert out.returncode == 1, out.stderr
    assert out.stderr == (
        f"stages.ingest: error: filter mask 'valid' in {src} selects no demos: mask/valid is empty "
        "(the file's masks: train (8 demos), valid (0 demos); 8 demos in all)\n"
    )
    assert snapshot(ws) == before


def _replace(f: h5py.File, key: str, value, **kw) -> None:
    del f[key]
    f.create_dataset(key, data=value, **kw)


def _corrupt_header(path: Path, key: str) -> None:
    """Overwrite two bytes of ``key``'s object header: h5py then fails with 'message not aligned'."""
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f[key].id).addr
    data = bytearray(path.read_bytes())
    data[addr + 18 : addr + 20] = b"\xa5\x5a"
    path.write_bytes(bytes(data))


def _zero_length(f: h5py.File, demo: str) -> None:
    """Every array of ``demo`` (obs keys included) with zero rows."""
    arrays = []
    f[f"data/{demo}"].visititems(lambda name, node: arrays.append(name) if isinstance(node, h5py.Dataset) else None)
    for name in arrays:
        node = f[f"data/{demo}/{name}"]
        _replace(f, node.name, np.zeros((0, *node.shape[1:]), node.dtype))


def _robomimic_source(path: Path) -> Path:
    eps = [_episode(6, seed=0), _episode(7, seed=1)]
    return write_robomimic(path, eps, {"env_name": "Lift", "type": 1, "env_kwargs": {}}, masks={"train": ["demo_0"]})


NOT_ALIGNED = (
    "is unreadable, the HDF5 file is corrupt or truncated (Unable to synchronously open object (message not aligned))"
)
BAD_ROBOMIMIC = [
    (
        "zero-length demo",
        lambda f: _zero_length(f, "demo_0"),
        "demo 'demo_0': zero-length demo (key 'actions' has no rows)",
    ),
    (
        "string actions",
        lambda f: _replace(f, "data/demo_0/actions", np.full((6, 7), b"0.1")),
        "demo 'demo_0': key 'actions' holds strings (dtype |S3, shape [6, 7]), expected numbers",
    ),
    ("corrupt bytes", "data/demo_0/actions", f"demo 'demo_0': key 'actions' {NOT_ALIGNED}"),
    (
        "NaN in obs",
        lambda f: f["data/demo_1/obs/object"].__setitem__((2, 4), np.nan),
        "demo 'demo_1': key 'obs' contains NaN or inf (first at index [2, 4])",
    ),
]
BAD_RAW = [
    (
        "zero-length demo",
        lambda f: _zero_length(f, "demo_1"),
        "demo 'demo_1': zero-length demo (key 'actions' has no rows)",
    ),
    (
        "string actions",
        lambda f: _replace(
            f,
            "data/demo_1/actions",
            np.full((len(f["data/demo_1/actions"]), 7), "0.5", object),
            dtype=h5py.string_dtype(),
        ),
        "demo 'demo_1': key 'actions' holds strings (dtype |O, shape [{T}, 7]), expected numbers",
    ),
    ("corrupt bytes", "data/demo_1/states", f"demo 'demo_1': key 'states' {NOT_ALIGNED}"),
    (
        "NaN in states",
        lambda f: f["data/demo_1/states"].__setitem__((3, 5), np.nan),
        "demo 'demo_1': key 'states' contains NaN or inf (first at index [3, 5])",
    ),
]


def _make_bad(src: Path, mutate) -> None:
    if isinstance(mutate, str):
        _corrupt_header(src, mutate)
    else:
        with h5py.File(src, "a") as f:
            mutate(f)


def _assert_failed_cleanly(ws: Path, before: dict, code: int, err: str, expected: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"stages.ingest: error: {expected}"
    assert snapshot(ws) == before  # nothing overwritten, no temporary file left


@pytest.mark.parametrize(("case", "mutate", "message"), BAD_ROBOMIMIC, ids=[c[0] for c in BAD_ROBOMIMIC])
def test_bad_robomimic_file_fails_cleanly(tmp_path, monkeypatch, capsys, case, mutate, message):
    src = _robomimic_source(tmp_path / "src.hdf5")
    _make_bad(src, mutate)
    ws = workspace(tmp_path / "ws", src, prior=True)
    before = snapshot(ws)
    code, err = run_in_process(ws, monkeypatch, capsys)
    _assert_failed_cleanly(ws, before, code, err, f"{src}: {message}")


@pytest.mark.slow
@pytest.mark.parametrize(("case", "mutate", "message"), BAD_RAW, ids=[c[0] for c in BAD_RAW])
def test_bad_raw_robosuite_file_fails_cleanly(raw_file, tmp_path, monkeypatch, capsys, case, mutate, message):
    src = tmp_path / "demo.hdf5"
    shutil.copy(raw_file, src)
    T = len(raw_arrays(raw_file, "actions")["demo_1"])
    _make_bad(src, mutate)
    ws = workspace(tmp_path / "ws", src, prior=True)
    before = snapshot(ws)
    code, err = run_in_process(ws, monkeypatch, capsys)
    _assert_failed_cleanly(ws, before, code, err, f"{src}: {message.format(T=T)}")
