"""The local stack in one command: Prefect server (SQLite), a ``cpu`` process worker and SeaweedFS (S3).

``ogpo serve`` starts the three as background processes bound to 127.0.0.1, each in its own process group,
with its own ``PREFECT_HOME`` under ``OGPO_HOME`` (default ``~/.ogpo``). S3 credentials are generated once
into ``credentials.env`` (mode 0600) and every variable a client needs goes into ``stack.env`` (0600, it
holds the secret): ``set -a; . ~/.ogpo/stack.env; set +a`` and then ``prefect deployment run
ogpo/full-pipeline`` works. It creates the bucket, the DVC remote ``s3`` of the checkout, the work pools
``cpu`` and ``gpu`` (both process pools; a ``gpu`` worker runs on a host with a GPU, started by ``ogpo serve
--gpu-workers 1`` there or as the GPU image's container in docker/compose.yaml), the deployments of
``prefect.yaml``, and an automation that puts a flow run whose worker died (no heartbeat) back in the queue
so another worker retries it. ``ogpo stop`` stops them: the workers with SIGINT (they ignore SIGTERM for a long
time), then the server and SeaweedFS with SIGTERM, SIGKILL only after a timeout.

``ogpo serve`` also starts a supervisor (pipeline/supervise.py) that restarts a worker that dies (backing off
when one keeps dying), ends the processes a dead worker's flow runs left behind, marks those runs Crashed and
removes their workspaces; a second automation reschedules a Crashed run of an ogpo deployment until it has
run ``CRASH_RUNS`` times, and its stages resume from the run-cache and the mirrored state. ``ogpo worker add``
adds workers to a running stack; the supervisor watches them too. ``ogpo stop`` stops the supervisor first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ogpo.errors import ConfigError, OGPOError
from pipeline import storage

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_S3_PORT = 8333
DEFAULT_BUCKET = "ogpo"
POOLS = ("cpu", "gpu")  # work pools; fine-tuning goes to gpu when a worker is online there
HEARTBEAT_S = 30  # Prefect's minimum flow-run heartbeat period
ZOMBIE_AFTER_S = 90  # no heartbeat for this long: the run's worker is gone
ZOMBIE_AUTOMATION = "ogpo: requeue flow runs whose worker died"
CRASH_AUTOMATION = "ogpo: retry crashed flow runs"
CRASH_RUNS = 3  # a run that crashed on its 1st or 2nd run is rescheduled; one that crashes on its 3rd stays Crashed
SUPERVISOR = "supervisor"
WORKER_TOKEN_ENV = "OGPO_WORKER_TOKEN"  # a worker's own token, inherited by its flow runs and their stages
# State names whose event ends a run's heartbeat window (the run left Running on its own).
_NOT_RUNNING = (
    "Completed",
    "Failed",
    "Cancelled",
    "Cancelling",
    "Crashed",
    "TimedOut",
    "Scheduled",
    "AwaitingRetry",
    "Pending",
    "Paused",
    "Suspended",
    "Late",
)


class StackError(OGPOError):
    """A service of the local stack failed to start or stop."""


@dataclass
class Proc:
    name: str
    pid: int
    start_ticks: int
    log: str
    # workers only: what the supervisor needs to restart one and to find what its flow runs left behind
    pool: str = ""
    index: int = 0
    work_dir: str = ""
    token: str = ""  # OGPO_WORKER_TOKEN in the worker's environment, inherited by its flow runs and stages

    def alive(self) -> bool:
        if _start_ticks(self.pid) != self.start_ticks:
            return False
        if _state(self.pid) == "Z":  # exited; our own child until reaped (when serve ran in-process)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            return False
        return True


@dataclass
class Stack:
    home: Path
    repo: Path
    prefect_port: int
    s3_port: int
    bucket: str
    procs: dict[str, Proc] = field(default_factory=dict)
    supervisor: Proc | None = None  # kept apart from procs: it serves nothing, it watches the workers

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def env_file(self) -> Path:
        return self.home / "stack.env"


def default_home() -> Path:
    return Path(os.environ.get("OGPO_HOME") or Path.home() / ".ogpo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _start_ticks(pid: int) -> int:
    """Process start time (clock ticks since boot) from /proc: guards against signalling a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[19])


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable only by the user (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip("'\"")
    return out


def credentials(home: Path) -> dict[str, str]:
    """S3 keys for SeaweedFS: generated on first use into ``credentials.env`` (0600), then reused."""
    path = home / "credentials.env"
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: readable by others (chmod 600 it)")
        return read_env_file(path)
    creds = {
        "AWS_ACCESS_KEY_ID": "ogpo" + secrets.token_hex(8),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }
    write_private(path, "".join(f"{k}={v}\n" for k, v in creds.items()))
    return creds


def stack_env(stack: Stack, creds: Mapping[str, str]) -> dict[str, str]:
    """Every variable a client of this stack needs (Prefect CLI, workers, ogpo pull, dvc)."""
    return {
        "PREFECT_API_URL": stack.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "OGPO_S3_BUCKET": stack.bucket,
        "OGPO_S3_ENDPOINT": stack.s3_endpoint,
        "OGPO_S3_REGION": "us-east-1",
        "OGPO_GIT_URL": str(stack.repo),
        "OGPO_ENV_FILE": str(stack.env_file),
        **creds,
    }


def _spawn(name: str, argv: list[str], env: Mapping[str, str], home: Path, cwd: Path | None = None) -> Proc:
    """Start a detached process in its own session (so it and its children can be signalled as a group)."""
    logdir = home / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"{name}.log"
    with open(logfile, "ab") as out:
        p = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Proc(name=name, pid=p.pid, start_ticks=_start_ticks(p.pid), log=str(logfile))


def _wait_http(url: str, proc: Proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            tail = Path(proc.log).read_text(errors="replace")[-1500:]
            raise StackError(f"{what} exited during start-up; log {proc.log}:\n{storage.redact(tail)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise StackError(f"{what} not healthy at {url} after {timeout:.0f} s; log {proc.log}")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def base_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    return env


def start_seaweed(stack: Stack, creds: Mapping[str, str]) -> Proc:
    """SeaweedFS ``weed mini`` on 127.0.0.1 with S3 on ``stack.s3_port``; data under ``OGPO_HOME/seaweed``.

    Detached (not ``seaweed.SeaweedServer``, whose server dies with its parent): it outlives ``ogpo serve``.
    """
    from pipeline import seaweed

    data = stack.home / "seaweed"
    data.mkdir(parents=True, exist_ok=True)
    argv = seaweed.weed_argv(seaweed.find_weed(), data, stack.s3_port, stack.bucket)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | dict(creds)
    proc = _spawn("seaweed", argv, env, stack.home, cwd=data)
    _wait_http(f"{stack.s3_endpoint}/status", proc, 60, "SeaweedFS")
    return proc


def start_prefect_server(stack: Stack, ui: bool = True) -> Proc:
    env = base_env(stack.home) | {"PREFECT_UI_ENABLED": "true" if ui else "false"}
    argv = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(stack.prefect_port)]
    proc = _spawn("prefect-server", argv, env, stack.home)
    _wait_http(f"{stack.api_url}/health", proc, 120, "Prefect server")
    return proc


def start_worker(stack: Stack, env: Mapping[str, str], index: int = 1, pool: str = "cpu") -> Proc:
    """A process worker for ``pool`` with the stack's environment (it is inherited by its flow runs)."""
    wenv = base_env(stack.home) | dict(env)
    wenv.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    wenv["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_S)
    wenv.setdefault("OGPO_WORK_DIR", str(stack.home / "work" / f"{pool}-{index}"))
    wenv[WORKER_TOKEN_ENV] = token = secrets.token_hex(8)
    argv = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", f"ogpo-{pool}-{index}"]
    proc = _spawn(f"worker-{pool}-{index}", argv, wenv, stack.home, cwd=stack.home)
    proc.pool, proc.index, proc.work_dir, proc.token = pool, index, wenv["OGPO_WORK_DIR"], token
    return proc


def next_index(procs: Mapping[str, Proc], pool: str) -> int:
    """The lowest worker index of ``pool`` that no recorded worker uses (by name or by work directory)."""
    used = {p.index for p in procs.values() if p.pool == pool}
    for name in procs:
        if m := re.fullmatch(rf"worker-{pool}-(\d+)", name):
            used.add(int(m.group(1)))
    i = 1
    while i in used:
        i += 1
    return i


def start_supervisor(stack: Stack) -> Proc:
    """The stack's supervisor (``python -m pipeline.supervise``, this install's code), detached like the rest."""
    env = base_env(stack.home)
    argv = [sys.executable, "-m", "pipeline.supervise", "--home", str(stack.home)]
    return _spawn(SUPERVISOR, argv, env, stack.home, cwd=stack.home)


def ensure_pools(api_url: str) -> None:
    """Create (or update) the ``cpu`` and ``gpu`` process pools.

    Why ``gpu`` is a process pool too: its worker is a process on the GPU host (the GPU image's container in
    docker/compose.yaml, or ``ogpo serve --gpu-workers``) that owns the GPUs and runs flow runs in its own
    environment, the same way on every host and with no Docker socket or extra worker package."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with _client(api_url) as client:
        for name in POOLS:
            pool = WorkPoolCreate(name=name, type="process", base_job_template=template)
            client.create_work_pool(pool, overwrite=True)


class _client:
    """A sync Prefect client for ``api_url`` (without touching the global profile)."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url

    def __enter__(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._settings = temporary_settings({PREFECT_API_URL: self.api_url})
        self._settings.__enter__()
        self._c = get_client(sync_client=True)
        return self._c.__enter__()

    def __exit__(self, *exc):
        try:
            self._c.__exit__(*exc)
        finally:
            self._settings.__exit__(*exc)


def ensure_zombie_automation(api_url: str) -> None:
    """A flow run whose heartbeats stop (its worker was killed) is put back to Scheduled, so a live
    worker picks it up and runs it again (stages then resume from the run-cache and the mirrored state)."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    with _client(api_url) as client:
        for existing in client.read_automations_by_name(ZOMBIE_AUTOMATION):
            client.delete_automation(existing.id)
        auto = AutomationCore(
            name=ZOMBIE_AUTOMATION,
            description="Requeue flow runs of ogpo deployments that stopped sending heartbeats.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.id": "prefect.tag.ogpo"},  # runs of the ogpo deployments
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat"} | {f"prefect.flow-run.{s}" for s in _NOT_RUNNING},
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=ZOMBIE_AFTER_S),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.SCHEDULED,
                    name="AwaitingRetry",
                    message=f"No heartbeat for {ZOMBIE_AFTER_S} s: the worker died; rescheduled for another worker",
                    force=True,
                )
            ],
        )
        client.create_automation(auto)


def ensure_crash_automation(api_url: str, runs: int = CRASH_RUNS) -> None:
    """A flow run of an ogpo deployment that ends Crashed (its worker or its engine process died, as the worker,
    the engine itself or the stack's supervisor reports) is put back to Scheduled, at most until it has run
    ``runs`` times: the crash event carries the run count, and only counts below ``runs`` match."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    with _client(api_url) as client:
        for existing in client.read_automations_by_name(CRASH_AUTOMATION):
            client.delete_automation(existing.id)
        auto = AutomationCore(
            name=CRASH_AUTOMATION,
            description=f"Reschedule crashed flow runs of ogpo deployments (at most {runs} runs each).",
            trigger=EventTrigger(
                match={
                    "prefect.resource.id": "prefect.flow-run.*",
                    "prefect.run-count": [str(n) for n in range(runs)],  # 0: crashed before it ran
                },
                match_related={"prefect.resource.id": "prefect.tag.ogpo"},
                expect={"prefect.flow-run.Crashed"},
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.SCHEDULED,
                    name="AwaitingRetry",
                    message=f"Crashed: rescheduled (a run is retried until it has run {runs} times)",
                    force=True,
                )
            ],
        )
        client.create_automation(auto)


def deploy(stack: Stack, env: Mapping[str, str]) -> None:
    """``prefect --no-prompt deploy --all`` from the checkout (prefect.yaml), against this stack's server."""
    denv = base_env(stack.home) | dict(env)
    res = subprocess.run(
        [_bin("prefect"), "--no-prompt", "deploy", "--all"],
        cwd=stack.repo,
        env=denv,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        raise StackError(f"prefect deploy failed:\n{storage.redact(res.stdout[-2000:] + res.stderr[-2000:], env)}")


REGRESSION_BASELINE = "regression-baseline"  # the nightly regression's baseline_rev (prefect.yaml)
NIGHTLY_DEPLOYMENT = "ogpo/nightly-regression"


def set_nightly_schedule(api_url: str, active: bool) -> int:
    """Switch the nightly regression deployment's schedules on or off; switching off also deletes the runs the
    scheduler had already created from them. Returns how many schedules there were."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with _client(api_url) as client:
        dep = client.read_deployment_by_name(NIGHTLY_DEPLOYMENT)
        schedules = client.read_deployment_schedules(dep.id)
        for sched in schedules:
            client.update_deployment_schedule(dep.id, sched.id, active=active)
        if not active:
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
            )
            for run in scheduled:
                if run.auto_scheduled:
                    client.delete_flow_run(run.id)
    return len(schedules)


def ensure_regression_baseline(repo: Path, tag: str = REGRESSION_BASELINE) -> str | None:
    """Pin the nightly regression's baseline at the checkout's HEAD when the tag does not exist yet (a fresh
    `ogpo serve` then has a working nightly run); an existing tag is never moved. Returns what it did, or None."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)

    if git("rev-parse", "--verify", "--quiet", f"refs/tags/{tag}").returncode == 0:
        return None
    head = git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        return None  # not a git checkout with a commit: the nightly run will say the baseline is missing
    sha = head.stdout.strip()
    if git("tag", tag, sha).returncode != 0:
        return None
    return f"nightly regression baseline: tag {tag} created at HEAD {sha[:12]} (move it: git tag -f {tag} <rev>)"


@contextlib.contextmanager
def locked(home: Path):
    """An exclusive lock on the stack record of ``home`` (serve, the supervisor, worker add and stop share it)."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / ".stack.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _save(stack: Stack) -> None:
    data = {
        "repo": str(stack.repo),
        "prefect_port": stack.prefect_port,
        "s3_port": stack.s3_port,
        "bucket": stack.bucket,
        "procs": {k: vars(v) for k, v in stack.procs.items()},
        "supervisor": vars(stack.supervisor) if stack.supervisor else None,
    }
    write_private(stack.home / "stack.json", json.dumps(data, indent=2))


def load(home: Path | None = None) -> Stack:
    home = home or default_home()
    path = home / "stack.json"
    if not path.exists():
        raise StackError(f"no stack recorded in {home} (run `ogpo serve` first)")
    data = json.loads(path.read_text())
    return Stack(
        home=home,
        repo=Path(data["repo"]),
        prefect_port=data["prefect_port"],
        s3_port=data["s3_port"],
        bucket=data["bucket"],
        procs={k: Proc(**v) for k, v in data["procs"].items()},
        supervisor=Proc(**data["supervisor"]) if data.get("supervisor") else None,
    )


def serve(
    repo: Path,
    home: Path | None = None,
    prefect_port: int = DEFAULT_PREFECT_PORT,
    s3_port: int = DEFAULT_S3_PORT,
    bucket: str = DEFAULT_BUCKET,
    workers: int = 1,
    gpu_workers: int = 0,
    deployments: bool = True,
    ui: bool = True,
    supervise: bool = True,
    nightly: bool = False,
) -> Stack:
    """Start the stack (idempotent: a running stack in ``home`` is an error, a stale record is replaced).

    The nightly regression's 02:30 UTC schedule is paused unless ``nightly``: a stack left running on a laptop
    should not start the 25-minute CPU-profile comparison by itself; a regression host passes ``--nightly``.
    """
    if workers < 0 or gpu_workers < 0:
        raise ConfigError(f"worker counts must be >= 0, got --workers {workers} --gpu-workers {gpu_workers}")
    home = (home or default_home()).resolve()
    repo = repo.resolve()
    if not (repo / ".git").exists():
        raise ConfigError(f"{repo}: not a git checkout (ogpo serve runs from the repository root)")
    try:
        old = load(home)
        if any(p.alive() for p in [*old.procs.values(), *([old.supervisor] if old.supervisor else [])]):
            raise StackError(
                f"a stack is already running from {home} (ogpo stop first, or add a worker: ogpo worker add)"
            )
    except StackError as e:
        if "already running" in str(e):
            raise
    for port, what in ((prefect_port, "Prefect"), (s3_port, "S3")):
        if _port_in_use(port):
            raise StackError(f"port {port} on {HOST} is in use: pick another {what} port")
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    stack = Stack(home=home, repo=repo, prefect_port=prefect_port, s3_port=s3_port, bucket=bucket)
    creds = credentials(home)
    env = stack_env(stack, creds)
    write_private(stack.env_file, "".join(f"{k}={v}\n" for k, v in env.items()))
    t0 = time.monotonic()

    def step(msg: str) -> None:
        log.info("[serve %5.1f s] %s", time.monotonic() - t0, msg)

    try:
        stack.procs["seaweed"] = start_seaweed(stack, creds)
        _save(stack)
        step(f"SeaweedFS S3 up on {stack.s3_endpoint}")
        stack.procs["prefect-server"] = start_prefect_server(stack, ui=ui)
        _save(stack)
        step(f"Prefect server up on {stack.api_url}")
        settings = storage.settings_from_env(env)
        _ensure_bucket(settings, env)
        storage.configure_dvc_remote(repo, settings)
        step(f"bucket {bucket} and DVC remote '{storage.REMOTE_NAME}' configured")
        ensure_pools(stack.api_url)
        ensure_zombie_automation(stack.api_url)
        ensure_crash_automation(stack.api_url)
        step("work pools cpu/gpu and the requeue/retry automations created")
        if deployments:
            deploy(stack, env)
            step("deployments from prefect.yaml created")
            set_nightly_schedule(stack.api_url, active=nightly)
            state = "on (02:30 UTC)" if nightly else "paused (ogpo serve --nightly keeps it on)"
            step(f"nightly regression schedule {state}")
            created = ensure_regression_baseline(repo)
            if created:
                step(created)
        for pool, n in (("cpu", workers), ("gpu", gpu_workers)):
            for i in range(1, n + 1):
                stack.procs[f"worker-{pool}-{i}"] = start_worker(stack, env, i, pool=pool)
        _save(stack)
        step(f"{workers} cpu and {gpu_workers} gpu worker(s) started")
        if supervise:
            with locked(home):
                stack.supervisor = start_supervisor(stack)
                _save(stack)
            step(f"supervisor started (log {stack.supervisor.log})")
    except BaseException:
        stop(home, quiet=True)
        raise
    return stack


def _ensure_bucket(settings: storage.S3Settings, env: Mapping[str, str]) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=storage.boto_config(),
    )
    try:
        client.head_bucket(Bucket=settings.bucket)
    except Exception:
        client.create_bucket(Bucket=settings.bucket)


def _signal_group(proc: Proc, sig: int) -> None:
    if proc.alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # each service was started in its own session: pgid == pid


def _wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = [p for p in procs if p.alive()]
        if not procs:
            return []
        time.sleep(0.2)
    return [p for p in procs if p.alive()]


def stop_proc(proc: Proc, first: int, timeout: float) -> bool:
    """Signal ``proc``'s group with ``first``, then SIGKILL after ``timeout``; True if it stopped cleanly."""
    _signal_group(proc, first)
    if not _wait_gone([proc], timeout):
        return True
    _signal_group(proc, signal.SIGKILL)
    _wait_gone([proc], 5)
    return False


def stop(home: Path | None = None, quiet: bool = False, timeout: float = 30) -> list[str]:
    """Stop the stack recorded in ``home``: the supervisor first (so that it restarts nothing), then the workers
    (SIGINT), then the server and SeaweedFS (SIGTERM)."""
    try:
        stack = load(home)
    except StackError:
        if quiet:
            return []
        raise
    lines = []
    if stack.supervisor is not None:
        lines.append(_stop_one(stack.supervisor, signal.SIGTERM, timeout))
    with locked(stack.home):
        stack = load(stack.home)  # what the supervisor last recorded (workers it restarted or adopted)
        stack.supervisor = None
        order = sorted(stack.procs.values(), key=lambda p: (not p.name.startswith("worker"), p.name == "seaweed"))
        for proc in order:
            sig = signal.SIGINT if proc.name.startswith("worker") else signal.SIGTERM
            lines.append(_stop_one(proc, sig, timeout))
        stack.procs = {}
        _save(stack)
    return lines


def _stop_one(proc: Proc, sig: int, timeout: float) -> str:
    if not proc.alive():
        return f"{proc.name}: not running"
    t0 = time.monotonic()
    clean = stop_proc(proc, sig, timeout)
    took = time.monotonic() - t0
    return f"{proc.name}: stopped in {took:.1f} s" + ("" if clean else " (killed after timeout)")


def add_workers(home: Path | None = None, n: int = 1, pool: str = "cpu") -> list[Proc]:
    """Start ``n`` more workers for ``pool`` in the running stack of ``home`` and record them (the supervisor,
    which rereads the record, then restarts them like the others)."""
    if n < 1:
        raise ConfigError(f"worker count must be >= 1, got {n}")
    if pool not in POOLS:
        raise ConfigError(f"pool {pool!r} is not one of {', '.join(POOLS)}")
    home = (home or default_home()).resolve()
    stack = load(home)
    server = stack.procs.get("prefect-server")
    if server is None or not server.alive():
        raise StackError(f"the stack in {home} is not running (start it with `ogpo serve`)")
    env = read_env_file(stack.env_file)
    started = []
    with locked(home):
        stack = load(home)
        for _ in range(n):
            i = next_index(stack.procs, pool)
            proc = start_worker(stack, env, i, pool=pool)
            stack.procs[proc.name] = proc
            started.append(proc)
        _save(stack)
    return started
