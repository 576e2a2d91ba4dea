"""OGPO update machinery: the actor climbs a fixed critic, gradients stay where they belong, NaN stops cleanly."""

import copy

import pytest
import torch

from ogpo.agents.ogpo import OGPOAgent, OGPOConfig
from ogpo.critic import CriticConfig
from ogpo.data.replay import SequenceBatch
from ogpo.errors import ConfigError, TrainingError
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig

H, DA = 4, 2


def _batch(B: int = 32, seed: int = 0) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, 2, generator=g)
    return SequenceBatch(
        obs=obs,
        actions=torch.rand(B, H, DA, generator=g) * 2 - 1,
        R=-torch.rand(B, generator=g),
        mask=torch.ones(B),
        next_obs=obs + 0.1,
        valid=torch.ones(B, H),
        start=torch.zeros(B, dtype=torch.long),
    )


def _agent(kind: str = "flow", **kw) -> OGPOAgent:
    torch.manual_seed(0)
    actor = make_gcp(GCPConfig(kind=kind, obs_dim=2, act_dim=DA, H=H, K=4, hidden=[64, 64], sigma0=0.2, min_std=0.05))
    cfg = dict(G=8, ppo_batch_size=32, batch_size=32, actor_lr_schedule="constant", lr_warmup=0) | kw
    return OGPOAgent(actor, CriticConfig(obs_dim=2, chunk_dim=H * DA, M=3, hidden=[32]), OGPOConfig(**cfg))


class FixedQ(torch.nn.Module):
    """Q(s, A) = -||A - 0.5||^2 for every head: a critic whose optimum is known."""

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        q = -(chunk.reshape(chunk.shape[0], -1) - 0.5).square().sum(-1)
        return q.unsqueeze(0).expand(3, -1)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("variant", ["ogpo", "ogpo+ca"])
def test_actor_step_climbs_a_fixed_critic(kind, variant):
    agent = _agent(kind, variant=variant, actor_lr=1e-3, tau_actor=0.1, lambda_bc=0.0)
    agent.critic.target = FixedQ()
    b = _batch()

    def dist() -> float:
        with torch.no_grad():
            a = agent.actor.sample(b.obs, deterministic=True, generator=torch.Generator().manual_seed(1)).actions
        return float((a.reshape(len(b), -1) - 0.5).square().sum(-1).mean())

    before = dist()
    for _ in range(300):
        agent.actor_step(b, b)
    after = dist()
    assert after < 0.5 * before, (before, after)


def test_no_gradient_reaches_the_critic_from_the_actor_loss():
    agent = _agent()
    b = _batch()
    agent.actor_step(b, b)
    assert all(p.grad is None for p in agent.critic.online.parameters())
    assert all(p.grad is None for p in agent.critic.target.parameters())
    assert all(p.grad is None for p in agent.target_actor.parameters())
    assert any(p.grad is not None for p in agent.actor.parameters())


def test_critic_step_does_not_touch_the_actor_and_ema_moves_targets():
    agent = _agent(tau_critic=0.5)
    b = _batch()
    actor_before = copy.deepcopy(agent.actor.state_dict())
    tgt_before = [p.clone() for p in agent.critic.target.parameters()]
    agent.critic_step(b, agent.sample_next_chunks(b))
    assert all(torch.equal(v, agent.actor.state_dict()[k]) for k, v in actor_before.items())
    for old, new, online in zip(
        tgt_before, agent.critic.target.parameters(), agent.critic.online.parameters(), strict=True
    ):
        assert torch.allclose(new, 0.5 * old + 0.5 * online, atol=1e-6)


@pytest.mark.parametrize("order", ["actor_first", "critic_first"])
def test_full_update_runs_and_reports_metrics(order):
    agent = _agent(update_order=order, success_buffer_td=True)
    m = agent.update(_batch(), _batch(seed=1))
    for k in ("actor_loss", "critic_loss", "critic_loss_success", "bc_loss", "clip_frac", "adv_mean"):
        assert torch.isfinite(m[k]), k
    assert agent.step == 1


def test_nan_loss_stops_before_the_step_and_keeps_weights():
    agent = _agent()
    b = _batch()
    b.R[0] = float("nan")
    critic_before = copy.deepcopy(agent.critic.online.state_dict())
    with pytest.raises(TrainingError, match="critic loss is not finite"):
        agent.critic_step(b, agent.sample_next_chunks(b))
    assert all(torch.equal(v, agent.critic.online.state_dict()[k]) for k, v in critic_before.items())


def test_best_of_n_acting_shapes_and_modes():
    agent = _agent(best_of_n=4)
    obs = torch.randn(5, 2)
    for mode in ("bon", "sde", "ode"):
        a = agent.act(obs, mode)
        assert a.shape == (5, H, DA) and a.abs().max() <= 1.0
    with pytest.raises(ConfigError):
        agent.act(obs, "greedy")


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError, match="G must be"):
        _agent(G=1)
    with pytest.raises(ConfigError, match="variant"):
        _agent(variant="ogpo++")
