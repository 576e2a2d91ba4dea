"""Mirror a stage's resumable state directory (outside DVC outs) to the object store, and restore it.

The fine-tune stage checkpoints its full state into ``state/`` of its workspace. Workspaces live on one
worker, so if that worker dies the state must already be in the bucket for the next worker to resume.
Each upload is a complete snapshot under a new key prefix; a small ``LATEST`` object is written last and
names the snapshot, so a reader never sees a half-uploaded state (S3 puts are atomic per object).
A snapshot is only taken when the directory is stable (same files, sizes and mtimes before and after the
read), because the stage replaces its files while we read them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from ogpo.errors import StorageError
from pipeline import storage

log = logging.getLogger(__name__)


def _fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def read_snapshot(root: Path, attempts: int = 5) -> dict[str, bytes] | None:
    """All files under ``root`` read while nothing changed; None if empty or never stable."""
    for _ in range(attempts):
        before = _fingerprint(root) if root.is_dir() else {}
        if not before:
            return None
        try:
            data = {rel: (root / rel).read_bytes() for rel in before}
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        if _fingerprint(root) == before:
            return data
        time.sleep(0.2)
    return None


class StateMirror:
    """Upload snapshots of ``local_dir`` to ``s3://bucket/<key>/`` and restore the latest one."""

    def __init__(self, key: str, local_dir: Path, settings: storage.S3Settings, client=None) -> None:
        self.key = key.strip("/")
        self.local_dir = local_dir
        self.settings = settings
        self.client = client or storage.s3_client(settings)
        self._last: dict[str, tuple[int, int]] | None = None
        self._seq = 0

    def _latest(self) -> dict | None:
        where = f"s3://{self.settings.bucket}/{self.key}/LATEST"
        try:
            obj = storage.guarded(f"reading {where}", self.client.get_object, Bucket=self.settings.bucket,
                                  Key=f"{self.key}/LATEST")  # fmt: skip
        except storage.TransientError:
            raise
        except StorageError as e:
            if "404" in str(e) or "NoSuchKey" in str(e):
                return None
            raise
        return json.loads(obj["Body"].read())

    def restore(self) -> int:
        """Download the latest snapshot into ``local_dir`` (replacing it); returns the number of files."""
        latest = self._latest()
        if latest is None:
            return 0
        snap = latest["snapshot"]
        self._seq = int(latest.get("seq", 0))
        n = 0
        for rel in latest["files"]:
            obj = storage.guarded(
                "restoring state", self.client.get_object, Bucket=self.settings.bucket, Key=f"{self.key}/{snap}/{rel}"
            )
            body = obj["Body"]
            dest = self.local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.restore")
            tmp.write_bytes(body.read())
            os.replace(tmp, dest)
            n += 1
        self._last = _fingerprint(self.local_dir)
        log.info("restored resumable state: %d files from s3://%s/%s/%s", n, self.settings.bucket, self.key, snap)
        return n

    def upload_if_changed(self) -> bool:
        """Upload a new snapshot if the directory changed since the last one; returns True if uploaded."""
        if not self.local_dir.is_dir():
            return False
        fp = _fingerprint(self.local_dir)
        if not fp or fp == self._last:
            return False
        data = read_snapshot(self.local_dir)
        if data is None:
            return False
        self._seq += 1
        snap = f"snap-{self._seq:06d}-{int(time.time())}"
        put = self.client.put_object
        for rel, body in data.items():
            storage.guarded(
                "uploading state", put, Bucket=self.settings.bucket, Key=f"{self.key}/{snap}/{rel}", Body=body
            )
        pointer = {"snapshot": snap, "seq": self._seq, "files": sorted(data)}
        storage.guarded("uploading state", put, Bucket=self.settings.bucket, Key=f"{self.key}/LATEST",
                        Body=json.dumps(pointer))  # fmt: skip
        self._last = _fingerprint(self.local_dir)
        self._prune(keep=snap)
        log.info("uploaded resumable state snapshot %s (%d files)", snap, len(data))
        return True

    def _prune(self, keep: str) -> None:
        """Delete older snapshots (after LATEST moved on, so a reader always finds a complete one)."""
        paginator = self.client.get_paginator("list_objects_v2")
        stale = []
        for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=f"{self.key}/snap-"):
            for obj in page.get("Contents", []):
                if not obj["Key"].startswith(f"{self.key}/{keep}/"):
                    stale.append({"Key": obj["Key"]})
        for i in range(0, len(stale), 1000):
            self.client.delete_objects(Bucket=self.settings.bucket, Delete={"Objects": stale[i : i + 1000]})

    def clear(self) -> None:
        """Remove all state for this key (the stage completed: its outputs are in DVC now)."""
        storage.guarded("clearing state", self._clear)

    def _clear(self) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=f"{self.key}/"):
            keys += [{"Key": o["Key"]} for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.settings.bucket, Delete={"Objects": keys[i : i + 1000]})


class Uploader(threading.Thread):
    """Background thread: upload a snapshot every ``period`` seconds while the stage runs."""

    def __init__(self, mirror: StateMirror, period: float = 5.0) -> None:
        super().__init__(daemon=True, name=f"state-upload:{mirror.key}")
        self.mirror = mirror
        self.period = period
        self._stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            try:
                self.mirror.upload_if_changed()
            except Exception as e:  # keep the stage running; the next period retries
                self.errors += 1
                log.warning("state upload failed (will retry): %s", storage.redact(str(e)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
