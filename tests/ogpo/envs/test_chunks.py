"""Chunk execution (``step_chunk``) on the toy env and its argument checks: fast, no simulator."""

from __future__ import annotations

import numpy as np
import pytest

from ogpo.envs.base import check_chunk
from ogpo.envs.toy import PointGapEnv, ToyConfig
from ogpo.errors import ShapeError


def test_check_chunk_rejects_bad_shapes_and_lengths():
    a, n = check_chunk(np.zeros((2, 3, 7)), None, 2, 7, "here")
    assert a.dtype == np.float32 and n.tolist() == [3, 3]
    for bad in (np.zeros((2, 7)), np.zeros((3, 3, 7)), np.zeros((2, 3, 6)), np.zeros((2, 0, 7))):
        with pytest.raises(ShapeError, match=r"here: action chunks must have shape \[2, h >= 1, 7\]"):
            check_chunk(bad, None, 2, 7, "here")
    for lengths in ([1], [4, 0], [-1, 2], [[1, 1]]):
        with pytest.raises(ShapeError, match=r"here: lengths must be 2 integers in \[0, 3\]"):
            check_chunk(np.zeros((2, 3, 7)), lengths, 2, 7, "here")


def test_toy_step_chunk_matches_per_step_execution():
    cfg = ToyConfig(horizon=30)
    N, h = 4, 5
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-0.3, 0.3, size=(N, h, 2)).astype(np.float32)  # short moves: no episode ends
    lengths = np.array([5, 3, 0, 1])
    a, b = PointGapEnv(N, cfg), PointGapEnv(N, cfg)
    obs = a.reset(3)
    np.testing.assert_array_equal(obs, b.reset(3))
    res = a.step_chunk(chunks, lengths)
    np.testing.assert_array_equal(res.steps, lengths)
    assert not (res.terminated | res.truncated).any()
    for i in range(N):
        pos = obs[i]
        for j in range(lengths[i]):
            act = np.zeros((N, 2), np.float32)
            act[i] = chunks[i, j]
            mask = np.arange(N) == i
            b.pos = np.where(mask[:, None], np.tile(pos, (N, 1)), b.pos)
            r = b.step(act)
            np.testing.assert_allclose(res.next_obs[i, j], r.obs[i], atol=1e-6)
            assert res.reward[i, j] == r.reward[i] == -1.0
            pos = r.obs[i]
        np.testing.assert_allclose(res.obs[i], pos, atol=1e-6)
        assert (res.next_obs[i, lengths[i] :] == 0).all() and (res.reward[i, lengths[i] :] == 0).all()
    np.testing.assert_array_equal(res.final_obs[2], obs[2])  # 0 steps: the env did not move
    assert a.t.tolist() == lengths.tolist()


def test_toy_step_chunk_stops_at_episode_end_and_resets():
    cfg = ToyConfig(horizon=3)
    env = PointGapEnv(2, cfg)
    env.reset(0)
    res = env.step_chunk(np.zeros((2, 5, 2), np.float32), np.array([5, 2]))
    assert res.steps.tolist() == [3, 2]  # env 0 hits its horizon after 3 steps and drops the rest of its chunk
    assert res.truncated.tolist() == [True, False] and not res.terminated.any()
    assert env.t.tolist() == [0, 2]  # env 0 was reset
    # a chunk that reaches a goal terminates with the +5 convention and success
    env = PointGapEnv(1, ToyConfig(horizon=30))
    env.reset(0)
    env.pos[:] = [0.7, 0.35]  # 0.15 below goal (0.7, 0.5): one step up enters its radius
    res = env.step_chunk(np.tile([[0.0, 1.0]], (1, 4, 1)).astype(np.float32))
    assert res.steps.tolist() == [1] and res.terminated.tolist() == [True] and res.success.tolist() == [True]
    assert res.reward[0, 0] == 5.0
    np.testing.assert_allclose(res.final_obs[0], [0.7, 0.45], atol=1e-6)
    with pytest.raises(ShapeError, match="NaN"):
        env.step_chunk(np.full((1, 2, 2), np.nan, np.float32))
