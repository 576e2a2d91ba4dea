import numpy as np
import pytest
import torch

from ogpo.data.replay import ReplayBuffer
from ogpo.errors import ConfigError, ShapeError


def _episode(T: int, start: float, obs_dim: int = 1):
    obs = (start + np.arange(T, dtype=np.float32))[:, None].repeat(obs_dim, 1)
    return dict(
        obs=obs,
        actions=obs[:, :1] * 10,
        rewards=np.full(T, -1.0, np.float32),
        next_obs=obs + 1,
    )


def _all_starts(buf: ReplayBuffer, H: int, gamma: float = 0.5):
    """Sample with a huge batch so every start index appears; return a dict start_obs -> batch row."""
    b = buf.sample(4000, H, gamma, generator=torch.Generator().manual_seed(0))
    rows = {}
    for i in range(len(b)):
        rows[float(b.obs[i, 0])] = {k: getattr(b, k)[i] for k in ("actions", "R", "mask", "next_obs", "valid")}
    return rows


def test_sequence_semantics_terminated_vs_truncated():
    buf = ReplayBuffer(100, 1, 1)
    buf.add_episode(**_episode(5, 0.0), terminated=True, success=True)  # obs 0..4, ends by termination
    buf.add_episode(**_episode(4, 100.0), terminated=False, success=False)  # obs 100..103, time limit
    rows = _all_starts(buf, H=3)
    assert len(rows) == 9
    # fully inside episode 1
    r = rows[0.0]
    assert torch.equal(r["valid"], torch.tensor([1.0, 1.0, 1.0]))
    assert r["R"].item() == pytest.approx(-1 - 0.5 - 0.25)
    assert r["mask"].item() == 1.0
    assert r["next_obs"].item() == 3.0  # s_{t+H}
    # ends exactly at the terminal step: valid all 1, no bootstrap
    r = rows[2.0]
    assert torch.equal(r["valid"], torch.tensor([1.0, 1.0, 1.0]))
    assert r["mask"].item() == 0.0
    # crosses the episode boundary: steps after the terminal one are invalid
    r = rows[3.0]
    assert torch.equal(r["valid"], torch.tensor([1.0, 1.0, 0.0]))
    assert r["mask"].item() == 0.0
    # truncated episode end: still bootstraps (mask 1), sequence running past it is invalid
    r = rows[101.0]
    assert torch.equal(r["valid"], torch.tensor([1.0, 1.0, 1.0]))
    assert r["mask"].item() == 1.0
    r = rows[103.0]  # last step, then unwritten memory
    assert torch.equal(r["valid"], torch.tensor([1.0, 0.0, 0.0]))
    assert r["mask"].item() == 1.0


def test_ring_wraps_and_success_view():
    buf = ReplayBuffer(10, 1, 1)
    buf.add_episode(**_episode(6, 0.0), terminated=True, success=True)
    buf.add_episode(**_episode(6, 50.0), terminated=False, success=False)  # wraps, overwrites 0..1
    assert buf.size == 10 and buf.ptr == 2
    assert buf.num_success_steps == 4  # obs 2..5 survive
    assert buf.success_active(batch_size=1, H=3) and not buf.success_active(batch_size=2, H=3)
    b = buf.sample(500, 2, 0.9, generator=torch.Generator().manual_seed(1), success_only=True)
    assert set(b.obs[:, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}
    rows = _all_starts(buf, H=3)
    # the newest step (obs 55) is followed by the oldest surviving data: must be invalid
    assert torch.equal(rows[55.0]["valid"], torch.tensor([1.0, 0.0, 0.0]))


def test_bad_input():
    buf = ReplayBuffer(10, 2, 1)
    with pytest.raises(ConfigError, match="empty buffer"):
        buf.sample(4, 2, 0.9)
    ep = _episode(3, 0.0, obs_dim=2)
    ep["obs"][1, 0] = np.nan
    with pytest.raises(ShapeError, match="obs: contains NaN"):
        buf.add_episode(**ep, terminated=True, success=False)
    with pytest.raises(ShapeError, match="expected shape"):
        buf.add_episode(**_episode(3, 0.0, obs_dim=3), terminated=True, success=False)
    assert buf.size == 0  # nothing written by the failed calls


def test_state_roundtrip():
    buf = ReplayBuffer(20, 1, 1)
    buf.add_episode(**_episode(7, 0.0), terminated=True, success=True)
    other = ReplayBuffer(20, 1, 1)
    other.load_state_tensors(buf.state_tensors())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = buf.sample(16, 3, 0.9, generator=g1), other.sample(16, 3, 0.9, generator=g2)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.valid, b.valid) and torch.equal(a.R, b.R)
