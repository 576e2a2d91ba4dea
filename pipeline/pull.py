"""Fetch a versioned artifact (a checkpoint directory) at a git revision through DVC, and verify it.

``ogpo pull models/finetuned --rev <tag|branch|commit>`` reads the revision's dvc.lock (through DVC's
filesystem API, so any git URL or local checkout works), downloads the files from the S3 remote described
by the environment (pipeline/storage.py), checks every file's md5 against DVC's record and, for a
checkpoint, the weights' sha256 against its config.json and the safetensors header, and only then moves
the directory into place (temp + rename). Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ogpo.checkpoint import CONFIG, WEIGHTS, file_sha256
from ogpo.errors import CheckpointError, ConfigError, OGPOError, StorageError
from pipeline import storage

# Short names for the pipeline's checkpoint directories.
ALIASES = {
    "bc": "models/bc",
    "critic": "models/critic",
    "finetuned": "models/finetuned",
    "policy": "models/finetuned",
}


def artifact_path(artifact: str) -> str:
    path = ALIASES.get(artifact, artifact).strip("/")
    if not path or path.startswith("..") or os.path.isabs(path):
        raise ConfigError(f"artifact {artifact!r}: give a path inside the repository, e.g. models/finetuned")
    return path


def default_repo() -> str:
    """``OGPO_GIT_URL`` if set, else the git checkout containing the current directory."""
    if url := os.environ.get("OGPO_GIT_URL"):
        return url
    res = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if res.returncode != 0:
        raise ConfigError("not inside a git checkout and OGPO_GIT_URL is not set: pass --repo")
    return res.stdout.strip()


def resolve_rev(repo: str, rev: str) -> str:
    """Full sha of ``rev`` in a local checkout (also as ``origin/<rev>``); remote URLs are left to DVC."""
    if not Path(repo).is_dir():
        return rev
    for cand in (rev, f"origin/{rev}"):
        res = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"],
            cwd=repo,
            capture_output=True,
            text=True,
        )
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    raise ConfigError(f"unknown revision {rev!r} in {repo}")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _open_fs(repo: str, rev: str, settings: storage.S3Settings):
    from dvc.api import DVCFileSystem

    remote = storage.REMOTE_NAME
    config = {"core": {"remote": remote, "analytics": "false"}, "remote": {remote: storage.dvc_remote_config(settings)}}
    try:
        return DVCFileSystem(repo, rev=rev, config=config)
    except Exception as e:  # scmrepo/dvc raise many types for an unknown rev or unreachable git repo
        raise ConfigError(f"cannot open {repo} at revision {rev!r}: {_one_line(e)}") from e


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def storage_error(e: BaseException, what: str, settings: storage.S3Settings) -> OGPOError:
    """One clear line for a failure deep inside DVC/s3fs: credentials, bucket, or unreachable endpoint."""
    where = settings.endpoint_url or "AWS S3"
    for exc in _chain(e):
        if isinstance(exc, OGPOError):
            return exc
        text = f"{type(exc).__name__}: {exc}"
        if any(s in text for s in ("403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")):
            hint = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            return StorageError(f"{what}: {where} refused the credentials ({hint})")
        if "NoSuchBucket" in text or "bucket does not exist" in text:
            return StorageError(f"{what}: bucket {settings.bucket!r} does not exist at {where}")
        if any(s in text for s in ("Could not connect", "Cannot connect", "Connection refused", "ConnectTimeout")):
            return StorageError(f"{what}: object store {where} is unreachable")
    return StorageError(f"{what}: {_one_line(e)}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return storage.redact(text[0] if text else type(e).__name__)[:300]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check config.json + weights sha256 + safetensors header without loading (or unpickling) tensors."""
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG}: unreadable config ({e})") from e
    want = config.get("weights_sha256")
    got = file_sha256(path / WEIGHTS)
    if want != got:
        raise CheckpointError(
            f"{path / WEIGHTS}: sha256 {got[:12]}... does not match config.json ({str(want)[:12]}...)"
        )
    with open(path / WEIGHTS, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 0 < header_len < 100_000_000:
            raise CheckpointError(f"{path / WEIGHTS}: not a safetensors file (header length {header_len})")
        try:
            json.loads(f.read(header_len))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path / WEIGHTS}: corrupt safetensors header ({e})") from e
    return config


def pull(artifact: str, rev: str, out: Path | None = None, repo: str | None = None) -> Path:
    """Download ``artifact`` (path or alias) at ``rev`` into ``out`` after verifying it; returns ``out``.

    Default ``out``: ``pulled/<sha12>/<path>``. Raises ConfigError (unknown rev/artifact), StorageError
    (remote unreachable/unauthorized) or CheckpointError (hash or config mismatch), each with one line.
    """
    path = artifact_path(artifact)
    repo = repo or default_repo()
    settings = storage.settings_from_env()
    sha = resolve_rev(repo, rev)
    storage.check_bucket(settings)
    fs = _open_fs(repo, sha, settings)
    try:
        try:
            exists = fs.exists(path)
            if exists:
                files = list(fs.find(path, detail=False)) if fs.isdir(path) else [path]
                expected = {f: (fs.info(f).get("dvc_info") or {}).get("md5") for f in files}
        except Exception as e:  # DVC/s3fs wrap storage errors in their own types
            raise storage_error(e, f"listing {path} at {rev!r}", settings) from None
        if not exists:
            raise ConfigError(f"artifact {path!r} not found at revision {rev!r} ({sha[:12]}) of {repo}")
        out = Path(out) if out else Path("pulled") / sha[:12] / path
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            for f in files:
                rel = os.path.relpath(f, path) if f != path else Path(path).name
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(f, str(dest))
                except FileNotFoundError as e:
                    if "bucket" in str(e).lower():
                        raise storage_error(e, f"downloading {f}", settings) from None
                    raise StorageError(f"{f} at {rev!r} is not in the remote s3://{settings.bucket}") from None
                except Exception as e:
                    raise storage_error(e, f"downloading {f}", settings) from None
                if expected[f] and _md5(dest) != expected[f]:
                    raise CheckpointError(f"{f}: md5 of the download does not match dvc.lock at {sha[:12]}")
            if (tmp / WEIGHTS).exists() and (tmp / CONFIG).exists():
                verify_checkpoint(tmp)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        close = getattr(fs, "close", None)
        if close:
            close()
    return out


def load_policy(rev: str, artifact: str = "models/finetuned", repo: str | None = None, which: str = "actor"):
    """Pull a policy checkpoint at ``rev`` (cached per commit) and build the GCP from it, never unpickling."""
    from ogpo.policy_io import load_policy_dir

    cache = Path(os.environ.get("OGPO_CACHE_DIR") or Path.home() / ".cache" / "ogpo")
    repo = repo or default_repo()
    sha = resolve_rev(repo, rev)
    out = cache / sha[:12] / artifact_path(artifact)
    if not out.exists():
        pull(artifact, sha, out=out, repo=repo)
    else:
        verify_checkpoint(out)
    return load_policy_dir(out, which=which)
