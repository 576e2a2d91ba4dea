"""A small S3 client for ``s3://bucket/key`` demo sources: endpoint and credentials from the environment.

Why a wrapper around boto3: one place decides the environment variables (``OGPO_S3_ENDPOINT`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_DEFAULT_REGION``), the
timeouts and retries, path-style addressing (SeaweedFS and MinIO need it), and how failures read: every
failure is a StorageError naming the endpoint, bucket and key -- never the credentials.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ogpo.errors import StorageError

ENDPOINT_VARS = ("OGPO_S3_ENDPOINT", "AWS_ENDPOINT_URL")
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden", "InvalidToken"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


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


def endpoint_from_env() -> str | None:
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


def make_client(endpoint_url: str | None = None, *, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                max_attempts: int = 3):  # fmt: skip
    """A boto3 S3 client configured from the environment (explicit ``endpoint_url`` wins)."""
    import boto3
    from botocore.config import Config

    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key_id or not secret:
        raise StorageError("S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    cfg = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or endpoint_from_env(),
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=cfg,
    )


def _describe(client) -> str:
    return str(getattr(getattr(client, "meta", None), "endpoint_url", None) or "the default AWS endpoint")


def _translate(e: Exception, client, what: str, uri: S3Uri | None) -> StorageError:
    """Map botocore errors to StorageError messages that name endpoint/bucket/key but no secret."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = f"{what} {uri}" if uri else what
    endpoint = _describe(client)
    if isinstance(e, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return StorageError(f"{where}: S3 endpoint {endpoint} is unreachable ({type(e).__name__})")
    if isinstance(e, NoCredentialsError):
        return StorageError(f"{where}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _AUTH_CODES or status == "403":
            return StorageError(
                f"{where}: access denied by S3 endpoint {endpoint} ({code or status}); check the credentials in "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        if code in _MISSING_CODES or status == "404":
            return StorageError(f"{where}: no such object or bucket on S3 endpoint {endpoint} ({code or status})")
        return StorageError(f"{where}: S3 endpoint {endpoint} answered {code or status}")
    return StorageError(f"{where}: S3 request to {endpoint} failed ({type(e).__name__})")


def _guard(client, what: str, uri: S3Uri | None, fn):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (BotoCoreError, ClientError) as e:
        raise _translate(e, client, what, uri) from None


def download(uri: str, dest: str | os.PathLike, client=None) -> Path:
    """Fetch ``uri`` to ``dest`` atomically (temp file in dest's folder, then rename)."""
    loc = parse_s3_uri(uri)
    client = client or make_client()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        _guard(client, "download", loc, lambda: client.download_file(loc.bucket, loc.key, tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def upload(path: str | os.PathLike, uri: str, client=None) -> None:
    """Put a local file at ``uri``."""
    loc = parse_s3_uri(uri)
    client = client or make_client()
    if not Path(path).is_file():
        raise StorageError(f"upload {loc}: local file {path} does not exist")
    _guard(client, "upload", loc, lambda: client.upload_file(str(path), loc.bucket, loc.key))


def ensure_bucket(bucket: str, client=None) -> None:
    """Create ``bucket`` unless it exists (tests and local setups)."""
    from botocore.exceptions import ClientError

    client = client or make_client()
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        _guard(client, "create bucket", None, lambda: client.create_bucket(Bucket=bucket))
    except Exception as e:  # unreachable endpoint etc.
        raise _translate(e, client, f"head bucket {bucket}", None) from None
