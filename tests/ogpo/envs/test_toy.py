"""The toy point-robot env's step: episode ends, auto-reset, the +5 success convention, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from ogpo.envs.toy import PointGapEnv, ToyConfig
from ogpo.errors import ShapeError


def test_toy_step_ends_episodes_auto_resets_and_checks_actions():
    env = PointGapEnv(2, ToyConfig(horizon=3))
    env.reset(0)
    for _ in range(3):
        res = env.step(np.zeros((2, 2), np.float32))
    assert res.truncated.tolist() == [True, True] and not res.terminated.any()  # horizon reached after 3 steps
    assert env.t.tolist() == [0, 0]  # both envs were reset
    # a step that reaches a goal terminates with the +5 convention and success; final_obs is the goal position
    env = PointGapEnv(1, ToyConfig(horizon=30))
    env.reset(0)
    env.pos[:] = [0.7, 0.35]  # 0.15 below goal (0.7, 0.5): one step up enters its radius
    res = env.step(np.array([[0.0, 1.0]], np.float32))
    assert res.terminated.tolist() == [True] and res.success.tolist() == [True] and res.reward.tolist() == [5.0]
    np.testing.assert_allclose(res.final_obs[0], [0.7, 0.45], atol=1e-6)
    assert env.t.tolist() == [0] and res.obs[0, 0] == env.cfg.start_x  # auto-reset to a start position
    with pytest.raises(ShapeError, match=r"expected shape \[1, 2\]"):
        env.step(np.zeros((2, 2)))
    with pytest.raises(ShapeError, match="NaN"):
        env.step(np.full((1, 2), np.nan, np.float32))
