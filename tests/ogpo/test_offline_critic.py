"""Offline critic fitting (TD + MC regression, Cal-QL) on a fixed demo buffer."""

import copy

import numpy as np
import pytest
import torch

from ogpo.agents.offline_critic import OfflineCriticConfig, fit_critic_offline, mc_returns
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.toy import collect_toy_demos
from ogpo.errors import ConfigError
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig


def test_mc_returns_restart_at_episode_ends():
    r = torch.tensor([-1.0, -1.0, 5.0, -1.0, -1.0])
    done = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0])
    g = mc_returns(r, done, 0.5)
    assert torch.allclose(g, torch.tensor([-1 - 0.5 + 0.25 * 5, -1 + 0.5 * 5, 5.0, -1.5, -1.0]))


@pytest.mark.parametrize("mode", ["td_mc", "calql"])
def test_offline_fit_reduces_mc_error(mode):
    torch.manual_seed(0)
    buf = ReplayBuffer(5000, 2, 2)
    for e in collect_toy_demos(40, 0, noise=0.3):
        buf.add_episode(e["obs"], e["actions"], e["rewards"], e["next_obs"], e["terminated"], e["success"])
    actor = make_gcp(GCPConfig(kind="flow", obs_dim=2, act_dim=2, H=4, K=3, hidden=[32]))
    critic = CriticPair(CriticConfig(obs_dim=2, chunk_dim=8, M=3, hidden=[64, 64]))
    before = copy.deepcopy(critic)
    cfg = OfflineCriticConfig(mode=mode, steps=300, batch_size=64, lr=1e-3, gamma=0.95, log_every=100)
    rows = fit_critic_offline(critic, actor, buf, cfg, generator=torch.Generator().manual_seed(0))
    assert len(rows) == 3 and all(np.isfinite(list(r.values())).all() for r in rows)
    g = mc_returns(buf.rewards[: buf.size], buf.done[: buf.size], 0.95)
    b = buf.sample(512, 4, 0.95, generator=torch.Generator().manual_seed(1))

    def err(c: CriticPair) -> float:
        with torch.no_grad():
            return float((c.online(b.obs, b.actions).mean(0) - g[b.start]).square().mean())

    assert err(critic) < 0.5 * err(before)


def test_mode_needs_steps():
    with pytest.raises(ConfigError, match="needs steps"):
        OfflineCriticConfig(mode="td_mc", steps=0).validate()
    with pytest.raises(ConfigError, match="mode must be"):
        OfflineCriticConfig(mode="cql").validate()
