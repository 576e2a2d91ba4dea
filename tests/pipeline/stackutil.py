"""Helpers for tests against a real local stack (Prefect server + process worker + SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline import serve

BIN = Path(sys.executable).parent


@dataclass
class Ctx:
    stack: serve.Stack
    env: dict[str, str]  # what `. stack.env` gives a shell, on top of os.environ
    origin: Path  # clone of this repository: the flow code and the real pipeline
    fake: Path  # the 3-stage fake pipeline (fast mechanics tests)

    def client(self):
        return serve._client(self.stack.api_url)

    def run_env(self, **extra: str) -> dict[str, str]:
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        home = str(self.stack.home / "cli-prefect")
        return {**os.environ, **self.env, "PATH": path, "PREFECT_HOME": home, **extra}


def deployment_run(ctx: Ctx, name: str, params: dict, watch: bool = True, timeout: float = 900,
                   job_variables: dict | None = None) -> tuple[int, str, str | None]:  # fmt: skip
    """``prefect deployment run NAME --params JSON [--watch]``: (exit code, output, flow run id)."""
    argv = [str(BIN / "prefect"), "deployment", "run", name, "--params", json.dumps(params)]
    for key, value in (job_variables or {}).items():
        argv += ["--job-variable", f"{key}={json.dumps(value)}"]
    if watch:
        argv += ["--watch", "--watch-timeout", str(int(timeout))]
    res = subprocess.run(argv, env=ctx.run_env(), capture_output=True, text=True, timeout=timeout + 60)
    out = res.stdout + res.stderr
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    return res.returncode, out, m.group(1) if m else None


def flow_run(ctx: Ctx, run_id: str):
    with ctx.client() as c:
        return c.read_flow_run(uuid.UUID(run_id))


def wait_state(ctx: Ctx, run_id: str, final: bool = True, timeout: float = 900, pred=None):
    """Poll a flow run until it is in a final state (or ``pred(run)`` holds); returns the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = flow_run(ctx, run_id)
        if pred is not None and pred(run):
            return run
        if final and pred is None and run.state is not None and run.state.is_final():
            return run
        time.sleep(1.0)
    raise TimeoutError(f"flow run {run_id} not done after {timeout} s: {flow_run(ctx, run_id).state}")


def state_history(ctx: Ctx, run_id: str) -> str:
    """The run's states in order, one ``name: message`` per line (for assertion messages)."""
    with ctx.client() as c:
        states = c.read_flow_run_states(uuid.UUID(run_id))
    return "\n".join(f"{s.timestamp} {s.name}: {s.message or ''}" for s in states)


def wait_settled(ctx: Ctx, run_id: str, timeout: float = 900, settle: float = 45.0):
    """Poll a flow run until it is Completed, or in another final state that has held for ``settle`` seconds.

    A run whose worker died goes Crashed and the crash automation then puts it back to Scheduled: that Crashed
    is a passing state, and a poll can land on it. Only a final state that stays (a run the automation no longer
    retries, or an automation that never fired) ends the wait early."""
    deadline = time.monotonic() + timeout
    held: tuple[object, float] | None = None  # (state id, since)
    while time.monotonic() < deadline:
        run = flow_run(ctx, run_id)
        state = run.state
        if state is not None and state.is_completed():
            return run
        if state is not None and state.is_final():
            if held is None or held[0] != state.id:
                held = (state.id, time.monotonic())
            elif time.monotonic() - held[1] >= settle:
                return run
        else:
            held = None
        time.sleep(1.0)
    raise TimeoutError(f"flow run {run_id} not done after {timeout} s: {flow_run(ctx, run_id).state}")


def task_runs(ctx: Ctx, run_id: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with ctx.client() as c:
        return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)])))


def artifact(ctx: Ctx, run_id: str, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with ctx.client() as c:
        arts = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)])
            )
        )
    assert arts, f"no artifact {key!r} for flow run {run_id}"
    return str(arts[0].data)


def flow_logs(ctx: Ctx, run_id: str) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with ctx.client() as c:
        logs = c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])))
    return "\n".join(log.message for log in logs)


def s3(ctx: Ctx):
    import boto3

    return boto3.client(
        "s3", endpoint_url=ctx.stack.s3_endpoint, region_name="us-east-1",
        aws_access_key_id=ctx.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ctx.env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def bucket_keys(ctx: Ctx, prefix: str = "") -> list[str]:
    client, keys = s3(ctx), []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=ctx.stack.bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def assert_objects_intact(ctx: Ctx) -> int:
    """Every DVC object in the bucket hashes to its key: nothing half-written. Returns how many."""
    client, n = s3(ctx), 0
    for key in bucket_keys(ctx, "dvc/files/md5/"):
        body = client.get_object(Bucket=ctx.stack.bucket, Key=key)["Body"].read()
        want = "".join(key.split("/")[-2:]).removesuffix(".dir")
        assert hashlib.md5(body).hexdigest() == want, f"{key} is corrupt"
        n += 1
    return n


def listening_addresses(pgids: list[int]) -> set[str]:
    """Local IPv4/IPv6 addresses of every listening TCP socket owned by processes in the given groups."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) not in pgids:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addrs = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                addrs.add(parts[1].rsplit(":", 1)[0])
    return addrs


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children in other sessions too), from /proc."""
    parent = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def same_process_alive(pid: int, start_ticks: int) -> bool:
    """``pid`` is still the process that had ``start_ticks`` (not a reused pid) and has not exited."""
    return serve._start_ticks(pid) == start_ticks and serve._state(pid) not in ("Z", "?")


def wait_for(pred, timeout: float, step: float = 0.5):
    """Poll ``pred()`` until it returns something truthy (returned) or ``timeout`` passes (returns the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)
