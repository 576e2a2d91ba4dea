"""Mirroring a stage's resumable state to a real SeaweedFS bucket: snapshots, restore, prune, clear."""

import secrets

import pytest

from pipeline import storage
from pipeline.seaweed import seaweed_server
from pipeline.statesync import StateMirror, read_snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    key, secret = "k" + secrets.token_hex(6), secrets.token_urlsafe(20)
    with seaweed_server(tmp_path_factory.mktemp("s3"), key, secret, "state") as info:
        settings = storage.S3Settings(bucket="state", endpoint_url=info.endpoint_url)
        import boto3

        client = boto3.client(
            "s3", endpoint_url=info.endpoint_url, aws_access_key_id=key, aws_secret_access_key=secret,
            region_name="us-east-1", config=storage.boto_config(),
        )  # fmt: skip
        yield settings, client


def test_snapshot_restore_prune_clear(s3, tmp_path):
    settings, client = s3
    src = tmp_path / "a" / "state"
    (src / "sub").mkdir(parents=True)
    (src / "progress.json").write_text('{"step": 1}')
    (src / "sub" / "replay.bin").write_bytes(b"\x00" * 1000)
    mirror = StateMirror("state/run1/finetune", src, settings, client=client)
    assert mirror.restore() == 0  # nothing yet
    assert mirror.upload_if_changed() and not mirror.upload_if_changed()  # unchanged: no new snapshot
    (src / "progress.json").write_text('{"step": 2}')
    assert mirror.upload_if_changed()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="state")["Contents"]]
    assert len({k.split("/")[3] for k in keys if "/snap-" in k}) == 1  # the older snapshot was pruned

    dest = tmp_path / "b" / "state"
    other = StateMirror("state/run1/finetune", dest, settings, client=client)
    assert other.restore() == 2
    assert (dest / "progress.json").read_text() == '{"step": 2}'
    assert (dest / "sub" / "replay.bin").read_bytes() == b"\x00" * 1000
    other.clear()
    assert "Contents" not in client.list_objects_v2(Bucket="state", Prefix="state/run1/")


def test_unstable_directory_is_not_snapshotted(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    import pipeline.statesync as ss

    calls = iter(range(100))
    monkeypatch.setattr(ss, "_fingerprint", lambda root: {"f": (1, next(calls))})  # changes on every look
    assert read_snapshot(tmp_path, attempts=3) is None
