"""``ogpo pull`` against a real SeaweedFS remote: same bytes, verified hash, one clear line on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ogpo.checkpoint import save_checkpoint
from ogpo.errors import CheckpointError
from pipeline import storage
from pipeline.seaweed import seaweed_server
from tests.pipeline.stackutil import git

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A repo whose commit tags a DVC-tracked checkpoint pushed to SeaweedFS, and the env to reach it."""
    base = tmp_path_factory.mktemp("pull")
    key, secret = "k" + secrets.token_hex(6), secrets.token_urlsafe(20)
    with seaweed_server(base / "s3", key, secret, "ogpo") as info:
        s3_env = {"OGPO_S3_BUCKET": "ogpo", "OGPO_S3_ENDPOINT": info.endpoint_url, "AWS_ACCESS_KEY_ID": key,
                  "AWS_SECRET_ACCESS_KEY": secret}  # fmt: skip
        env = {**os.environ, **s3_env, "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("OGPO_GIT_URL", None)
        repo = base / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        subprocess.run(["dvc", "init", "-q"], cwd=repo, env=env, check=True)
        save_checkpoint(repo / "models" / "finetuned", {"actor.w": torch.arange(6.0)}, {"format": "test"})
        subprocess.run(["dvc", "add", "-q", "models/finetuned"], cwd=repo, env=env, check=True)
        storage.configure_dvc_remote(repo, storage.settings_from_env(env))
        subprocess.run(["dvc", "push", "-q"], cwd=repo, env=env, check=True)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "checkpoint")
        git(repo, "tag", "v1")
        clean = base / "clean"
        subprocess.run(["git", "clone", "-q", str(repo), str(clean)], check=True)
        yield repo, clean, env


def _pull(clean: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ogpo"), "pull", *args], cwd=clean, env=env, capture_output=True, text=True)


def test_pull_gets_the_same_bytes(published):
    repo, clean, env = published
    res = _pull(clean, env, "finetuned", "--rev", "v1", "--out", "ckpt")
    assert res.returncode == 0, res.stderr
    for name in ("weights.safetensors", "config.json"):
        assert (clean / "ckpt" / name).read_bytes() == (repo / "models" / "finetuned" / name).read_bytes()
    assert json.loads((clean / "ckpt" / "config.json").read_text())["format"] == "test"


@pytest.mark.parametrize(
    ("args", "env_patch", "needle"),
    [
        (("finetuned", "--rev", "v9"), {}, "unknown revision 'v9'"),
        (("models/critic", "--rev", "v1"), {}, "'models/critic' not found"),
        (("finetuned", "--rev", "v1"), {"AWS_SECRET_ACCESS_KEY": "WrongSecret-123456"}, "refused the credentials"),
        (("finetuned", "--rev", "v1"), {"OGPO_S3_ENDPOINT": "http://127.0.0.1:9"}, "unreachable"),
        (("finetuned", "--rev", "v1"), {"OGPO_S3_BUCKET": "nobucket"}, "does not exist"),
        (("../etc", "--rev", "v1"), {}, "inside the repository"),
    ],
)
def test_bad_input_gives_one_clear_line(published, args, env_patch, needle):
    _, clean, env = published
    res = _pull(clean, {**env, **env_patch}, *args, "--out", "never")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and needle in lines[0], res.stderr
    assert env["AWS_SECRET_ACCESS_KEY"] not in res.stderr and "WrongSecret" not in res.stderr
    assert not (clean / "never").exists()


def test_tampered_remote_object_is_rejected(published, tmp_path, monkeypatch):
    """A weights file whose bytes do not match dvc.lock is refused and nothing is left behind."""
    import boto3

    from pipeline.pull import pull

    repo, clean, env = published
    for k, v in env.items():
        if k.startswith(("OGPO_", "AWS_")):
            monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["OGPO_S3_ENDPOINT"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip
    weights = (repo / "models" / "finetuned" / "weights.safetensors").read_bytes()
    md5 = hashlib.md5(weights).hexdigest()
    key = f"dvc/files/md5/{md5[:2]}/{md5[2:]}"
    client.put_object(Bucket="ogpo", Key=key, Body=weights[:-4] + b"\x00\x00\x00\x00")
    try:
        with pytest.raises(CheckpointError, match="md5"):
            pull("finetuned", "v1", out=tmp_path / "bad", repo=str(clean))
        assert not (tmp_path / "bad").exists()
    finally:
        client.put_object(Bucket="ogpo", Key=key, Body=weights)
