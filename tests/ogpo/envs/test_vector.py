"""The subprocess vector env: same results as single envs, auto-reset with fresh seeds, clean failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ogpo.envs.robosuite import RobosuiteEnv
from ogpo.envs.vector import make_vector_env
from ogpo.errors import EnvError, ShapeError


def _gone(pid: int) -> bool:
    """True if ``pid`` no longer exists or is a zombie (exited, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_vector_env_matches_single_envs_and_auto_resets():
    N, seed, horizon = 2, 10, 3
    env = make_vector_env("lift", N, seed, horizon=horizon, record_states=True)
    try:
        assert (env.num_envs, env.obs_dim, env.act_dim, env.horizon) == (2, 19, 7, 3)
        obs = env.reset(seed)
        singles = [RobosuiteEnv("lift", horizon=horizon) for _ in range(N)]
        ref = np.stack([s.reset(seed + i) for i, s in enumerate(singles)])
        np.testing.assert_array_equal(obs, ref)
        rng = np.random.default_rng(0)
        for t in range(horizon):
            act = rng.uniform(-1, 1, size=(N, 7)).astype(np.float32)
            res = env.step(act)
            outs = [s.step(a) for s, a in zip(singles, act, strict=True)]
            np.testing.assert_array_equal(res.final_obs, np.stack([o[0] for o in outs]))
            np.testing.assert_array_equal(res.reward, [o[1] for o in outs])
            np.testing.assert_array_equal(res.truncated, [t == horizon - 1] * N)
            assert not res.terminated.any()
            np.testing.assert_array_equal(res.episode_seeds, [seed, seed + 1])
        # episodes ended: obs are the auto-reset obs of the next seeds (seed + i + N)
        np.testing.assert_array_equal(res.obs, np.stack([s.reset(seed + i + N) for i, s in enumerate(singles)]))
        np.testing.assert_array_equal(env.episode_seeds, [seed + 2, seed + 3])
        assert res.states.shape == res.final_states.shape == (N, singles[0].get_state().shape[0])
        np.testing.assert_array_equal(res.states, np.stack([s.get_state() for s in singles]))
        assert env.call("scene_info") == [{}, {}]
        with pytest.raises(ShapeError, match=r"\[2, 7\]"):
            env.step(np.zeros((3, 7)))
        for s in singles:
            s.close()
    finally:
        env.close()
    with pytest.raises(EnvError, match="closed"):
        env.step(np.zeros((2, 7)))


@pytest.mark.slow
def test_worker_exception_and_worker_crash_give_clear_errors_and_no_orphans():
    env = make_vector_env("lift", 2, seed=7)
    pids = env.pids
    env.reset(7)
    bad = np.zeros((2, 7), np.float32)
    bad[1, 0] = np.nan  # env 1's RobosuiteEnv raises ShapeError inside the worker
    with pytest.raises(EnvError) as err:
        env.step(bad)
    msg = str(err.value)
    assert "'lift' env 1 (episode seed 8)" in msg and "ShapeError" in msg and "NaN" in msg
    assert _wait_gone(pids), "workers survived a worker exception"

    env = make_vector_env("lift", 2, seed=0)
    pids = env.pids
    env.reset(0)
    os.kill(pids[0], signal.SIGKILL)  # a hard crash (segfault, OOM killer)
    assert _wait_gone([pids[0]])  # dead before the next request: the send itself fails
    with pytest.raises(EnvError, match=r"env 0 \(episode seed 0\): worker process \d+ died during step"):
        env.step(np.zeros((2, 7), np.float32))
    assert _wait_gone(pids), "workers survived a crashed sibling"

    with pytest.raises(EnvError, match="env 0.*TypeError"):  # bad kwargs fail in the worker at start-up
        make_vector_env("lift", 1, seed=0, not_a_kwarg=1)


_PARENT = textwrap.dedent(
    """
    import sys, numpy as np
    from ogpo.envs.vector import make_vector_env
    env = make_vector_env("lift", 2, seed=0)
    print(" ".join(map(str, env.pids)), flush=True)
    env.reset(0)
    while True:
        env.step(np.zeros((2, 7), np.float32))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_orphans_when_parent_is_interrupted_or_killed(sig):
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2, parent.stderr.read()
        time.sleep(0.5)  # stepping
        parent.send_signal(sig)
        parent.wait(timeout=90)  # generous: under a loaded CI machine the interpreter's shutdown can be slow
        assert _wait_gone(pids), f"workers outlived a parent stopped by {sig.name}"
        if sig == signal.SIGINT:
            assert "KeyboardInterrupt" in parent.stderr.read()
    finally:
        if parent.poll() is None:
            parent.kill()
