"""Prefect tasks: plan the DVC pipeline at a revision, run one stage in a fresh workspace, publish the lock.

Every stage task is self-contained (clone the revision, ``dvc repro --pull <stage>``, ``dvc push
--run-cache <stage>``), so any worker with the git URL and the object store can run it, and a retry simply
runs it again: DVC's run-cache makes a stage that already ran for the same code, params and inputs a
restore, not a re-run. Only transient storage faults are retried; a stage's own error fails at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from ogpo.errors import ConfigError
from pipeline import storage, workspace
from pipeline.statesync import StateMirror, Uploader

# Stages whose resumable state (``state/`` in the workspace, outside DVC outs) is mirrored to the bucket.
RESUMABLE = re.compile(r"^finetune(@.*)?$")
STATE_DIR = "state"
STATE_UPLOAD_PERIOD_S = float(os.environ.get("OGPO_STATE_UPLOAD_PERIOD_S", "5"))


@dataclass
class StageSpec:
    """Everything a worker needs to run one stage: no shared disk, only git and the bucket."""

    repo_url: str
    sha: str
    stage: str
    run_key: str
    profile: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    collect: list[str] = field(default_factory=list)
    label: str = ""  # the task run's name: the stage, or "stage#seed<N>" when fanned out over seeds

    def __post_init__(self) -> None:
        self.label = self.label or self.stage


@dataclass
class StageResult:
    stage: str
    sha: str
    ran: list[str]
    restored: list[str]
    seconds: float
    lock: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)
    worker: str = ""


def work_root() -> Path:
    """Where workspaces are created on this worker (``OGPO_WORK_DIR``, default a temp dir)."""
    root = Path(os.environ.get("OGPO_WORK_DIR") or Path(tempfile.gettempdir()) / "ogpo-work")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _ws_dir(run_key: str, name: str) -> Path:
    """One directory per (run, stage node, process): parallel nodes never share a workspace."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return work_root() / f"{hashlib.sha1(run_key.encode()).hexdigest()[:12]}-{safe}-{os.getpid()}"


def _is_transient(task, task_run, state) -> bool:
    """Retry only storage faults that a later attempt can fix (connection refused, timeouts, 5xx)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        exc = None
    if isinstance(exc, workspace.TransientError):
        return True
    return "TransientError" in (state.message or "")


@task(name="plan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_is_transient)
def plan_pipeline(
    repo_url: str,
    rev: str,
    profile: str | None,
    overrides: dict[str, Any],
    run_key: str,
    targets: list[str] | None = None,
    collect: list[str] | None = None,
    run_probe: bool = True,
) -> dict[str, Any]:
    """Resolve ``rev`` to a commit, read the stage graph there, and probe the run-cache.

    The probe restores the wanted stages from the run-cache without running any: when all of them are
    hits (a re-run with nothing changed), the flow needs no stage task and finishes in seconds.
    Returns ``{"sha", "graph", "wanted", "probe"}``; ``probe["files"]`` holds the ``collect`` files.
    """
    logger = get_run_logger()
    dest = _ws_dir(run_key, f"plan-{rev}")
    settings = storage.settings_from_env()
    try:
        ws = workspace.prepare(
            repo_url, rev, dest, profile=profile, overrides=overrides, settings=settings, on_line=logger.info
        )
        graph = workspace.stage_graph(ws.path)
        # no targets: the root dvc.yaml's stages (what `dvc repro` runs), not the studies' (studies/*/dvc.yaml)
        wanted = workspace.upstream_closure(graph, targets) if targets else {s for s in graph if ":" not in s}
        probe = workspace.probe(ws, sorted(wanted)) if run_probe else {"complete": False, "skipped": True}
        if probe.get("complete"):
            probe["files"] = _read_files(ws, collect or [], "probe")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    logger.info("revision %s = %s; %d stages: %s", rev, ws.sha[:12], len(graph), ", ".join(graph))
    if probe.get("complete"):
        logger.info("every wanted stage is a run-cache hit: nothing to run")
    else:
        logger.info("run-cache probe: %s", probe.get("first_miss") or probe.get("error"))
    return {"sha": ws.sha, "graph": graph, "wanted": sorted(wanted), "probe": probe}


def _read_files(ws: workspace.Workspace, rels: list[str], what: str) -> dict[str, Any]:
    files = {}
    for rel in rels:
        path = ws.path / rel
        if not path.is_file():
            raise ConfigError(f"{what}: expected output {rel} is missing")
        files[rel] = json.loads(path.read_text()) if rel.endswith(".json") else path.read_text()
    return files


def _stage_body(spec: StageSpec, settings: storage.S3Settings, log_line) -> StageResult:
    """Run one stage in a fresh workspace; shared by the local task and the remote (gpu) stage flow."""
    t0 = time.monotonic()
    dest = _ws_dir(spec.run_key, spec.label)
    ws = workspace.reuse(dest, spec.sha)  # a retry in this process: keep what the last attempt computed
    reused = ws is not None
    if ws is None:
        ws = workspace.prepare(
            spec.repo_url,
            spec.sha,
            dest,
            profile=spec.profile,
            overrides=spec.overrides,
            settings=settings,
            on_line=log_line,
        )
    else:
        log_line(f"retry: reusing workspace {dest}")
    mirror = uploader = None
    if RESUMABLE.match(spec.stage):
        key = f"state/{spec.run_key}/{spec.stage}"
        mirror = StateMirror(key, ws.path / STATE_DIR, settings)
        if not reused and (n := mirror.restore()):
            log_line(f"resuming {spec.stage} from {n} state files in s3://{settings.bucket}/{key}")
        uploader = Uploader(mirror, STATE_UPLOAD_PERIOD_S)
        uploader.start()
    try:
        res = workspace.dvc(ws, "repro", "--pull", spec.stage, on_line=log_line)
    except BaseException:
        if uploader is not None:
            uploader.stop()
            with contextlib.suppress(Exception):  # best effort: keep the newest state for the retry
                mirror.upload_if_changed()
        raise
    if uploader is not None:
        uploader.stop()
    ran, restored, _unchanged = workspace.parse_repro(res.output)
    if spec.stage not in restored:  # a run-cache restore came from the remote: nothing new to push
        deps = ["--with-deps"] if set(ran) - {spec.stage} else []
        workspace.dvc(ws, "push", "--run-cache", *deps, spec.stage, on_line=log_line)
        for stage in ran:
            workspace.push_uncached(ws, stage, on_line=log_line)
    if mirror is not None:
        mirror.clear()  # the outputs are in DVC now; the state has served its purpose
    files = _read_files(ws, spec.collect, f"stage {spec.stage}")
    result = StageResult(
        stage=spec.stage,
        sha=spec.sha,
        ran=ran,
        restored=restored,
        seconds=round(time.monotonic() - t0, 2),
        lock=workspace.lock_entry(ws, spec.stage),
        files=files,
        worker=os.uname().nodename,
    )
    shutil.rmtree(dest, ignore_errors=True)
    return result


def record_result(settings: storage.S3Settings, run_key: str, result: StageResult) -> str:
    """Store a stage result in the bucket so a parent flow on another worker can read it."""
    key = f"runs/{run_key}/{result.stage}.json"
    client = storage.s3_client(settings)
    storage.guarded("recording the stage result", client.put_object, Bucket=settings.bucket, Key=key,
                    Body=json.dumps(asdict(result)))  # fmt: skip
    return key


def read_result(settings: storage.S3Settings, run_key: str, stage: str) -> StageResult:
    body = storage.s3_client(settings).get_object(Bucket=settings.bucket, Key=f"runs/{run_key}/{stage}.json")
    return StageResult(**json.loads(body["Body"].read()))


@task(
    name="stage",
    task_run_name="{spec.label}",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=_is_transient,
)
def run_stage(spec: StageSpec) -> StageResult:
    """Run one DVC stage here (pull inputs and run-cache, repro, push outputs and run-cache)."""
    logger = get_run_logger()
    settings = storage.settings_from_env()
    result = _stage_body(spec, settings, logger.info)
    record_result(settings, spec.run_key, result)
    verb = "ran" if spec.stage in result.ran else "restored from run-cache"
    logger.info("stage %s %s in %.1f s (ran: %s)", spec.stage, verb, result.seconds, result.ran or "none")
    return result


@task(
    name="stage-on-pool",
    task_run_name="{spec.label}@{pool}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=[10],
)
def run_stage_on_pool(spec: StageSpec, pool: str, deployment: str) -> StageResult:
    """Run one stage as a run of ``deployment`` (a worker in ``pool``, e.g. the GPU pool) and wait for it."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    params = {
        "rev": spec.sha,
        "repo_url": spec.repo_url,
        "profile": spec.profile,
        "overrides": spec.overrides,
        "targets": [spec.stage],
        "run_key": spec.run_key,
        "collect": spec.collect,
    }
    logger.info("submitting stage %s to work pool %r via deployment %s", spec.stage, pool, deployment)
    child = run_deployment(name=deployment, parameters=params, timeout=None, poll_interval=5)
    if child.state is None or not child.state.is_completed():
        name = child.state.name if child.state else "unknown"
        raise workspace.StageError(f"stage {spec.stage} on pool {pool!r} ended {name}: flow run {child.name}")
    return read_result(storage.settings_from_env(), spec.run_key, spec.stage)


@task(name="publish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_is_transient)
def publish_lock(
    repo_url: str,
    sha: str,
    profile: str | None,
    overrides: dict[str, Any],
    locks: Mapping[str, dict[str, Any]],
    branch: str,
    run_key: str,
    message: str,
) -> str:
    """Commit params.yaml and the merged dvc.lock on top of ``sha`` and push it to ``branch``.

    That commit is the versioned result: ``ogpo pull <artifact> --rev <branch or sha>`` resolves the
    checkpoint through its dvc.lock. Returns the new commit's sha.
    """
    logger = get_run_logger()
    dest = _ws_dir(run_key, f"publish-{branch}")
    try:
        ws = workspace.prepare(repo_url, sha, dest, profile=profile, overrides=overrides, on_line=logger.info)
        _write_lock(ws.path / "dvc.lock", locks)
        env = dict(ws.env)
        git = ["git", "-c", "user.name=ogpo", "-c", "user.email=ogpo@localhost"]
        workspace.check("git add", workspace.run([*git, "add", "-f", "params.yaml", "dvc.lock"], ws.path, env))
        commit = workspace.run([*git, "commit", "-q", "--allow-empty", "-m", message], ws.path, env)
        workspace.check("git commit", commit)
        new_sha = workspace.run(["git", "rev-parse", "HEAD"], ws.path, env).output.strip()
        push = workspace.run(["git", "push", "-q", "--force", "origin", f"HEAD:refs/heads/{branch}"], ws.path, env)
        workspace.check(f"git push to branch {branch}", push)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    logger.info("published results as commit %s on branch %s", new_sha[:12], branch)
    return new_sha


def _write_lock(path: Path, locks: Mapping[str, dict[str, Any]]) -> None:
    import yaml

    lock = {"schema": "2.0", "stages": {name: entry for name, entry in locks.items() if entry}}
    tmp = path.with_name(".dvc.lock.tmp")
    tmp.write_text(yaml.safe_dump(lock, sort_keys=False))
    os.replace(tmp, path)
