"""Ingestion: turn a demo source into a validated robomimic-layout dataset plus a JSON summary.

Why one function: the ``ingest`` stage (stages/ingest.py), notebooks and tests all need the same guarantees
regardless of where demos come from -- a local robomimic or raw robosuite file, a remote object such as
``s3://bucket/key``, or ``scripted:<task>`` demonstrations made here -- namely: the output is complete or absent
(temp file + rename), it was validated before anything was written, and its summary pins the content with a hash.
Library-side only: no params.yaml, DVC, Prefect or object-store knowledge. A remote source is read through a
``fetch`` function the caller passes (the ingest stage gets the object store's from pipeline/sources.py), which
copies the object to a local file; the library reads that copy and names the URI in its messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ogpo.data.demos import Dataset, Episode, content_hash, read_robomimic, train_valid_masks, write_robomimic
from ogpo.envs.robosuite import TaskSpec, task_spec
from ogpo.errors import ConfigError, DemoFormatError

SCRIPTED_PREFIX = "scripted:"
# fetch(uri, dest): copy the remote object ``uri`` to the local file ``dest``; errors are ogpo errors
Fetch = Callable[[str, Path], object]
log = logging.getLogger(__name__)


def is_remote(source: str) -> bool:
    """Whether ``source`` is a URI such as ``s3://bucket/key`` (not a path, ``file://`` or ``scripted:``)."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme != "file" and scheme.replace("+", "").replace("-", "").isalnum()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_args(count: int | None, seed: int, noise: float) -> None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ConfigError(f"ingest: count must be an integer >= 1 or None, got {count!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"ingest: seed must be an integer, got {seed!r}")
    if not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
        raise ConfigError(f"ingest: noise must be a finite number >= 0, got {noise!r}")


def summarize(
    episodes: list[Episode], spec: TaskSpec, masks: dict[str, list[str]], extra: dict[str, Any]
) -> dict[str, Any]:
    """The JSON summary: counts, lengths, success, obs layout, action bounds and the content hash."""
    lengths = [len(e) for e in episodes]
    acts = np.concatenate([e.actions for e in episodes])
    return {
        **extra,
        "task": spec.name,
        "robosuite_env": spec.robosuite_env,
        "episodes": len(episodes),
        "total_steps": int(sum(lengths)),
        "lengths": lengths,
        "length_min": int(min(lengths)),
        "length_max": int(max(lengths)),
        "length_mean": float(np.mean(lengths)),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "obs_keys": list(spec.obs_keys),
        "obs_key_dims": list(spec.obs_key_dims),
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "action_min": [float(x) for x in acts.min(0)],
        "action_max": [float(x) for x in acts.max(0)],
        "masks": {k: len(v) for k, v in sorted(masks.items())},
        "content_sha256": content_hash(episodes, spec),
    }


def _from_file(local: Path, spec: TaskSpec, count: int | None, filter_key: str | None):
    """Read (replaying states when the file has no observations) and clip actions as robosuite's controller."""
    ds: Dataset = read_robomimic(local, task=spec.name, filter_key=filter_key, clip=True, limit=count)
    if ds.actions_clipped:
        log.info(
            "%s: clipped %d action values to [-1, 1] as robosuite's controller does (largest |action| %.4g)",
            local,
            ds.actions_clipped,
            ds.action_abs_max,
        )
    episodes = ds.episodes
    names = {e.name for e in episodes}
    masks = {k: [n for n in v if n in names] for k, v in ds.masks.items()}
    masks = {k: v for k, v in masks.items() if v}
    if not masks:
        masks = train_valid_masks([e.name for e in episodes])
    args = dict(ds.env_args)
    args.setdefault("env_name", spec.robosuite_env)
    args["ogpo"] = {**args.get("ogpo", {}), "task": spec.name, "obs_keys": list(spec.obs_keys)}
    clipping = {"actions_clipped": ds.actions_clipped, "actions_abs_max_source": ds.action_abs_max}
    return episodes, masks, args, ds.source_format, clipping


def ingest(
    source: str,
    out_path: str | os.PathLike,
    task: str,
    count: int | None = None,
    seed: int = 0,
    noise: float = 0.0,
    filter_key: str | None = None,
    *,
    summary_path: str | os.PathLike | None = None,
    num_workers: int = 2,
    fetch: Fetch | None = None,
) -> dict[str, Any]:
    """Ingest ``source`` for ``task`` into ``out_path`` (robomimic HDF5) and a JSON summary; returns it.

    source: a local file (robomimic, robomimic without observations as convert_robosuite.py leaves it, or raw
    robosuite: the last two are replayed from their states), a remote URI such as ``s3://bucket/key`` (read through
    ``fetch(uri, dest)``, which copies it to a temporary local file, deleted afterwards; no ``fetch`` is a
    ConfigError) or ``scripted:<task>`` (needs ``count``; ``seed`` and ``noise`` apply).
    ``filter_key`` selects ``mask/<key>`` of a file source, then ``count`` keeps the first demos. Actions of a
    file source are clipped to [-1, 1] as robosuite's controller does; the summary counts the clipped values
    (``actions_clipped``) and gives the largest |action| before clipping (``actions_abs_max_source``).
    The summary goes to ``summary_path`` (default: out_path with suffix ``.json``). Bad input raises an
    ogpo error (DemoFormatError, StorageError, ConfigError, EnvError) and writes nothing.
    """
    spec = task_spec(task)
    _check_args(count, seed, noise)
    out_path = Path(out_path)
    summary_path = Path(summary_path) if summary_path is not None else out_path.with_suffix(".json")
    if summary_path == out_path:
        raise ConfigError(f"ingest: summary path equals the output path {out_path}")
    extra: dict[str, Any] = {"source": source, "count": count, "seed": seed, "noise": float(noise)}
    extra["filter_key"] = filter_key

    if not isinstance(source, str) or not source:
        raise ConfigError(f"ingest: source must be a non-empty string, got {source!r}")
    if source.startswith(SCRIPTED_PREFIX):
        from ogpo.envs.experts import collect_demos

        src_task = source[len(SCRIPTED_PREFIX) :]
        task_spec(src_task)
        if src_task != spec.name:
            raise ConfigError(f"ingest: source {source!r} makes demos for {src_task!r} but task is {spec.name!r}")
        if count is None:
            raise ConfigError(f"ingest: source {source!r} needs count (how many demos to make)")
        if filter_key is not None:
            raise ConfigError(f"ingest: filter_key {filter_key!r} applies to file sources, not {source!r}")
        episodes = collect_demos(spec.name, count, seed, noise, num_workers=num_workers)
        for i, e in enumerate(episodes):
            e.name = f"demo_{i}"
        masks = train_valid_masks([e.name for e in episodes])
        from ogpo.envs.robosuite import env_args

        args = env_args(spec)
        args["ogpo"].update({"scripted": True, "seed": seed, "noise": float(noise)})
        extra["source_format"] = "scripted"
        abs_max = float(np.abs(np.concatenate([e.actions for e in episodes])).max())
        clipping = {"actions_clipped": 0, "actions_abs_max_source": abs_max}  # the experts clip their own actions
    elif is_remote(source):
        if fetch is None:
            raise ConfigError(
                f"ingest: source {source!r} is a remote object and no fetch function was given to copy it to a "
                "local file (the library reads local files only)"
            )
        tmpdir = Path(tempfile.mkdtemp(prefix="ogpo-ingest-"))
        local = tmpdir / "source.hdf5"
        try:
            fetch(source, local)
            if not local.is_file():
                raise ConfigError(f"ingest: fetching {source!r} wrote no file")
            extra["source_sha256"] = file_sha256(local)
            episodes, masks, args, fmt, clipping = _from_file(local, spec, count, filter_key)
        except (DemoFormatError, ConfigError) as e:  # name the object, not its temporary copy
            raise type(e)(str(e).replace(str(local), source)) from None
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        extra["source_format"] = fmt
    else:
        local = Path(source[len("file://") :] if source.startswith("file://") else source)
        if local.resolve() == out_path.resolve():
            raise ConfigError(f"ingest: output path {out_path} is the source file itself")
        episodes, masks, args, fmt, clipping = _from_file(local, spec, count, filter_key)
        extra["source_sha256"] = file_sha256(local)
        extra["source_format"] = fmt
    extra.update(clipping)

    summary = summarize(episodes, spec, masks, extra)
    write_robomimic(out_path, episodes, args, task=spec.name, masks=masks)
    written = read_robomimic(out_path, task=spec.name)  # the file on disk is what the summary describes
    if written.content_hash() != summary["content_sha256"]:
        out_path.unlink(missing_ok=True)
        raise ConfigError(f"ingest: {out_path} does not read back identically; removed")  # pragma: no cover
    summary["output"] = str(out_path)
    summary["file_sha256"] = file_sha256(out_path)
    _write_json_atomic(summary_path, summary)
    return summary
