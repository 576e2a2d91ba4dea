"""N robosuite envs in subprocesses behind the VectorEnv protocol (ogpo.envs.base).

Why subprocesses: one robosuite step costs 6-12 ms of Python (the OSC controller), so parallel workers are the
main lever; the policy stays in the caller and is evaluated once per decision on the whole batch. Each worker
owns one RobosuiteEnv and auto-resets it when its episode ends, so a step is a single round trip per worker.
``queue_chunks`` avoids paying the caller's policy call, the pipe latency and the wait for the slowest worker on
every step: the per-step chunk queue of spec 2.9 (ogpo.rollout.ChunkQueue) commits each new chunk, the worker
runs through it and streams every step's result, while ``step`` keeps its per-step meaning. Workers only wait
at a decision point, so results, their order and the seeded random streams are exactly those of plain per-step
stepping. The trainer and evaluation use this path (benchmarks/envs.py measures it against plain ``step``).
Workers are pinned to CPUs round robin when they fill the machine (``pin_cpus``, default auto), which spares
them the cache refills of constant migrations.

Seeding: after ``reset(seed)`` env i runs episode k with seed ``seed + i + k * N``: every episode has its own
seed, the stream is a pure function of (seed, N), and a failing env can be named with the seed that
reproduces its episode.

Failure handling: a Python exception in a worker comes back as an EnvError naming the task, env index, episode
seed and the worker's traceback; a worker that dies (segfault, OOM kill) is detected by its closed pipe.
Either way every worker is shut down before the error propagates, workers ignore SIGINT (Ctrl-C stops the
parent, which then stops them) and ask the kernel to kill them if the parent dies, so no orphan survives.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ogpo.envs.base import StepResult, check_chunk
from ogpo.envs.robosuite import task_spec
from ogpo.errors import EnvError, ShapeError

REPLY_TIMEOUT_S = 300.0  # a step or reset never takes this long; a silent worker is reported as hung


@dataclass
class VectorStepResult(StepResult):
    """StepResult plus simulator states (only with ``record_states=True``) and the episode seeds in use.

    states: flattened MuJoCo state matching ``obs`` (the reset state where an episode ended);
    final_states: the state matching ``final_obs``.
    """

    states: np.ndarray | None = None
    final_states: np.ndarray | None = None
    episode_seeds: np.ndarray | None = None


def _die_with_parent() -> None:
    """Linux: deliver SIGKILL to this worker if its parent dies (no orphan even after ``kill -9``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _worker_main(fd: int) -> None:
    """Entry point of a worker process (``python -c``): serve one RobosuiteEnv over the inherited socket.

    Workers are started with subprocess rather than multiprocessing's spawn so that the caller's ``__main__``
    is never re-imported (scripts without a main guard, notebooks and Prefect tasks all work).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    conn = Connection(fd)
    try:
        _cmd, (task, env_kwargs, record_states) = conn.recv()
    except (EOFError, OSError):
        return
    from ogpo.envs.robosuite import RobosuiteEnv

    try:
        env = RobosuiteEnv(task, **env_kwargs)
        conn.send(("ok", (env.obs_dim, env.act_dim, env.horizon)))
    except Exception as e:  # report construction errors instead of dying silently
        conn.send(("error", (type(e).__name__, str(e), traceback.format_exc())))
        return
    state = env.get_state if record_states else (lambda: None)
    try:
        while True:
            try:
                cmd, data = conn.recv()
            except (EOFError, OSError):
                return  # parent gone
            try:
                if cmd == "step":
                    action, next_seed = data
                    conn.send(("ok", _step_once(env, action, next_seed, state)))
                elif cmd == "run":
                    # a queued chunk: step through it, streaming each step's reply as soon as it exists, so the
                    # worker never waits for the caller while it still has actions (stops at episode end)
                    actions, next_seed = data
                    for action in actions:
                        reply = _step_once(env, action, next_seed, state)
                        conn.send(("ok", reply))
                        if reply[2] or reply[3]:
                            break
                elif cmd == "reset":
                    obs = env.reset(data)
                    conn.send(("ok", (obs, state())))
                elif cmd == "call":
                    name, args, kwargs = data
                    conn.send(("ok", getattr(env, name)(*args, **kwargs)))
                elif cmd == "close":
                    conn.send(("ok", None))
                    return
                else:
                    raise EnvError(f"unknown worker command {cmd!r}")
            except (EOFError, OSError):
                return
            except Exception as e:
                conn.send(("error", (type(e).__name__, str(e), traceback.format_exc())))
    finally:
        with contextlib.suppress(Exception):
            env.close()


def _step_once(env, action: np.ndarray, next_seed: int, state) -> tuple:
    """Worker side of one step (auto-reset with ``next_seed`` at episode end); the reply of ``step``/``run``:
    (obs, reward, terminated, truncated, success, final_obs, state, final_state)."""
    obs, reward, terminated, truncated, info = env.step(action)
    final_obs, final_state = obs, state()
    if terminated or truncated:
        obs = env.reset(next_seed)
        st = state()
    else:
        st = final_state
    return obs, reward, terminated, truncated, info["success"], final_obs, st, final_state


def _shutdown(procs: list[subprocess.Popen], conns: list[Connection]) -> None:
    """Stop workers: polite close, then terminate, then kill. Safe to call twice."""
    for c in conns:
        with contextlib.suppress(Exception):
            c.send(("close", None))
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2.0)
    for p in procs:
        if p.poll() is None:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=2.0)
        if p.poll() is None:
            p.kill()
            p.wait()
    for c in conns:
        with contextlib.suppress(Exception):
            c.close()


def _allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _should_pin(pin_cpus: bool | None, num_envs: int) -> bool:
    """``None`` (auto): pin when the workers fill every CPU the caller may use. Only then do they migrate
    (together with the caller they oversubscribe the cores); with spare cores the scheduler keeps a waking
    worker where it was, and pinning would only make concurrent jobs on a big machine share the first cores."""
    cpus = _allowed_cpus()
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    return num_envs >= len(cpus) if pin_cpus is None else bool(pin_cpus)


def _pin_to_cpu(pid: int, cpu: int) -> None:
    """Pin a worker to ``cpu`` (the vector env hands out the caller's allowed CPUs round robin).

    Why: a worker sleeps in every round trip and the scheduler wakes it on whichever core is free, so on
    oversubscribed cores unpinned workers keep migrating and refill their L1/L2 caches with MuJoCo's model and
    data; pinned, a robosuite step costs about 15% less CPU and 2 workers on 2 cores run 20-40% faster
    (benchmarks/envs.py --no-pin compares). The caller stays unpinned. Best effort: where affinity cannot be
    set, workers simply float.
    """
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpu})


def _start_worker(python: str) -> tuple[subprocess.Popen, Connection]:
    parent, child = mp.Pipe(duplex=True)
    fd = child.fileno()
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the ogpo package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(
        [python, "-c", f"from ogpo.envs.vector import _worker_main; _worker_main({fd})"],
        pass_fds=(fd,),
        env=env,
        stdin=subprocess.DEVNULL,
    )
    child.close()  # the worker holds the only child end: its death closes the pipe
    return proc, parent


class RobosuiteVectorEnv:
    """``num_envs`` RobosuiteEnv workers (one process each); implements ogpo.envs.base.VectorEnv."""

    def __init__(
        self,
        task: str,
        num_envs: int,
        seed: int = 0,
        *,
        record_states: bool = False,
        python: str | None = None,
        pin_cpus: bool | None = None,
        **env_kwargs: Any,
    ) -> None:
        self.spec = task_spec(task)
        if not isinstance(num_envs, int) or num_envs < 1:
            raise EnvError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.task = task
        self.num_envs = num_envs
        self.obs_dim = self.spec.obs_dim
        self.act_dim = self.spec.act_dim
        self.record_states = record_states
        self.seed = int(seed)
        self.episode_seeds = self.seed + np.arange(num_envs, dtype=np.int64)
        self._closed = False
        self.last_states: np.ndarray | None = None  # states matching reset()'s obs (record_states=True)
        self._obs = np.zeros((num_envs, self.obs_dim), dtype=np.float32)  # last obs returned, per env
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        # chunks queued with queue_chunks, per env: the actions (to check step() against) and how many of them
        # step() has consumed; the worker runs ahead through them
        self._plan: list[np.ndarray | None] = [None] * num_envs
        self._plan_pos = np.zeros(num_envs, dtype=np.int64)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        cpus = _allowed_cpus() if _should_pin(pin_cpus, num_envs) else []
        try:
            for i in range(num_envs):
                proc, conn = _start_worker(python or sys.executable)
                if cpus:
                    _pin_to_cpu(proc.pid, cpus[i % len(cpus)])
                self._procs.append(proc)
                self._conns.append(conn)
                conn.send(("init", (task, dict(env_kwargs, seed=int(self.episode_seeds[i])), record_states)))
            dims = [self._recv(i, "start") for i in range(num_envs)]
        except BaseException:
            self.close()
            raise
        self.horizon = int(dims[0][2])

    # -- plumbing ------------------------------------------------------------------------------------------
    def _where(self, i: int) -> str:
        return f"task {self.task!r} env {i} (episode seed {int(self.episode_seeds[i])})"

    def _died(self, i: int, what: str) -> None:
        proc = self._procs[i]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        code = proc.poll()
        self.close()
        raise EnvError(f"{self._where(i)}: worker process {proc.pid} died during {what} (exit code {code})") from None

    def _recv(self, i: int, what: str):
        conn = self._conns[i]
        try:
            if not conn.poll(REPLY_TIMEOUT_S):
                self.close()
                raise EnvError(f"{self._where(i)}: worker gave no reply to {what} within {REPLY_TIMEOUT_S:.0f} s")
            status, payload = conn.recv()
        except (EOFError, OSError, ConnectionError):
            self._died(i, what)
        if status == "error":
            etype, msg, tb = payload
            self.close()
            raise EnvError(f"{self._where(i)}: {etype} in worker during {what}: {msg}\nworker traceback:\n{tb}")
        return payload

    def _roundtrip(self, messages: list, what: str) -> list:
        """Send one message to every worker, then collect every reply. Anything that interrupts this
        (a worker error, Ctrl-C in the caller) closes the env: replies still in flight would otherwise
        be read as the answers to the next request."""
        try:
            for i, msg in enumerate(messages):
                try:
                    self._conns[i].send(msg)
                except OSError:  # the worker's end is closed: it died
                    self._died(i, what)
            return [self._recv(i, what) for i in range(self.num_envs)]
        except BaseException:
            self.close()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise EnvError(f"task {self.task!r} vector env is closed")

    # -- VectorEnv protocol ---------------------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        """Reset every env, env i with ``seed + i``; returns obs [N, obs_dim] float32."""
        self._check_open()
        self._drain()
        self.seed = int(seed)
        self.episode_seeds = self.seed + np.arange(self.num_envs, dtype=np.int64)
        out = self._roundtrip([("reset", int(s)) for s in self.episode_seeds], "reset")
        self.last_states = np.stack([o[1] for o in out]) if self.record_states else None
        self._obs = np.stack([o[0] for o in out]).astype(np.float32, copy=False)
        return self._obs

    def queue_chunks(self, env_ids: np.ndarray, chunks: np.ndarray) -> None:
        """Commit envs ``env_ids`` to run ``chunks`` [n, h, act_dim] as their next actions; their workers start
        right away and stream each step's result back.

        Why: the per-step chunk queue of spec 2.9 knows every env's next h actions when it samples a chunk, so
        a worker need not wait a round trip per action. ``step()`` keeps its meaning (one action per env per
        call, same results, same order, so seeded runs are unchanged); it checks that a committed env's action
        is the next queued one and collects the result the worker already computed. The rest of a chunk is
        dropped at episode end, like the queue. ``reset()`` discards whatever is still queued.
        """
        self._check_open()
        ids = np.asarray(env_ids, dtype=np.int64).reshape(-1)
        where = f"task {self.task!r} queue_chunks"
        a = check_chunk(chunks, len(ids), self.act_dim, where)
        if ((ids < 0) | (ids >= self.num_envs)).any() or len(np.unique(ids)) != len(ids):
            raise ShapeError(f"{where}: env_ids must be distinct integers in [0, {self.num_envs}), got {ids.tolist()}")
        for i in ids:
            if self._plan[i] is not None:
                left = len(self._plan[i]) - int(self._plan_pos[i])
                raise EnvError(f"{self._where(int(i))}: still has {left} queued actions; step them or reset()")
        N = self.num_envs
        for i, chunk in zip(ids.tolist(), a, strict=True):
            try:
                self._conns[i].send(("run", (chunk, int(self.episode_seeds[i] + N))))
            except OSError:
                self._died(i, "queue_chunks")
            self._plan[i], self._plan_pos[i] = chunk, 0

    def _consumed(self, i: int, ended: bool) -> None:
        """Env i's queued chunk advanced by one step (the worker stops it at episode end)."""
        self._plan_pos[i] += 1
        if ended or self._plan_pos[i] >= len(self._plan[i]):
            self._plan[i] = None

    def _drain(self) -> None:
        """Read and drop the replies of queued actions not yet stepped (before a reset)."""
        for i in range(self.num_envs):
            while self._plan[i] is not None:
                try:
                    reply = self._recv(i, "reset (dropping queued actions)")
                except BaseException:
                    self.close()
                    raise
                self._consumed(i, bool(reply[2] or reply[3]))

    def _check_no_plan(self, what: str) -> None:
        for i in range(self.num_envs):
            if self._plan[i] is not None:
                raise EnvError(f"{self._where(i)}: {what} while actions queued with queue_chunks are pending")

    def step(self, actions: np.ndarray) -> VectorStepResult:
        """Step all envs with actions [N, act_dim]; an env whose episode ended is reset (next seed)."""
        self._check_open()
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, self.act_dim):
            raise ShapeError(
                f"task {self.task!r}: actions must have shape [{self.num_envs}, {self.act_dim}], "
                f"got {list(actions.shape)}"
            )
        N = self.num_envs
        planned = [self._plan[i] is not None for i in range(N)]
        for i in np.flatnonzero(planned):
            if not np.array_equal(actions[i], self._plan[i][self._plan_pos[i]]):
                raise EnvError(
                    f"{self._where(int(i))}: step() action differs from the next action queued with queue_chunks "
                    "(the worker has already run it); reset() to start over"
                )
        try:
            for i in range(N):
                if not planned[i]:
                    try:
                        self._conns[i].send(("step", (actions[i], int(self.episode_seeds[i] + N))))
                    except OSError:
                        self._died(i, "step")
            out = [self._recv(i, "step") for i in range(N)]
        except BaseException:
            self.close()
            raise
        for i in np.flatnonzero(planned):
            self._consumed(int(i), bool(out[i][2] or out[i][3]))
        terminated = np.array([o[2] for o in out], dtype=bool)
        truncated = np.array([o[3] for o in out], dtype=bool)
        seeds = self.episode_seeds.copy()
        self.episode_seeds = np.where(terminated | truncated, self.episode_seeds + N, self.episode_seeds)
        states = final_states = None
        if self.record_states:
            states = np.stack([o[6] for o in out])
            final_states = np.stack([o[7] for o in out])
        self._obs = np.stack([o[0] for o in out]).astype(np.float32, copy=False)
        return VectorStepResult(
            obs=self._obs,
            reward=np.array([o[1] for o in out], dtype=np.float32),
            terminated=terminated,
            truncated=truncated,
            success=np.array([o[4] for o in out], dtype=bool),
            final_obs=np.stack([o[5] for o in out]).astype(np.float32, copy=False),
            states=states,
            final_states=final_states,
            episode_seeds=seeds,
        )

    def call(self, name: str, *args: Any, **kwargs: Any) -> list:
        """Call a RobosuiteEnv method in every worker (e.g. ``scene_info``, ``get_state``); list of results."""
        self._check_open()
        self._check_no_plan(f"call {name}")
        return self._roundtrip([("call", (name, args, kwargs))] * self.num_envs, f"call {name}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self) -> None:
        """Stop every worker (idempotent); afterwards every method raises EnvError."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def __enter__(self) -> RobosuiteVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_vector_env(task: str, num_envs: int, seed: int, **kw: Any) -> RobosuiteVectorEnv:
    """N subprocess workers of ``task`` (kwargs go to RobosuiteEnv, plus ``record_states``/``python``)."""
    return RobosuiteVectorEnv(task, num_envs, seed, **kw)
