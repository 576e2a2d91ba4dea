"""N robosuite envs in subprocesses behind the VectorEnv protocol (ogpo.envs.base).

Why subprocesses: one robosuite step costs 6-12 ms of Python (the OSC controller), so parallel workers are the
main lever; the policy stays in the caller and is evaluated once per decision on the whole batch. Each worker
owns one RobosuiteEnv and auto-resets it when its episode ends, so a step is a single round trip per worker.
``step_chunk`` sends a whole action chunk (H actions) per round trip: the workers run H steps back to back,
so the caller's policy call, the pipe latency and the wait for the slowest worker are paid once per chunk
instead of once per step (benchmarks/envs.py measures both).

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

from ogpo.envs.base import ChunkStepResult, StepResult, check_chunk
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


@dataclass
class VectorChunkResult(ChunkStepResult):
    """ChunkStepResult plus simulator states after the chunk (only with ``record_states=True``): ``states``
    matches ``obs``, ``final_states`` matches ``final_obs``."""

    states: np.ndarray | None = None
    final_states: np.ndarray | None = None


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
                    obs, reward, terminated, truncated, info = env.step(action)
                    final_obs, final_state = obs, state()
                    if terminated or truncated:
                        obs = env.reset(next_seed)
                        st = state()
                    else:
                        st = final_state
                    conn.send(("ok", (obs, reward, terminated, truncated, info["success"], final_obs, st, final_state)))
                elif cmd == "chunk":
                    actions, next_seed = data
                    conn.send(("ok", _run_chunk(env, actions, next_seed, state)))
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


def _run_chunk(env, actions: np.ndarray, next_seed: int, state) -> tuple:
    """Worker side of ``step_chunk``: run up to len(actions) steps, stopping (and resetting) at episode end."""
    n = len(actions)
    next_obs = np.zeros((n, env.obs_dim), dtype=np.float32)
    rewards = np.zeros(n, dtype=np.float32)
    terminated = truncated = success = False
    steps = 0
    while steps < n and not (terminated or truncated):
        obs, rewards[steps], terminated, truncated, info = env.step(actions[steps])
        next_obs[steps] = obs
        success = info["success"]
        steps += 1
    final_state = state()
    if terminated or truncated:
        obs, st = env.reset(next_seed), state()
    else:
        obs = next_obs[steps - 1] if steps else None  # None: unchanged (the caller keeps the last obs)
        st = final_state
    return next_obs[:steps], rewards[:steps], terminated, truncated, success, obs, st, final_state


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
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        try:
            for i in range(num_envs):
                proc, conn = _start_worker(python or sys.executable)
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
        self.seed = int(seed)
        self.episode_seeds = self.seed + np.arange(self.num_envs, dtype=np.int64)
        out = self._roundtrip([("reset", int(s)) for s in self.episode_seeds], "reset")
        self.last_states = np.stack([o[1] for o in out]) if self.record_states else None
        self._obs = np.stack([o[0] for o in out]).astype(np.float32, copy=False)
        return self._obs

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
        out = self._roundtrip([("step", (actions[i], int(self.episode_seeds[i] + N))) for i in range(N)], "step")
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

    def step_chunk(self, actions: np.ndarray, lengths: np.ndarray | None = None) -> VectorChunkResult:
        """Execute action chunks [N, h, act_dim], env i its first ``lengths[i]`` actions (default all h), in
        one round trip per worker; an env whose episode ends inside its chunk stops there and is reset."""
        self._check_open()
        actions, lengths = check_chunk(actions, lengths, self.num_envs, self.act_dim, f"task {self.task!r}")
        N, h = self.num_envs, actions.shape[1]
        msgs = [("chunk", (actions[i, : lengths[i]], int(self.episode_seeds[i] + N))) for i in range(N)]
        out = self._roundtrip(msgs, "step_chunk")
        next_obs = np.zeros((N, h, self.obs_dim), dtype=np.float32)
        reward = np.zeros((N, h), dtype=np.float32)
        steps = np.array([len(o[1]) for o in out], dtype=np.int64)
        for i, o in enumerate(out):
            next_obs[i, : steps[i]] = o[0]
            reward[i, : steps[i]] = o[1]
        terminated = np.array([o[2] for o in out], dtype=bool)
        truncated = np.array([o[3] for o in out], dtype=bool)
        seeds = self.episode_seeds.copy()
        self.episode_seeds = np.where(terminated | truncated, self.episode_seeds + N, self.episode_seeds)
        obs = np.stack([self._obs[i] if o[5] is None else o[5] for i, o in enumerate(out)]).astype(np.float32)
        self._obs = obs
        return VectorChunkResult(
            obs=obs,
            next_obs=next_obs,
            reward=reward,
            steps=steps,
            terminated=terminated,
            truncated=truncated,
            success=np.array([o[4] for o in out], dtype=bool),
            episode_seeds=seeds,
            states=np.stack([o[6] for o in out]) if self.record_states else None,
            final_states=np.stack([o[7] for o in out]) if self.record_states else None,
        )

    def call(self, name: str, *args: Any, **kwargs: Any) -> list:
        """Call a RobosuiteEnv method in every worker (e.g. ``scene_info``, ``get_state``); list of results."""
        self._check_open()
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
