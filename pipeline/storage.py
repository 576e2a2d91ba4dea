"""The project's one S3 access path: settings from the environment, boto3 clients, the DVC remote `s3`.

Everything that talks to the object store goes through here with the same rules: the DVC remote and the
resumable stage state (``OGPO_S3_BUCKET``), and ``s3://bucket/key`` demo sources of the ingest stage
(:func:`download`, run by pipeline/sources.py; the library itself reads local files only). The same variables
work against SeaweedFS on 127.0.0.1 and against AWS S3: leave the endpoint unset for AWS, and give either a
profile (``AWS_PROFILE``) or keys (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``). Secrets are never written
into DVC config files: DVC (through aiobotocore) and boto3 read them from the environment themselves, so a
worker's workspace holds only the endpoint, bucket, region and profile name, and no message names a secret.

Environment variables:

- ``OGPO_S3_BUCKET`` (required for the DVC remote and stage state; not for demo sources, whose URI names the
  bucket): the bucket holding the DVC remote and the resumable stage state.
- ``OGPO_S3_PREFIX`` (default ``dvc``): key prefix of the DVC remote inside the bucket.
- ``OGPO_S3_ENDPOINT`` (optional; falls back to ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``): unset = AWS.
- ``OGPO_S3_REGION`` (optional; falls back to ``AWS_REGION``/``AWS_DEFAULT_REGION``, then ``us-east-1``).
- ``AWS_PROFILE`` or ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``).
"""

from __future__ import annotations

import os
import re
import tempfile
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
ENDPOINT_VARS = ("OGPO_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARS = ("OGPO_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"


@dataclass(frozen=True)
class S3Access:
    """How to reach the object store and authenticate, for any bucket; ``repr`` never shows a secret."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    profile: str | None = None


@dataclass(frozen=True)
class S3Settings:
    """The bucket and prefix of the DVC remote plus the fields of :class:`S3Access`; no secret in it."""

    bucket: str
    prefix: str = "dvc"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    profile: str | None = None

    @property
    def remote_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | tuple[None, None]:
    for name in names:
        if env.get(name):
            return name, env[name]
    return None, None


def access_from_env(env: Mapping[str, str] | None = None) -> S3Access:
    """Read :class:`S3Access` from ``env`` (default ``os.environ``); raises ConfigError naming the variable."""
    env = os.environ if env is None else env
    var, endpoint = _first(env, ENDPOINT_VARS)
    if endpoint and not re.match(r"^https?://[^\s/]+", endpoint):
        raise ConfigError(f"{var}={endpoint!r} must start with http:// or https:// (the S3 endpoint URL)")
    region = _first(env, REGION_VARS)[1] or "us-east-1"
    profile = env.get("AWS_PROFILE") or None
    has_keys = bool(env.get("AWS_ACCESS_KEY_ID")) and bool(env.get("AWS_SECRET_ACCESS_KEY"))
    if bool(env.get("AWS_ACCESS_KEY_ID")) != bool(env.get("AWS_SECRET_ACCESS_KEY")):
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
    if profile and has_keys:
        # boto gives keys precedence silently; refuse the ambiguity instead of guessing.
        raise ConfigError("set either AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not both")
    return S3Access(endpoint_url=endpoint, region=region, profile=profile)


def settings_from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """Read :class:`S3Settings` from ``env`` (default ``os.environ``); raises ConfigError naming the variable."""
    env = os.environ if env is None else env
    bucket = env.get("OGPO_S3_BUCKET", "").strip()
    if not bucket:
        raise ConfigError("OGPO_S3_BUCKET is not set: the S3 bucket of the DVC remote is required")
    if not _BUCKET_RE.match(bucket):
        raise ConfigError(f"OGPO_S3_BUCKET={bucket!r} is not a valid S3 bucket name")
    prefix = env.get("OGPO_S3_PREFIX", "dvc").strip("/")
    access = access_from_env(env)
    return S3Settings(
        bucket=bucket, prefix=prefix, endpoint_url=access.endpoint_url, region=access.region, profile=access.profile
    )


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
        s3={"addressing_style": "path"},  # SeaweedFS and MinIO need path-style addressing
        signature_version="s3v4",
    )


def s3_client(settings: S3Settings | S3Access | None = None, connect_timeout: float = CONNECT_TIMEOUT_S,
              max_attempts: int = MAX_ATTEMPTS):  # fmt: skip
    """A boto3 S3 client for ``settings`` (default: :func:`access_from_env`) with retries and timeouts.

    One session for every case: on ``AWS_PROFILE`` when set, else boto3's own chain, which reads the keys from
    the environment (they are never passed around or stored here).
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    settings = settings or access_from_env()
    try:
        session = boto3.session.Session(profile_name=settings.profile, region_name=settings.region)
        retries = Config(connect_timeout=connect_timeout, retries={"max_attempts": max_attempts, "mode": "standard"})
        return session.client("s3", endpoint_url=settings.endpoint_url, config=boto_config().merge(retries))
    except (BotoCoreError, ValueError) as e:  # unknown profile, malformed endpoint or region
        raise ConfigError(f"cannot make an S3 client: {redact(_first_line(e))}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


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


_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden", "InvalidToken"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


def guarded(what: str, fn, *args, **kwargs):
    """Call a boto3 operation; connection faults become TransientError, other failures StorageError.

    The messages say which kind of failure it was (credentials, missing object, server) and never name a
    secret.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        return fn(*args, **kwargs)
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as e:
        raise TransientError(f"{what}: object store unreachable, will retry ({type(e).__name__})") from None
    except NoCredentialsError:
        raise StorageError(f"{what}: no S3 credentials found (set {CREDENTIALS_HINT})") from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            raise TransientError(f"{what}: object store error {code or status}, will retry") from None
        if code in _AUTH_CODES or status == 403:
            raise StorageError(
                f"{what}: object store answered {code or status}: access denied (check {CREDENTIALS_HINT})"
            ) from None
        if code in _MISSING_CODES or status == 404:
            raise StorageError(f"{what}: object store answered {code or status}: no such object or bucket") from None
        raise StorageError(f"{what}: object store answered {code or status}") from None
    except BotoCoreError as e:
        raise StorageError(f"{what}: {redact(_first_line(e))}") from None


# -- s3://bucket/key objects (the ingest stage's demo sources) ----------------------------------------------
@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> S3Uri:
    """``s3://bucket/some/key`` -> S3Uri; StorageError if it is not of that form."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise StorageError(f"S3 URI {uri!r} must look like s3://bucket/key (an object, not a prefix)")
    return S3Uri(bucket, key)


def _where(client) -> str:
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    return f"S3 endpoint {endpoint}" if endpoint else "AWS S3"


def _one_shot(what: str, client, fn, *args) -> None:
    """:func:`guarded` for a command-line answer: an unreachable store is an error here, not a retry."""
    try:
        guarded(what, fn, *args)
    except StorageError as e:  # TransientError included: name the endpoint, drop "will retry"
        text = str(e).replace(", will retry", "").replace(" unreachable", " is unreachable")
        raise StorageError(text.replace(f"{what}: object store ", f"{what}: {_where(client)} ", 1)) from None


def download(uri: str, dest: str | os.PathLike, client=None) -> Path:
    """Fetch object ``uri`` to ``dest`` atomically (temp file in dest's folder, then rename); returns dest.

    The client defaults to :func:`s3_client` on :func:`access_from_env`: the same endpoint, region, profile
    and keys as the DVC remote. Failures are one-line StorageError/ConfigError naming the URI and endpoint.
    """
    loc = parse_s3_uri(uri)
    client = client or s3_client()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        _one_shot(f"download {loc}", client, client.download_file, loc.bucket, loc.key, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def upload(path: str | os.PathLike, uri: str, client=None) -> None:
    """Put local file ``path`` at object ``uri`` (tests and local setups)."""
    loc = parse_s3_uri(uri)
    client = client or s3_client()
    if not Path(path).is_file():
        raise StorageError(f"upload {loc}: local file {path} does not exist")
    _one_shot(f"upload {loc}", client, client.upload_file, str(path), loc.bucket, loc.key)


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
        cause = e.__context__  # classified by the answer, not the text (an endpoint's port may read "4035")
        code, status = "", 0
        if isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status == 403 or code in _AUTH_CODES:
            raise StorageError(
                f"{where} refused the credentials for bucket {settings.bucket!r} (check {CREDENTIALS_HINT})"
            ) from None
        if status == 404 or code in _MISSING_CODES:
            raise StorageError(f"bucket {settings.bucket!r} does not exist at {where} (OGPO_S3_BUCKET)") from None
        raise
