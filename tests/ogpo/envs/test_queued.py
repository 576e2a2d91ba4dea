"""queue_chunks: workers run ahead through committed chunks while step() keeps its per-step results exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ogpo.envs.base import check_chunk
from ogpo.envs.vector import _should_pin, make_vector_env
from ogpo.errors import EnvError, ShapeError
from ogpo.rollout import ChunkQueue

N, SEED, HORIZON, H = 2, 30, 6, 4  # horizon 6 with H = 4: every second chunk is cut by the episode end


def _drive(env, steps: int, commit: bool) -> list:
    """Per-step chunk-queue loop with a seeded random chunk policy; commit=True announces chunks to the env."""
    rng = np.random.default_rng(5)
    q = ChunkQueue(N, H, env.act_dim)
    obs = env.reset(SEED)
    out = []
    for _ in range(steps):
        a = q.next_actions(
            obs, lambda o: rng.uniform(-1, 1, (len(o), H, 7)).astype(np.float32), env if commit else None
        )
        res = env.step(a)
        out.append(res)
        q.clear(res.terminated | res.truncated)
        obs = res.obs
    return out


@pytest.mark.slow
def test_queued_chunks_give_exactly_the_per_step_results():
    plain = make_vector_env("lift", N, SEED, horizon=HORIZON, record_states=True)
    queued = make_vector_env("lift", N, SEED, horizon=HORIZON, record_states=True)
    try:
        ref, got = _drive(plain, 14, commit=False), _drive(queued, 14, commit=True)
        assert sum(int(r.truncated.sum()) for r in ref) == 4  # two episode ends per env, each cutting a chunk
        for r, g in zip(ref, got, strict=True):
            for field in ("obs", "reward", "terminated", "truncated", "success", "final_obs", "states",
                          "final_states", "episode_seeds"):  # fmt: skip
                np.testing.assert_array_equal(getattr(g, field), getattr(r, field), err_msg=field)
        # a reset mid-chunk drops what is still queued: the next results are those of a fresh env
        assert any(p is not None for p in queued._plan)
        np.testing.assert_array_equal(queued.reset(SEED), plain.reset(SEED))
        assert all(p is None for p in queued._plan)
        np.testing.assert_array_equal(queued.step(np.zeros((N, 7))).obs, plain.step(np.zeros((N, 7))).obs)
    finally:
        plain.close()
        queued.close()


def test_check_chunk_rejects_bad_shapes_and_non_finite_actions():
    a = check_chunk(np.zeros((2, 3, 7)), 2, 7, "here")
    assert a.dtype == np.float32 and a.shape == (2, 3, 7)
    for bad in (np.zeros((2, 7)), np.zeros((3, 3, 7)), np.zeros((2, 3, 6)), np.zeros((2, 0, 7))):
        with pytest.raises(ShapeError, match=r"here: action chunks must have shape \[2, h >= 1, 7\]"):
            check_chunk(bad, 2, 7, "here")
    with pytest.raises(ShapeError, match="here: action chunks contain NaN or inf"):
        check_chunk(np.full((2, 1, 7), np.nan), 2, 7, "here")


@pytest.mark.slow
def test_queue_chunks_rejects_misuse_and_stays_usable():
    env = make_vector_env("lift", N, SEED, horizon=HORIZON)
    try:
        env.reset(SEED)
        chunks = np.zeros((1, H, 7), np.float32)
        with pytest.raises(ShapeError, match=r"\[1, h >= 1, 7\]"):
            env.queue_chunks([0], chunks[:, :, :6])
        with pytest.raises(ShapeError, match="NaN"):
            env.queue_chunks([0], np.full((1, H, 7), np.inf, np.float32))
        with pytest.raises(ShapeError, match=r"distinct integers in \[0, 2\)"):
            env.queue_chunks([2], chunks)
        env.queue_chunks([1], chunks + 0.5)
        with pytest.raises(EnvError, match="env 1 .*still has 4 queued actions"):
            env.queue_chunks([1], chunks)
        with pytest.raises(EnvError, match="env 1 .*call get_state while actions queued"):
            env.call("get_state")
        with pytest.raises(EnvError, match="env 1 .*differs from the next action queued"):
            env.step(np.zeros((N, 7), np.float32))
        a = np.full((N, 7), 0.5, np.float32)
        a[0] = 0.0  # env 0 has nothing queued: a plain step
        assert env.step(a).obs.shape == (N, 19)
        assert env._plan_pos[1] == 1
        env.reset(SEED)  # drops the 3 queued actions left
        assert len(env.call("get_state")) == N
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_workers_are_pinned_round_robin_when_asked_or_when_they_fill_the_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    env = make_vector_env("lift", 2, 0, pin_cpus=True)
    try:
        assert [os.sched_getaffinity(p) for p in env.pids] == [{cpus[0]}, {cpus[1]}]
    finally:
        env.close()
    env = make_vector_env("lift", 1, 0)  # auto: 1 worker leaves spare CPUs, so it floats
    try:
        assert os.sched_getaffinity(env.pids[0]) == set(cpus)
    finally:
        env.close()
    assert _should_pin(None, len(cpus)) and not _should_pin(None, len(cpus) - 1) and not _should_pin(False, 99)
