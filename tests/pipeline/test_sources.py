"""``s3://`` demo sources of the ingest stage: fetched by pipeline/sources.py with pipeline/storage.py's rules.

Fast: the errors that need no server (a bad endpoint variable, a malformed URI, an unsupported scheme, the stage
run without the pipeline's fetch), each one line and exit 1 with the previous outputs untouched. Slow: against a
real SeaweedFS, the library's ingest through :func:`pipeline.sources.fetch` (keys and a profile, denied, missing,
unreachable) and ``dvc repro ingest`` with ``ingest.source: s3://bucket/key`` running dvc.yaml's command.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ogpo.data.demos import Episode, read_robomimic, write_robomimic
from ogpo.data.ingest import file_sha256, ingest
from ogpo.errors import StorageError
from pipeline import sources, storage
from pipeline.seaweed import seaweed_server

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
URI = "s3://demos/lift/ph.hdf5"
OUTPUTS = ("data/demos.hdf5", "data/summary.json", "metrics/ingest.json")
S3_VARS = (
    *storage.ENDPOINT_VARS,
    *storage.REGION_VARS,
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


def _dataset(path: Path, n: int = 5) -> Path:
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
                success=True,
            )
        )
    return write_robomimic(path, eps, {"env_name": "Lift", "type": 1, "env_kwargs": {}})


def _workspace(root: Path, source: str) -> Path:
    """A stage directory with params.yaml and the outputs of an earlier run, which a failure must leave alone."""
    root.mkdir(parents=True)
    params = {"source": source, "task": "lift", "count": None, "seed": 0, "noise": 0.0, "filter_key": None}
    (root / "params.yaml").write_text(yaml.safe_dump({"ingest": params}))
    _dataset(root / OUTPUTS[0], n=2)
    (root / OUTPUTS[1]).write_text('{"episodes": 2}\n')
    (root / OUTPUTS[2]).parent.mkdir()
    (root / OUTPUTS[2]).write_text('{"episodes": 2}\n')
    return root


def _snapshot(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*")) if p.is_file()}


def _run(main, ws: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(ws)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def _stage_main():
    from stages.common import stage_main
    from stages.ingest import run

    stage_main(run, name="stages.ingest")


@pytest.fixture
def s3_env(monkeypatch):
    for name in S3_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("source", "env", "message"),
    [
        (URI, {"OGPO_S3_ENDPOINT": "notaurl"}, "OGPO_S3_ENDPOINT='notaurl' must start with http:// or https://"),
        (URI, {"AWS_ACCESS_KEY_ID": "AKIDONLY"}, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together"),
        ("s3://bucket-only", {}, "S3 URI 's3://bucket-only' must look like s3://bucket/key"),
        ("gs://demos/lift.hdf5", {}, "ingest.source 'gs://demos/lift.hdf5': gs:// sources are not supported"),
    ],
)
def test_bad_s3_source_is_one_line_and_keeps_the_outputs(tmp_path, s3_env, capsys, source, env, message):
    for k, v in env.items():
        s3_env.setenv(k, v)
    ws = _workspace(tmp_path / "ws", source)
    before = _snapshot(ws)
    code, err = _run(sources.main, ws, s3_env, capsys)
    assert code == 1, err
    assert err.startswith(f"stages.ingest: error: {message}") and err.count("\n") == 1, err
    assert _snapshot(ws) == before


def test_the_stage_alone_does_not_reach_the_object_store(tmp_path, s3_env, capsys):
    ws = _workspace(tmp_path / "ws", URI)
    before = _snapshot(ws)
    code, err = _run(_stage_main, ws, s3_env, capsys)
    assert code == 1
    assert err == (
        f"stages.ingest: error: ingest.source {URI!r} is a remote object: run this stage as dvc.yaml does, "
        "through `python -m pipeline.sources`, which fetches it from the object store\n"
    )
    assert _snapshot(ws) == before


def test_dvc_yaml_runs_ingest_through_the_pipeline():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["ingest"]
    assert stage["cmd"] == "bash scripts/pipeline.sh sources"
    assert "pipeline/sources.py" in stage["deps"]


def _wait_exit(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.1)
    return False


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


@pytest.mark.slow
def test_ingest_from_s3_seaweedfs(tmp_path, s3_env):
    key, secret = "ogpo" + secrets.token_hex(4), secrets.token_hex(20)
    src = _dataset(tmp_path / "src.hdf5")
    with seaweed_server(tmp_path / "weed", key, secret, "demos") as info:
        for k, v in info.env().items():
            s3_env.setenv(k, v)
        storage.upload(src, URI)
        summary = ingest(URI, tmp_path / "out" / "lift.hdf5", "lift", count=4, fetch=sources.fetch)
        assert summary["source_sha256"] == file_sha256(src)
        assert summary["content_sha256"] == read_robomimic(tmp_path / "out" / "lift.hdf5").content_hash()
        assert summary["episodes"] == 4 and summary["source"] == URI

        # a profile instead of keys: what the DVC remote accepts, ingest accepts (one set of rules)
        (tmp_path / "aws").mkdir()
        (tmp_path / "aws" / "credentials").write_text(
            f"[lab]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
        )
        s3_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws" / "credentials"))
        s3_env.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws" / "config"))
        s3_env.delenv("AWS_ACCESS_KEY_ID")
        s3_env.delenv("AWS_SECRET_ACCESS_KEY")
        s3_env.setenv("AWS_PROFILE", "lab")
        s3_env.delenv("OGPO_S3_ENDPOINT")  # AWS_ENDPOINT_URL_S3, as DVC and the AWS tools read it
        s3_env.delenv("AWS_ENDPOINT_URL")
        s3_env.setenv("AWS_ENDPOINT_URL_S3", info.endpoint_url)
        summary = ingest(URI, tmp_path / "out" / "profile.hdf5", "lift", fetch=sources.fetch)
        assert summary["source_sha256"] == file_sha256(src) and summary["episodes"] == 5

        s3_env.delenv("AWS_PROFILE")
        s3_env.setenv("AWS_ACCESS_KEY_ID", key)
        s3_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + secret)
        with pytest.raises(StorageError, match=f"download {URI}: .*access denied") as err:
            ingest(URI, tmp_path / "denied.hdf5", "lift", fetch=sources.fetch)
        assert secret not in str(err.value) and "wrong-" not in str(err.value) and "\n" not in str(err.value)
        s3_env.setenv("AWS_SECRET_ACCESS_KEY", secret)
        with pytest.raises(StorageError, match="no such object"):
            ingest("s3://demos/lift/missing.hdf5", tmp_path / "missing.hdf5", "lift", fetch=sources.fetch)
        port = info.s3_port
        assert _listen_addresses(port) == {"127.0.0.1"}  # never on all interfaces
    assert _wait_exit(info.pid), "weed mini still running after the context manager exited"
    s3_env.setenv("OGPO_S3_ENDPOINT", f"http://127.0.0.1:{port}")  # server stopped: unreachable
    with pytest.raises(StorageError, match=f"S3 endpoint http://127.0.0.1:{port} is unreachable") as err:
        ingest(URI, tmp_path / "gone.hdf5", "lift", fetch=sources.fetch)
    assert secret not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aws", "out", "src.hdf5", "weed"]


def _dvc_checkout(path: Path, source: str) -> Path:
    """This repository's pipeline code, dvc.yaml and params.yaml (ingest.source replaced) in a new DVC repo."""
    path.mkdir()
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("ogpo", "stages", "pipeline", "scripts"):
        shutil.copytree(ROOT / name, path / name, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source=source, count=None, filter_key=None)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".venv").symlink_to(ROOT / ".venv")  # scripts/*.sh run the checkout's .venv/bin/python
    subprocess.run([str(BIN / "dvc"), "init", "-q", "--no-scm"], cwd=path, check=True)
    subprocess.run([str(BIN / "dvc"), "config", "core.analytics", "false"], cwd=path, check=True)
    return path


@pytest.mark.slow
def test_dvc_repro_ingest_from_s3(tmp_path, s3_env):
    key, secret = "ogpo" + secrets.token_hex(4), secrets.token_hex(20)
    src = _dataset(tmp_path / "src.hdf5")
    repo = _dvc_checkout(tmp_path / "repo", URI)
    with seaweed_server(tmp_path / "weed", key, secret, "demos") as info:
        for k, v in info.env().items():
            s3_env.setenv(k, v)
        storage.upload(src, URI)
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        res = subprocess.run(
            [str(BIN / "dvc"), "repro", "ingest"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stdout + res.stderr
        summary = json.loads((repo / "data" / "summary.json").read_text())
        assert (summary["source"], summary["episodes"]) == (URI, 5)
        assert summary["source_sha256"] == file_sha256(src)

        env["OGPO_S3_ENDPOINT"] = "notaurl"
        (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace(URI, URI + ".v2"))
        res = subprocess.run(
            [str(BIN / "dvc"), "repro", "ingest"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
        )
    assert res.returncode != 0
    assert "stages.ingest: error: OGPO_S3_ENDPOINT='notaurl' must start with http:// or https://" in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
