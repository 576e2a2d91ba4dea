"""Ingestion: local files, filter keys and counts, scripted demos, S3 against a real SeaweedFS; bad input."""

from __future__ import annotations

import json
import os
import secrets
import time

import h5py
import numpy as np
import pytest

from ogpo.data.demos import Episode, read_robomimic, write_robomimic
from ogpo.data.ingest import file_sha256, ingest
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
    assert sorted(p.name for p in out.parent.iterdir()) == ["lift.hdf5", "lift.json"]  # no temp files left


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
        ({"source": "s3://bucket-only"}, StorageError, "must look like s3://bucket/key"),
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


def _listen_addresses(port: int) -> set[str]:
    """IPv4 addresses listening on ``port`` (from /proc/net/tcp; state 0A = LISTEN)."""
    out = set()
    with open("/proc/net/tcp") as f:
        lines = f.read().splitlines()[1:]
    for line in lines:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            out.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def _wait_exit(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.1)
    return False


def test_s3_uri_and_credential_errors(monkeypatch):
    from ogpo.data import s3

    assert s3.parse_s3_uri("s3://b/k/x.hdf5") == s3.S3Uri("b", "k/x.hdf5")
    for bad in ("http://b/k", "s3://", "s3://b", "s3://b/dir/"):
        with pytest.raises(StorageError, match="s3://"):
            s3.parse_s3_uri(bad)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    with pytest.raises(StorageError, match="credentials missing") as err:
        s3.make_client("http://127.0.0.1:9")
    assert "s3cr3t-value" not in str(err.value)


@pytest.mark.slow
def test_ingest_from_s3_seaweedfs(tmp_path, monkeypatch):
    from ogpo.data import s3
    from pipeline.seaweed import seaweed_server

    key, secret = "ogpo" + secrets.token_hex(4), secrets.token_hex(20)
    src = _dataset(tmp_path / "src.hdf5")
    with seaweed_server(tmp_path / "weed", key, secret, "demos") as info:
        for k, v in info.env().items():
            monkeypatch.setenv(k, v)
        s3.upload(src, "s3://demos/lift/ph.hdf5")
        summary = ingest("s3://demos/lift/ph.hdf5", tmp_path / "out" / "lift.hdf5", "lift", count=4)
        assert summary["source_sha256"] == file_sha256(src)
        assert summary["content_sha256"] == read_robomimic(tmp_path / "out" / "lift.hdf5").content_hash()
        assert summary["episodes"] == 4 and summary["source"] == "s3://demos/lift/ph.hdf5"

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + secret)
        with pytest.raises(StorageError, match="access denied") as err:
            ingest("s3://demos/lift/ph.hdf5", tmp_path / "denied.hdf5", "lift")
        assert secret not in str(err.value) and "wrong-" not in str(err.value)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        with pytest.raises(StorageError, match="no such object"):
            ingest("s3://demos/lift/missing.hdf5", tmp_path / "missing.hdf5", "lift")
        port = info.s3_port
        assert _listen_addresses(port) == {"127.0.0.1"}  # never on all interfaces
    assert _wait_exit(info.pid), "weed mini still running after the context manager exited"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # server stopped: unreachable
    monkeypatch.setenv("OGPO_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(StorageError, match="unreachable") as err:
        ingest("s3://demos/lift/ph.hdf5", tmp_path / "gone.hdf5", "lift")
    assert secret not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src.hdf5", "weed"]
