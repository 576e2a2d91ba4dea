"""The local stack's supervisor: ``python -m pipeline.supervise --home H``, started by ``ogpo serve``.

Every ``POLL_S`` it rereads the stack record (``stack.json``) and looks at the processes that carry a worker's
token (``OGPO_WORKER_TOKEN``, set by ``serve.start_worker`` and inherited by the worker's flow runs, their DVC
commands and the stages). When a recorded worker has died it

1. ends every process that still carries the dead worker's token (the flow-run engine, ``dvc repro``, the
   stage): SIGTERM, so the engine can report the crash and mirror the stage's last state, SIGKILL after
   ``ORPHAN_GRACE_S``;
2. marks the flow runs it saw under that worker Crashed when they still look Running (the engine may have had
   no chance to say so); the crash automation (``serve.ensure_crash_automation``) reschedules them, a bounded
   number of times, and their stages resume from the run-cache and the mirrored state;
3. removes the workspaces of dead runs (``<work dir>/<hash>-<stage>-<pid>``, see ``pipeline.tasks._ws_dir``:
   a workspace whose creating process is gone and that no live process uses) and the flow-code directory
   Prefect's worker made for each killed flow run;
4. restarts the worker (same pool, index and work directory) at once the first time, then with a growing delay
   while it keeps dying soon after each start (``BACKOFF_S``), and records it.

A flow run's engine that dies while its worker lives is the worker's to report (it marks the run Crashed); the
supervisor still ends the processes that engine left behind and removes its workspace. Workers it does not
know (never recorded in the stack) are left alone. Everything it does is logged to ``logs/supervisor.log``.
SIGTERM (``ogpo stop``) ends it; it stops no worker itself.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline import serve

log = logging.getLogger("pipeline.supervise")

POLL_S = 1.0
ORPHAN_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
STABLE_S = 120.0  # a worker that lived this long before dying restarts at once again
BACKOFF_S = (0.0, 5.0, 15.0, 45.0, 120.0, 300.0)  # delay before the n-th restart in a row of a worker dying early
SWEEP_EVERY_S = 10.0
_WORKSPACE = re.compile(r"^[0-9a-f]{12}-.+-(\d+)$")  # pipeline.tasks._ws_dir: <sha1(run key)[:12]>-<label>-<pid>
_FLOW_CODE_DIR = re.compile(r"^tmp\w+prefect$")  # the process worker's TemporaryDirectory(suffix="prefect")


@dataclass(frozen=True)
class Carrier:
    """A live process that carries a worker token."""

    pid: int
    ppid: int
    token: str
    run_id: str  # PREFECT__FLOW_RUN_ID, "" for the worker itself
    cwd: str


def scan() -> list[Carrier]:
    """Every process of this user whose environment holds a worker token (from /proc)."""
    key, run_key = serve.WORKER_TOKEN_ENV.encode() + b"=", b"PREFECT__FLOW_RUN_ID="
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            token = next((e[len(key) :] for e in env if e.startswith(key)), None)
            if token is None:
                continue
            run_id = next((e[len(run_key) :] for e in env if e.startswith(run_key)), b"")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cwd = os.readlink(entry / "cwd")
        except (OSError, ValueError):
            continue  # gone, or not ours
        if serve._state(int(entry.name)) == "Z":
            continue
        out.append(Carrier(int(entry.name), ppid, token.decode(), run_id.decode(), cwd))
    return out


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and serve._state(pid) not in ("Z", "?")


def end_processes(pids: list[int], grace: float = ORPHAN_GRACE_S) -> tuple[int, int]:
    """SIGTERM ``pids``, SIGKILL what is left after ``grace``; returns (ended, killed)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in left):
        time.sleep(0.1)
    return len(pids), len(left)


def dead_workspaces(work_dirs: list[Path], in_use: set[str]) -> list[Path]:
    """Workspaces under ``work_dirs`` whose creating process is gone and that no live process has as its cwd."""
    out = []
    for wd in work_dirs:
        if not wd.is_dir():
            continue
        for ws in wd.iterdir():
            m = _WORKSPACE.match(ws.name)
            if not m or not ws.is_dir() or _alive(int(m.group(1))):
                continue
            if any(c == str(ws) or c.startswith(f"{ws}{os.sep}") for c in in_use):
                continue
            out.append(ws)
    return out


def _flow_code_dir(cwd: str) -> Path | None:
    """The worker's per-run flow-code directory (``/tmp/tmpXXXXprefect``) that ``cwd`` lies in, if any."""
    tmp = Path(tempfile.gettempdir()).resolve()
    try:
        rel = Path(cwd).resolve().relative_to(tmp)
    except ValueError:
        return None
    top = rel.parts[0] if rel.parts else ""
    return tmp / top if _FLOW_CODE_DIR.match(top) else None


class Supervisor:
    def __init__(self, home: Path, poll_s: float = POLL_S, grace_s: float = ORPHAN_GRACE_S) -> None:
        self.home = home
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.stopping = False
        self.known: dict[str, serve.Proc] = {}  # token -> worker, every worker ever recorded or started here
        self.first_seen: dict[str, float] = {}  # token -> monotonic time
        self.runs: dict[str, set[str]] = {}  # token -> flow runs under that worker at the last scan
        self.pending: dict[str, tuple[float, serve.Proc]] = {}  # worker name -> (restart at, the dead worker)
        self.streak: dict[str, int] = {}  # worker name -> early deaths in a row
        self.owned: dict[str, serve.Proc] = {}  # token -> worker this supervisor started
        self.handled: set[str] = set()  # tokens of dead workers already cleaned up
        self._last_sweep = 0.0
        self._api_url = ""

    # -- one pass ---------------------------------------------------------------------------------------
    def tick(self) -> None:
        with serve.locked(self.home):
            stack = serve.load(self.home)
        self._api_url = stack.api_url
        now = time.monotonic()
        workers = {n: p for n, p in stack.procs.items() if n.startswith("worker-") and p.token}
        for proc in workers.values():
            if proc.token not in self.known:
                self.known[proc.token] = proc
                self.first_seen[proc.token] = now
        carriers = scan()
        live = {p.token: p for p in workers.values() if p.alive()}
        runs: dict[str, set[str]] = {}
        for c in carriers:
            if c.token in live and c.run_id and c.ppid == live[c.token].pid:
                runs.setdefault(c.token, set()).add(c.run_id)  # an engine the worker itself started
        for token in live:
            self.runs[token] = runs.get(token, set())  # a dead worker keeps what its last scan saw

        # 1. dead workers: clean up what they left, schedule the restart
        for name, proc in workers.items():
            if proc.token in live or proc.token in self.handled:
                continue
            self.handled.add(proc.token)
            self._clean_after(name, proc, carriers)
            lived = now - self.first_seen.get(proc.token, now)
            streak = 1 if lived >= STABLE_S else self.streak.get(name, 0) + 1
            self.streak[name] = streak
            delay = BACKOFF_S[min(streak - 1, len(BACKOFF_S) - 1)]
            self.pending[name] = (time.monotonic() + delay, proc)
            if delay:
                log.warning("%s died %.0f s after it started (%d early deaths in a row): restart in %.0f s",
                            name, lived, streak, delay)  # fmt: skip

        # 2. orphans of engines that died under a live worker (the worker reports their runs itself)
        orphans = [
            c for c in carriers
            if c.token in live and c.run_id and c.pid != live[c.token].pid and c.run_id not in runs.get(c.token, ())
        ]  # fmt: skip
        if orphans:
            ended, killed = end_processes([c.pid for c in orphans], self.grace_s)
            log.warning("ended %d process(es) left by dead flow-run engine(s) of %s (%d needed SIGKILL)",
                        ended, ", ".join(sorted({c.run_id for c in orphans})), killed)  # fmt: skip

        # 3. restarts that are due
        for name, (at, dead) in list(self.pending.items()):
            if time.monotonic() >= at:
                del self.pending[name]
                self._restart(name, dead)

        # 4. workers this supervisor started that the record lost (someone saved an older copy): record them
        self._adopt()

        if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = time.monotonic()
            self._sweep()

    def _clean_after(self, name: str, dead: serve.Proc, carriers: list[Carrier]) -> None:
        left = [c for c in carriers if c.token == dead.token]
        run_ids = set(self.runs.pop(dead.token, set())) | {c.run_id for c in left if c.run_id}
        code_dirs = {d for c in left if c.run_id and (d := _flow_code_dir(c.cwd))}
        msg = f"{name} (pid {dead.pid}) died"
        if left:
            ended, killed = end_processes([c.pid for c in left], self.grace_s)
            msg += f"; ended the {ended} process(es) it left ({killed} needed SIGKILL)"
        log.warning(msg + (f"; its flow run(s): {', '.join(sorted(run_ids))}" if run_ids else ""))
        others = {c.run_id for c in scan() if c.token != dead.token and c.run_id}
        for run_id in sorted(run_ids - others):
            self._mark_crashed(run_id, name)
        for d in sorted(code_dirs):
            shutil.rmtree(d, ignore_errors=True)
            log.info("removed flow-code directory %s of a killed flow run", d)
        self._sweep()

    def _mark_crashed(self, run_id: str, name: str) -> None:
        """Crashed if the run still looks Running/Pending (Cancelled if it was being cancelled)."""
        from prefect.client.schemas.objects import StateType
        from prefect.states import Cancelled, Crashed

        try:
            with serve._client(self._api_url) as client:
                run = client.read_flow_run(uuid.UUID(run_id))
                kind = run.state.type if run.state else None
                if kind in (StateType.RUNNING, StateType.PENDING):
                    state = Crashed(message=f"the worker {name} died while this flow run ran on it")
                elif kind == StateType.CANCELLING:
                    state = Cancelled(message=f"the worker {name} died while this flow run was being cancelled")
                else:
                    log.info("flow run %s is already %s", run_id, run.state.name if run.state else "without state")
                    return
                client.set_flow_run_state(run.id, state=state)
            log.warning("flow run %s marked %s", run_id, state.name)
        except Exception as e:  # the server may be down too; the heartbeat automation is the fallback
            log.error("could not mark flow run %s crashed: %s", run_id, e)

    def _restart(self, name: str, dead: serve.Proc) -> None:
        with serve.locked(self.home):
            stack = serve.load(self.home)
            now = stack.procs.get(name)
            if now is None or (now.pid, now.start_ticks) != (dead.pid, dead.start_ticks):
                log.info("%s was replaced or removed by someone else: not restarting it", name)
                return
            pool = dead.pool or name.split("-")[1]
            index = dead.index or int(name.rsplit("-", 1)[1])
            proc = serve.start_worker(stack, serve.read_env_file(stack.env_file), index, pool=pool)
            proc.name = name
            stack.procs[name] = proc
            serve._save(stack)
        self.owned[proc.token] = proc
        self.known[proc.token] = proc
        self.first_seen[proc.token] = time.monotonic()
        log.warning("restarted %s: pid %d (restart %d in a row), log %s", name, proc.pid, self.streak[name], proc.log)

    def _adopt(self) -> None:
        alive = {t: p for t, p in self.owned.items() if p.alive()}
        self.owned = alive
        if not alive:
            return
        with serve.locked(self.home):
            stack = serve.load(self.home)
            recorded = {p.token for p in stack.procs.values()}
            lost = [p for t, p in alive.items() if t not in recorded]
            for proc in lost:
                proc.name = f"worker-{proc.pool}-{serve.next_index(stack.procs, proc.pool)}"
                stack.procs[proc.name] = proc
                log.info("recorded worker pid %d as %s (the stack record had lost it)", proc.pid, proc.name)
            if lost:
                serve._save(stack)

    def _sweep(self) -> None:
        in_use = {c.cwd for c in scan()}
        work_dirs = sorted(p for p in (self.home / "work").glob("*") if p.is_dir())
        work_dirs += [Path(p.work_dir) for p in self.known.values() if p.work_dir]
        for ws in dead_workspaces(sorted(set(work_dirs)), in_use):
            shutil.rmtree(ws, ignore_errors=True)
            log.info("removed workspace %s of a dead flow run", ws)

    # -- loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("supervising the workers of the stack in %s (pid %d)", self.home, os.getpid())
        while not self.stopping:
            try:
                self.tick()
            except serve.StackError as e:
                log.error("%s: stopping", e)
                return
            except Exception:
                log.exception("supervisor pass failed; trying again")
            deadline = time.monotonic() + self.poll_s
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.1)
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.supervise", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", required=True)
    p.add_argument("--poll", type=float, default=POLL_S)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API request otherwise
    sup = Supervisor(Path(args.home), poll_s=args.poll)

    def _stop(signum, _frame):
        sup.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sup.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
