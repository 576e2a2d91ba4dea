"""Ingestion: local files, filter keys and counts, scripted demos, remote sources through a fetch; bad input.

The object store itself (s3:// against a real SeaweedFS) is the pipeline's: tests/pipeline/test_sources.py.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from ogpo.data.demos import Episode, read_robomimic, write_robomimic
from ogpo.data.ingest import file_sha256, ingest, is_remote
from ogpo.errors import ConfigError, DemoFormatError, EnvError, StorageError


def _dataset(path, n=5):
    rng = np.random.default_rng(1)
    eps = []
    for i in range(n):
        T = 4 + i
        eps.append(
            Episode(
                obs=rng.normal(size=(T, 19)).astype(np.float32),
                next_obs=rng.normal(size=(T, 19)).astype(np.float32),
                actions=rng.uniform(-1, 1, size=(T, 7)).astype(np.float32),
                rewards=np.r_[np.zeros(T - 1), 1.0].astype(np.float32),
                dones=np.r_[np.zeros(T - 1), 1].astype(np.uint8),
                success=i != 3,
            )
        )
    names = [f"demo_{i}" for i in range(n)]
    masks = {"train": names[:4], "valid": names[4:], "2_demos": ["demo_1", "demo_3"]}
    return write_robomimic(path, eps, {"env_name": "Lift", "type": 1, "env_kwargs": {}}, masks=masks)


def test_ingest_local_file_writes_dataset_and_summary(tmp_path):
    src = _dataset(tmp_path / "src.hdf5")
    out = tmp_path / "out" / "lift.hdf5"
    summary = ingest(str(src), out, "lift")
    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == summary
    assert summary["episodes"] == 5 and summary["lengths"] == [4, 5, 6, 7, 8] and summary["success_rate"] == 0.8
    assert summary["obs_keys"] == ["object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    assert (summary["obs_dim"], summary["act_dim"], summary["source_format"]) == (19, 7, "robomimic")
    assert len(summary["action_min"]) == 7 and min(summary["action_min"]) >= -1
    assert summary["content_sha256"] == read_robomimic(src).content_hash() == read_robomimic(out).content_hash()
    assert summary["source_sha256"] == file_sha256(src) and summary["file_sha256"] == file_sha256(out)
    assert summary["masks"] == {"2_demos": 2, "train": 4, "valid": 1}
    assert summary["actions_clipped"] == 0 and summary["actions_abs_max_source"] <= 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["lift.hdf5", "lift.json"]  # no temp files left


def test_out_of_range_actions_are_clipped_like_the_controller_and_counted(tmp_path):
    src = _dataset(tmp_path / "src.hdf5")
    with h5py.File(src, "a") as f:  # recorded as robosuite stores them: float64, up to 1.13
        a = f["data/demo_1/actions"][()].astype(np.float64)
        a[0, :3] = [1.13, -1.04, 1.0]
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = a
    summary = ingest(str(src), tmp_path / "out.hdf5", "lift")
    assert summary["actions_clipped"] == 2 and summary["actions_abs_max_source"] == 1.13
    assert summary["action_max"][0] == 1.0 and summary["action_min"][1] == -1.0
    out = read_robomimic(tmp_path / "out.hdf5")  # the written file is strictly in range
    np.testing.assert_array_equal(out.episodes[1].actions[0, :3], [1.0, -1.0, 1.0])
    assert summary["content_sha256"] == out.content_hash()
    with pytest.raises(DemoFormatError, match=r"value 1\.13 at step 0, dim 0 is outside \[-1, 1\]"):
        read_robomimic(src)  # reading without clip stays strict


def test_empty_filter_mask_writes_nothing(tmp_path):
    src = _dataset(tmp_path / "src.hdf5")
    with h5py.File(src, "a") as f:
        f["mask/empty"] = np.array([], dtype="S")
    with pytest.raises(DemoFormatError, match=rf"^filter mask 'empty' in {src} selects no demos"):
        ingest(str(src), tmp_path / "out" / "d.hdf5", "lift", filter_key="empty")
    assert not (tmp_path / "out").exists()


def test_filter_key_and_count_select_a_subset(tmp_path):
    src = _dataset(tmp_path / "src.hdf5")
    s = ingest(str(src), tmp_path / "few.hdf5", "lift", filter_key="2_demos")
    assert s["episodes"] == 2 and s["lengths"] == [5, 7] and s["filter_key"] == "2_demos"
    assert [e.name for e in read_robomimic(tmp_path / "few.hdf5")] == ["demo_1", "demo_3"]
    s = ingest(str(src), tmp_path / "first3.hdf5", "lift", count=3, filter_key="train")
    assert s["lengths"] == [4, 5, 6] and s["masks"] == {"2_demos": 1, "train": 3}
    with pytest.raises(ConfigError, match="asked for 9 demos but .* has 4 in mask 'train'"):
        ingest(str(src), tmp_path / "x.hdf5", "lift", count=9, filter_key="train")
    assert not (tmp_path / "x.hdf5").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"task": "stack"}, EnvError, "unknown task 'stack'"),
        ({"task": "square"}, DemoFormatError, "env 'Lift' does not match task 'square'"),
        ({"filter_key": "nope"}, DemoFormatError, "filter key 'nope' not found"),
        ({"count": 0}, ConfigError, "count must be an integer >= 1"),
        ({"noise": -1.0}, ConfigError, "noise must be"),
        ({"source": "scripted:lift"}, ConfigError, "needs count"),
        ({"source": "scripted:can", "count": 2}, ConfigError, "makes demos for 'can' but task is 'lift'"),
        ({"source": "scripted:stack", "count": 2}, EnvError, "unknown task 'stack'"),
        ({"source": "s3://demos/lift.hdf5"}, ConfigError, "is a remote object and no fetch function was given"),
        ({"source": "/nonexistent/demo.hdf5"}, DemoFormatError, "no such dataset file"),
    ],
)
def test_bad_ingest_inputs_write_nothing(tmp_path, kwargs, error, pattern):
    src = _dataset(tmp_path / "src.hdf5")
    args = {"source": str(src), "out_path": tmp_path / "out" / "d.hdf5", "task": "lift", **kwargs}
    with pytest.raises(error, match=pattern):
        ingest(**args)
    assert not (tmp_path / "out").exists()


def test_malformed_source_writes_nothing(tmp_path):
    src = _dataset(tmp_path / "src.hdf5")
    with h5py.File(src, "a") as f:
        f["data/demo_2/actions"][0, 0] = np.nan
    out = tmp_path / "out.hdf5"
    with pytest.raises(DemoFormatError, match=r"src.hdf5: demo 'demo_2': key 'actions' contains NaN"):
        ingest(str(src), out, "lift")
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.hdf5"]


@pytest.mark.slow
def test_ingest_scripted_lift(tmp_path):
    out = tmp_path / "scripted.hdf5"
    s = ingest("scripted:lift", out, "lift", count=3, seed=5, noise=0.1)
    assert s["episodes"] == 3 and s["success_rate"] == 1.0 and s["source_format"] == "scripted"
    ds = read_robomimic(out)
    assert [e.seed for e in ds] == sorted(e.seed for e in ds) and all(e.states is not None for e in ds)
    assert ds.env_args["ogpo"]["noise"] == 0.1 and s["masks"] == {"train": 2, "valid": 1}


def _copying_fetch(src, calls):
    """A fetch function that serves ``src`` for any URI (what pipeline/sources.py does with the object store)."""

    def fetch(uri, dest):
        calls.append((uri, dest))
        shutil.copy(src, dest)
        return dest

    return fetch


def test_remote_source_is_read_through_fetch_and_named_in_errors(tmp_path):
    src = _dataset(tmp_path / "src.hdf5")
    calls = []
    fetch = _copying_fetch(src, calls)
    summary = ingest("s3://demos/lift/ph.hdf5", tmp_path / "out" / "lift.hdf5", "lift", count=4, fetch=fetch)
    assert [uri for uri, _ in calls] == ["s3://demos/lift/ph.hdf5"]
    assert not calls[0][1].exists() and not calls[0][1].parent.exists()  # the temporary copy is gone
    assert summary["source_sha256"] == file_sha256(src) and summary["source"] == "s3://demos/lift/ph.hdf5"
    assert summary["content_sha256"] == read_robomimic(tmp_path / "out" / "lift.hdf5").content_hash()
    assert summary["episodes"] == 4 and summary["source_format"] == "robomimic"

    # a bad file in the bucket: the message names the object, not the temporary copy it was read from
    with pytest.raises(ConfigError, match=r"asked for 9 demos but s3://demos/lift/ph\.hdf5 has 5$"):
        ingest("s3://demos/lift/ph.hdf5", tmp_path / "nine.hdf5", "lift", count=9, fetch=fetch)
    with pytest.raises(DemoFormatError, match=r"^s3://demos/lift/ph\.hdf5: filter key 'nope' not found"):
        ingest("s3://demos/lift/ph.hdf5", tmp_path / "nope.hdf5", "lift", filter_key="nope", fetch=fetch)

    def failing(uri, dest):
        raise StorageError(f"download {uri}: access denied")

    with pytest.raises(StorageError, match=r"^download s3://demos/lift/ph\.hdf5: access denied$"):
        ingest("s3://demos/lift/ph.hdf5", tmp_path / "denied.hdf5", "lift", fetch=failing)
    with pytest.raises(ConfigError, match="fetching 's3://demos/lift/ph.hdf5' wrote no file"):
        ingest("s3://demos/lift/ph.hdf5", tmp_path / "none.hdf5", "lift", fetch=lambda uri, dest: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src.hdf5"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lift.hdf5", "lift.json"]


def test_is_remote():
    assert is_remote("s3://b/k") and is_remote("gs://b/k")
    for local in ("data/demo.hdf5", "/abs/demo.hdf5", "file:///abs/demo.hdf5", "scripted:lift", "a/b://c"):
        assert not is_remote(local), local
