"""A git workspace at one revision, and the git/DVC commands a worker runs in it.

A worker needs only the git URL, a revision and the object store: it clones the revision into a fresh
directory, selects the params profile, points DVC at the S3 remote, and runs ``dvc repro --pull`` for one
stage. ``--pull`` pulls the run-cache and restores every upstream stage from it (their outputs come from
the remote), so workers share nothing but the bucket. Command output is redacted before it is logged, and
failures are classified as transient (retry) or permanent (fail with one clear line).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ogpo.errors import ConfigError, OGPOError, StorageError
from pipeline import storage
from pipeline.storage import TransientError

__all__ = ["TransientError", "StageError", "Workspace", "CmdResult"]

log = logging.getLogger(__name__)

PROFILES = ("tiny", "cpu", "square", "transport", "tool_hang")

# Substrings of DVC/boto/aiohttp errors that mean "try again later"; anything else is permanent.
_TRANSIENT = (
    "Could not connect to the endpoint",
    "Connection refused",
    "Cannot connect to host",
    "ConnectTimeout",
    "Connect timeout",
    "ReadTimeout",
    "Read timeout",
    "timed out",
    "Connection reset",
    "Connection was closed",
    "ServerDisconnected",
    "Service Unavailable",
    "SlowDown",
    "(503)",
    "(500)",
    "InternalError",
    "Temporary failure in name resolution",
    "Remote end closed connection",
    "failed to transfer",
)
_AUTH = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "(403)", "ExpiredToken")


class StageError(OGPOError):
    """A stage command failed (its own error, not the storage's): retrying will not help."""


@dataclass
class CmdResult:
    args: list[str]
    returncode: int
    output: str
    seconds: float


@dataclass
class Workspace:
    """A checked-out revision on this worker, ready for DVC."""

    path: Path
    sha: str
    env: dict[str, str] = field(default_factory=dict)


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for git/dvc/stage subprocesses: this interpreter's bin first (dvc.yaml runs ``python``)."""
    env = storage.client_env()
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("MUJOCO_GL", "egl")
    env["GIT_TERMINAL_PROMPT"] = "0"
    if extra:
        env.update(extra)
    return env


def run(
    args: Sequence[str],
    cwd: str | Path,
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> CmdResult:
    """Run ``args``, streaming redacted output lines to ``on_line``; returns the redacted output."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = storage.redact(raw.rstrip("\n"), env)
            lines.append(line)
            if on_line is not None and line.strip():
                on_line(line)
        rc = proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return CmdResult(list(args), rc, "\n".join(lines), time.monotonic() - t0)


def classify_failure(what: str, res: CmdResult) -> OGPOError:
    """Turn a failed git/dvc command into one clear error; transient storage faults become TransientError."""
    text = res.output
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "error" in ln.lower()]
    detail = _summary(errors[-1] if errors else (text.strip().splitlines() or ["no output"])[-1])
    if any(s in text for s in _AUTH):
        return StorageError(
            f"{what}: the object store refused the credentials (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            f"or AWS_PROFILE): {detail}"
        )
    if "NoSuchBucket" in text or "bucket does not exist" in text:
        return StorageError(f"{what}: bucket not found (check OGPO_S3_BUCKET): {detail}")
    if any(s in text for s in _TRANSIENT):
        return TransientError(f"{what}: object store unreachable or failing, will retry: {detail}")
    return StageError(f"{what} failed (exit {res.returncode}): {detail}")


def _summary(line: str) -> str:
    line = re.sub(r"^ERROR:\s*", "", line.strip())
    return line[:400]


def check(what: str, res: CmdResult) -> CmdResult:
    if res.returncode != 0:
        raise classify_failure(what, res)
    return res


def clone(repo_url: str, rev: str, dest: Path, env: Mapping[str, str]) -> str:
    """Clone ``repo_url`` into ``dest`` and check out ``rev`` (detached); returns the full commit sha."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    res = run(["git", "clone", "--quiet", "--no-checkout", repo_url, str(dest)], dest.parent, env)
    if res.returncode != 0:
        raise ConfigError(f"cannot clone git repository {repo_url!r}: {_summary(res.output.splitlines()[-1])}")
    sha = resolve_rev(dest, rev, env)
    check(f"git checkout {sha[:12]}", run(["git", "checkout", "--quiet", "--detach", sha], dest, env))
    return sha


def resolve_rev(repo: Path, rev: str, env: Mapping[str, str]) -> str:
    """Full sha of ``rev`` (commit, tag, branch or remote branch) in the clone ``repo``; ConfigError if unknown."""
    for cand in (rev, f"origin/{rev}"):
        res = run(["git", "rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"], repo, env)
        if res.returncode == 0 and res.output.strip():
            return res.output.strip().splitlines()[-1]
    raise ConfigError(f"unknown git revision {rev!r} in the repository")


def apply_profile(ws: Workspace, profile: str | None, on_line: Callable[[str], None] | None = None) -> None:
    """Write params.yaml from ``profiles/<profile>.yaml`` with the project's own command (if a profile is set)."""
    if profile is None:
        return
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    res = run([sys.executable, "-m", "stages.profile", profile], ws.path, ws.env, on_line)
    check(f"python -m stages.profile {profile}", res)


def apply_overrides(ws: Workspace, overrides: Mapping[str, object]) -> None:
    """Set dotted ``section.key`` values in params.yaml (after the profile); unknown sections are rejected."""
    if not overrides:
        return
    path = ws.path / "params.yaml"
    params = yaml.safe_load(path.read_text()) if path.exists() else {}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = params
        for i, key in enumerate(parts[:-1]):
            if not isinstance(node, dict) or key not in node:
                raise ConfigError(f"params.yaml: override {dotted!r}: no key {'.'.join(parts[: i + 1])!r}")
            node = node[key]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"params.yaml: override {dotted!r}: no key {dotted!r}")
        node[parts[-1]] = value
    tmp = path.with_name(".params.yaml.tmp")
    tmp.write_text(yaml.safe_dump(params, sort_keys=False))
    os.replace(tmp, path)


def prepare(
    repo_url: str,
    rev: str,
    dest: Path,
    profile: str | None = None,
    overrides: Mapping[str, object] | None = None,
    settings: storage.S3Settings | None = None,
    cache_dir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Workspace:
    """Clone, select the profile, apply overrides, and configure the S3 remote (and a shared local cache)."""
    env = worker_env()
    sha = clone(repo_url, rev, dest, env)
    ws = Workspace(path=dest, sha=sha, env=env)
    if settings is not None:
        storage.configure_dvc_remote(dest, settings)
    if cache_dir is not None:
        _set_local_cache(dest, cache_dir)
    apply_profile(ws, profile, on_line)
    apply_overrides(ws, overrides or {})
    (dest / ".git" / "ogpo-prepared").write_text(sha)
    return ws


def reuse(dest: Path, sha: str) -> Workspace | None:
    """The workspace at ``dest`` if a previous attempt fully prepared it at ``sha``, else None."""
    marker = dest / ".git" / "ogpo-prepared"
    if marker.is_file() and marker.read_text().strip() == sha:
        return Workspace(path=dest, sha=sha, env=worker_env())
    return None


def _set_local_cache(repo: Path, cache_dir: Path) -> None:
    """Share one DVC cache between this worker's workspaces (content-addressed, so safe): re-runs skip downloads."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = repo / ".dvc" / "config.local"
    text = path.read_text() if path.exists() else ""
    text = storage._strip_sections(text, {"cache"}).rstrip()
    text += f'\n[cache]\n    dir = {cache_dir}\n    type = "reflink,hardlink,copy"\n'
    tmp = path.with_name(".config.local.tmp")
    tmp.write_text(text.lstrip())
    os.replace(tmp, path)


def dvc(ws: Workspace, *args: str, on_line: Callable[[str], None] | None = None) -> CmdResult:
    """Run ``dvc <args>`` in the workspace; raises a classified error on failure."""
    res = run([str(Path(sys.executable).parent / "dvc"), *args], ws.path, ws.env, on_line)
    return check("dvc " + " ".join(args), res)


def _own_code_env(ws: Workspace) -> dict[str, str]:
    """Env that makes ``python -P -m pipeline.x`` import this worker's pipeline code, not the workspace's."""
    import pipeline

    env = dict(ws.env)
    env["PYTHONPATH"] = str(Path(pipeline.__file__).resolve().parent.parent)
    return env


def probe(ws: Workspace, targets: Sequence[str], on_line: Callable[[str], None] | None = None) -> dict:
    """Restore-only ``dvc repro --pull`` (pipeline/dvcx.py): ``{"complete": bool, "lock"|"first_miss": ...}``."""
    import json

    argv = [sys.executable, "-P", "-m", "pipeline.dvcx", "probe", *targets]
    res = check("run-cache probe", run(argv, ws.path, _own_code_env(ws), on_line))
    for line in reversed(res.output.splitlines()):
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE ") :])
    return {"complete": False, "error": "probe printed no result"}


def push_uncached(ws: Workspace, stage: str, on_line: Callable[[str], None] | None = None) -> CmdResult:
    """Push the objects of the stage's ``cache: false`` outputs (see pipeline/dvcx.py for why)."""
    # -P: do not import the workspace's own (possibly older) pipeline package; use this worker's code.
    argv = [sys.executable, "-P", "-m", "pipeline.dvcx", "push-uncached", stage]
    res = run(argv, ws.path, _own_code_env(ws), on_line)
    return check(f"push uncached outputs of {stage}", res)


def stage_graph(repo: Path) -> dict[str, list[str]]:
    """``{stage: [upstream stages]}`` of the dvc.yaml pipeline (foreach/matrix entries expanded)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    try:
        with Repo(str(repo)) as r:
            graph = r.index.graph
            out: dict[str, list[str]] = {}

            def name(stage: PipelineStage) -> str:
                rel = os.path.relpath(stage.dvcfile.path, repo)
                return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

            for stage in graph.nodes:
                if not isinstance(stage, PipelineStage):
                    continue
                ups = [name(s) for s in graph.successors(stage) if isinstance(s, PipelineStage)]
                out[name(stage)] = sorted(ups)
    except Exception as e:  # DVC raises many types for a malformed dvc.yaml
        raise ConfigError(f"{repo / 'dvc.yaml'}: cannot read the pipeline: {e}") from e
    if not out:
        raise ConfigError(f"{repo / 'dvc.yaml'}: no stages found")
    return out


def topo_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Stages in an order where each comes after its upstreams (stable: ties keep dvc.yaml-independent name order)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in seen:
            return
        if node in path:
            raise ConfigError(f"dvc.yaml: cycle through stage {node!r}")
        for up in graph.get(node, ()):
            visit(up, (*path, node))
        seen.add(node)
        done.append(node)

    for node in sorted(graph):
        visit(node, ())
    return done


def upstream_closure(graph: Mapping[str, Sequence[str]], targets: Sequence[str]) -> set[str]:
    """``targets`` and every stage they depend on."""
    unknown = [t for t in targets if t not in graph]
    if unknown:
        raise ConfigError(f"dvc.yaml: unknown stage(s) {', '.join(map(repr, unknown))}; known: {', '.join(graph)}")
    out: set[str] = set()
    todo = list(targets)
    while todo:
        node = todo.pop()
        if node not in out:
            out.add(node)
            todo.extend(graph[node])
    return out


def lock_entry(ws: Workspace, stage: str) -> dict:
    """The stage's entry in the workspace's dvc.lock (outs with their md5), or {} if absent."""
    path = ws.path / "dvc.lock"
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    return lock.get("stages", {}).get(stage, {})  # foreach entries are flat keys "name@item" in DVC 3


_RAN = re.compile(r"^Running stage '([^']+)'")
_RESTORED = re.compile(r"^Stage '([^']+)' is cached")
_UNCHANGED = re.compile(r"^Stage '([^']+)' didn't change")


def parse_repro(output: str) -> tuple[list[str], list[str], list[str]]:
    """(stages that ran, restored from the run-cache, unchanged in this workspace) from ``dvc repro``."""
    ran, restored, unchanged = [], [], []
    for line in output.splitlines():
        for regex, bucket in ((_RAN, ran), (_RESTORED, restored), (_UNCHANGED, unchanged)):
            if m := regex.match(line.strip()):
                bucket.append(m.group(1))
    return ran, restored, unchanged
