"""Object storage settings from the environment: the DVC remote `s3` and boto3 retry/timeout settings.

The same variables work against SeaweedFS on 127.0.0.1 and against AWS S3: leave the endpoint unset for
AWS, and give either a profile (``AWS_PROFILE``) or keys (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``).
Secrets are never written into DVC config files: DVC (through aiobotocore) reads them from the environment
itself, so a worker's workspace holds only the endpoint, bucket, region and profile name.

Environment variables:

- ``OGPO_S3_BUCKET`` (required): the bucket holding the DVC remote and the resumable stage state.
- ``OGPO_S3_PREFIX`` (default ``dvc``): key prefix of the DVC remote inside the bucket.
- ``OGPO_S3_ENDPOINT`` (optional; falls back to ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``): unset = AWS.
  The same names as ``ogpo.data.s3`` (demo sources), so one environment serves both.
- ``OGPO_S3_REGION`` (optional; falls back to ``AWS_REGION``/``AWS_DEFAULT_REGION``, then ``us-east-1``).
- ``AWS_PROFILE`` or ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ogpo.errors import ConfigError, StorageError

REMOTE_NAME = "s3"
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
# Timeouts and retries for every S3 client we create (boto3 directly, and DVC through aiobotocore, which
# reads AWS_RETRY_MODE/AWS_MAX_ATTEMPTS from the environment). "standard" retries throttling and 5xx
# with backoff; connection errors are retried too.
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
MAX_ATTEMPTS = 5
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is and how to authenticate; ``repr`` never shows a secret."""

    bucket: str
    prefix: str = "dvc"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    profile: str | None = None

    @property
    def remote_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def settings_from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """Read :class:`S3Settings` from ``env`` (default ``os.environ``); raises ConfigError naming the variable."""
    env = os.environ if env is None else env
    bucket = env.get("OGPO_S3_BUCKET", "").strip()
    if not bucket:
        raise ConfigError("OGPO_S3_BUCKET is not set: the S3 bucket of the DVC remote is required")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(f"OGPO_S3_BUCKET={bucket!r} is not a valid S3 bucket name")
    prefix = env.get("OGPO_S3_PREFIX", "dvc").strip("/")
    endpoint = env.get("OGPO_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    if endpoint and not re.match(r"^https?://[^\s/]+", endpoint):
        raise ConfigError(f"OGPO_S3_ENDPOINT={endpoint!r} must start with http:// or https://")
    region = env.get("OGPO_S3_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    profile = env.get("AWS_PROFILE") or None
    has_keys = bool(env.get("AWS_ACCESS_KEY_ID")) and bool(env.get("AWS_SECRET_ACCESS_KEY"))
    if bool(env.get("AWS_ACCESS_KEY_ID")) != bool(env.get("AWS_SECRET_ACCESS_KEY")):
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
    if profile and has_keys:
        # boto gives keys precedence silently; refuse the ambiguity instead of guessing.
        raise ConfigError("set either AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not both")
    return S3Settings(bucket=bucket, prefix=prefix, endpoint_url=endpoint, region=region, profile=profile)


def client_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that talks to S3 (dvc): retry mode and attempts, no analytics."""
    out = dict(os.environ if env is None else env)
    out.setdefault("AWS_RETRY_MODE", "standard")
    out.setdefault("AWS_MAX_ATTEMPTS", str(MAX_ATTEMPTS))
    out["DVC_NO_ANALYTICS"] = "1"
    out["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return out


def dvc_remote_config(settings: S3Settings) -> dict[str, str]:
    """The options of the DVC remote ``s3`` (no secrets: those stay in the environment)."""
    opts = {
        "url": settings.remote_url,
        "region": settings.region,
        "connect_timeout": str(CONNECT_TIMEOUT_S),
        "read_timeout": str(READ_TIMEOUT_S),
    }
    if settings.endpoint_url:
        opts["endpointurl"] = settings.endpoint_url
    if settings.profile:
        opts["profile"] = settings.profile
    return opts


def configure_dvc_remote(repo_dir: str | Path, settings: S3Settings) -> Path:
    """Make ``s3`` the default DVC remote of ``repo_dir`` via ``.dvc/config.local`` (never committed).

    Written directly (temp + rename) instead of two ``dvc remote`` calls: each DVC CLI start costs ~0.7 s
    and this runs once per stage task. Existing local config sections other than ours are kept.
    """
    dvc_dir = Path(repo_dir) / ".dvc"
    if not dvc_dir.is_dir():
        raise ConfigError(f"{repo_dir}: not a DVC repository (no .dvc directory)")
    path = dvc_dir / "config.local"
    kept = _strip_sections(path.read_text() if path.exists() else "", {"core", f'remote "{REMOTE_NAME}"'})
    lines = [kept.rstrip()] if kept.strip() else []
    lines += ["[core]", f"    remote = {REMOTE_NAME}", "    analytics = false", f"['remote \"{REMOTE_NAME}\"']"]
    lines += [f"    {k} = {v}" for k, v in dvc_remote_config(settings).items()]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _strip_sections(text: str, names: set[str]) -> str:
    """Drop the configobj sections named in ``names`` (quoted or not) from INI ``text``."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            name = stripped.strip("[]").strip("'\"")
            skipping = name in names
        if not skipping:
            out.append(line)
    return "\n".join(out)


def boto_config():
    """botocore Config with the project's timeouts and retries (used by every boto3 client we make)."""
    from botocore.config import Config

    return Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": "path"},
    )


def s3_client(settings: S3Settings | None = None, connect_timeout: float = CONNECT_TIMEOUT_S,
              max_attempts: int = MAX_ATTEMPTS):  # fmt: skip
    """A boto3 S3 client for ``settings`` (default: from the environment) with retries and timeouts.

    With keys in the environment this is ``ogpo.data.s3.make_client``; with ``AWS_PROFILE`` a session on
    that profile (the demo client supports keys only).
    """
    import boto3

    settings = settings or settings_from_env()
    if not settings.profile:
        from ogpo.data.s3 import make_client

        return make_client(
            settings.endpoint_url, connect_timeout=connect_timeout, read_timeout=READ_TIMEOUT_S,
            max_attempts=max_attempts,
        )  # fmt: skip
    from botocore.config import Config

    session = boto3.session.Session(profile_name=settings.profile, region_name=settings.region)
    retries = Config(connect_timeout=connect_timeout, retries={"max_attempts": max_attempts, "mode": "standard"})
    return session.client("s3", endpoint_url=settings.endpoint_url, config=boto_config().merge(retries))


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace the values of secret variables found in ``text`` by ``***`` (for logs and error messages)."""
    env = os.environ if env is None else env
    for name in SECRET_VARS:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class TransientError(StorageError):
    """The object store (or network) failed in a way that a retry can fix: tasks retry these only."""


def guarded(what: str, fn, *args, **kwargs):
    """Call a boto3 operation; connection faults become TransientError, other failures StorageError."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    try:
        return fn(*args, **kwargs)
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as e:
        raise TransientError(f"{what}: object store unreachable, will retry ({type(e).__name__})") from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            raise TransientError(f"{what}: object store error {code or status}, will retry") from None
        raise StorageError(f"{what}: object store answered {code or status}") from None


def check_bucket(settings: S3Settings, client=None) -> None:
    """Fail with one clear line if the bucket is unreachable, unauthorized or missing (a HEAD request)."""
    from botocore.exceptions import ClientError

    client = client or s3_client(settings, connect_timeout=3, max_attempts=2)  # a CLI answer in seconds
    where = settings.endpoint_url or "AWS S3"
    try:
        guarded(f"bucket {settings.bucket!r} at {where}", client.head_bucket, Bucket=settings.bucket)
    except TransientError:
        raise StorageError(f"object store {where} is unreachable (bucket {settings.bucket!r})") from None
    except StorageError as e:
        cause = e.__context__
        code = ""
        if isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
        text = f"{e} {code}"
        if "403" in text or "Forbidden" in text:
            raise StorageError(
                f"{where} refused the credentials for bucket {settings.bucket!r} "
                "(check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            ) from None
        if "404" in text or "NoSuchBucket" in text or "NotFound" in text:
            raise StorageError(f"bucket {settings.bucket!r} does not exist at {where} (OGPO_S3_BUCKET)") from None
        raise
