"""OGPO update machinery: the actor climbs a fixed critic, gradients stay where they belong, NaN stops cleanly;
and the wiring: Best-of-N uses the critic, OGPO+'s BC term is applied on the success batch, the LR schedule is
applied, the official-code options do what they say, and a state_dict round trip gives the identical next update."""

import copy

import numpy as np
import pytest
import torch

from ogpo.agents.schedules import repeating_cosine
from ogpo.algos import RunSeeds, get_algo
from ogpo.algos.ogpo import OGPOAgent
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer, SequenceBatch
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


def _agent(kind: str = "flow", algo: str = "ogpo+ca", **kw) -> OGPOAgent:
    torch.manual_seed(0)
    actor = make_gcp(GCPConfig(kind=kind, obs_dim=2, act_dim=DA, H=H, K=4, hidden=[64, 64], sigma0=0.2, min_std=0.05))
    cfg = get_algo(algo).make_config(
        **(dict(G=8, ppo_batch_size=32, batch_size=32, actor_lr_schedule="constant", lr_warmup=0) | kw)
    )
    return OGPOAgent(actor, CriticConfig(obs_dim=2, chunk_dim=H * DA, M=3, hidden=[32]), cfg, name=algo)


def _replay(episodes: int = 12, success_every: int = 2, seed: int = 0) -> ReplayBuffer:
    """Random episodes; every ``success_every``-th one succeeds and its observations are shifted by +5, so a
    batch's origin can be read off its obs."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(2_000, 2, DA)
    for e in range(episodes):
        T = 20
        ok = e % success_every == 0
        obs = rng.normal(size=(T, 2)) + (5.0 if ok else -5.0)
        buf.add_episode(obs, rng.uniform(-1, 1, (T, DA)), -np.ones(T), obs + 0.1, terminated=ok, success=ok,
                        chunk_start=np.arange(T) % H == 0)  # fmt: skip
    return buf


class FixedQ(torch.nn.Module):
    """Q(s, A) = -||A - 0.5||^2 for every head: a critic whose optimum is known."""

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        q = -(chunk.reshape(chunk.shape[0], -1) - 0.5).square().sum(-1)
        return q.unsqueeze(0).expand(3, -1)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("algo", ["ogpo", "ogpo+ca"])
def test_actor_step_climbs_a_fixed_critic(kind, algo):
    agent = _agent(kind, algo, actor_lr=1e-3, tau_actor=0.1, lambda_bc=0.0)
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
    m = agent.update_on(_batch(), _batch(seed=1))
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
    with pytest.raises(ConfigError, match="advantage"):
        _agent(advantage="optimistic")
    with pytest.raises(ConfigError, match="tau_actor must be <= 1"):
        _agent(tau_actor=2.0)
    with pytest.raises(ConfigError, match="lr_warmup"):
        _agent(lr_warmup=-5)


# ---- registry entries ---------------------------------------------------------------------------------------


def test_the_three_variants_are_registry_entries_with_named_fields():
    cfgs = {n: get_algo(n).make_config() for n in ("ogpo", "ogpo+", "ogpo+ca")}
    assert (cfgs["ogpo"].success_bc, cfgs["ogpo"].advantage) == (False, "vanilla")
    assert (cfgs["ogpo+"].success_bc, cfgs["ogpo+"].advantage) == (True, "vanilla")
    assert (cfgs["ogpo+ca"].success_bc, cfgs["ogpo+ca"].advantage) == (True, "conservative")
    assert get_algo("ogpo+ca").make_config(success_bc=False).success_bc is False  # overrides win


def test_build_uses_the_given_critic_weights_and_the_explore_stream():
    actor = make_gcp(GCPConfig(kind="flow", obs_dim=2, act_dim=DA, H=H, K=3, hidden=[16]))
    critic = CriticPair(CriticConfig(obs_dim=2, chunk_dim=H * DA, M=3, hidden=[8]))
    a = get_algo("ogpo").build(actor, copy.deepcopy(actor), critic, get_algo("ogpo").make_config(), RunSeeds(3))
    assert a.name == "ogpo"
    for k, v in critic.state_dict().items():
        assert torch.equal(a.critic.state_dict()[k], v)
    b = get_algo("ogpo").build(actor, copy.deepcopy(actor), critic, get_algo("ogpo").make_config(), RunSeeds(4))
    assert not torch.equal(a.generator.get_state(), b.generator.get_state())


# ---- wiring: each test fails when its piece is disconnected ------------------------------------------------


def test_best_of_n_picks_the_candidate_the_critic_scores_highest():
    agent = _agent(best_of_n=16)
    agent.critic.target = FixedQ()
    obs = torch.randn(6, 2)
    g = torch.Generator().manual_seed(5)
    agent.generator = g
    state = g.get_state()
    chosen = agent.act(obs, "bon")
    replay_gen = torch.Generator().set_state(state)  # the candidates act() drew, redrawn
    cands = agent.target_actor.sample(obs.repeat_interleave(16, 0), generator=replay_gen).actions.view(6, 16, H, DA)
    q = -(cands.reshape(6, 16, -1) - 0.5).square().sum(-1)
    best = q.argmax(1)
    assert (best != 0).any()  # a selector that always took candidate 0 would fail below
    torch.testing.assert_close(chosen, cands[torch.arange(6), best])
    assert agent.act(obs, "rollout").shape == (6, H, DA)


def test_success_bc_term_moves_the_actor_only_when_on():
    """With a critic that scores every chunk the same, advantages are 0 and PPO has no gradient: the actor can
    only move through OGPO+'s BC term."""

    class ConstQ(torch.nn.Module):
        def forward(self, obs, chunk):
            return torch.zeros(3, obs.shape[0])

    moved = {}
    for algo in ("ogpo", "ogpo+"):
        agent = _agent(algo=algo, actor_lr=1e-3)
        agent.critic.target = ConstQ()
        before = copy.deepcopy(agent.actor.state_dict())
        agent.actor_step(_batch(), _batch(seed=1))
        moved[algo] = max(float((agent.actor.state_dict()[k] - v).abs().max()) for k, v in before.items())
    assert moved["ogpo"] == 0.0
    assert moved["ogpo+"] > 1e-5


def test_bc_uses_the_success_batch_once_it_is_active(monkeypatch):
    agent = _agent(algo="ogpo+", batch_size=32)
    seen = []
    real = agent.actor.bc_loss

    def spy(obs, actions, mask=None, generator=None):
        seen.append(obs.detach().clone())
        return real(obs, actions, mask, generator)

    monkeypatch.setattr(agent.actor, "bc_loss", spy)
    replay = _replay()
    assert replay.success_active(32, H)
    agent.update(replay, torch.Generator().manual_seed(0))
    assert len(seen) == 1 and bool((seen[0][:, 0] > 2.0).all())  # successful episodes only (obs shifted +5)
    few = _replay(episodes=3, success_every=99)  # one success of 20 steps: success view inactive
    assert not few.success_active(32, H)
    agent.update(few, torch.Generator().manual_seed(0))
    assert bool((seen[1][:, 0] < 2.0).any())  # falls back to the replay batch


def test_lr_schedule_is_applied_to_the_actor_optimizer():
    agent = _agent(actor_lr_schedule="cosine", actor_lr=1e-3, actor_lr_floor=1e-4, lr_warmup=4, lr_period=10)
    replay = _replay()
    g = torch.Generator().manual_seed(0)
    lrs = []
    for _ in range(6):
        agent.update(replay, g)
        lrs.append(agent.actor_opt.param_groups[0]["lr"])
    want = [repeating_cosine(s, 1e-3, 1e-4, 4, 10) for s in range(6)]
    assert lrs == pytest.approx(want)
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-3)


def test_official_lr_schedule_rewarms_every_period_and_the_clean_one_restarts_at_peak():
    peak, floor, warmup, period = 1.0, 0.1, 10, 100
    official = [repeating_cosine(s, peak, floor, warmup, period, True) for s in range(250)]
    clean = [repeating_cosine(s, peak, floor, warmup, period, False) for s in range(250)]
    assert official[0] == floor and official[10] == pytest.approx(peak) and official[99] > floor
    assert official[100] == floor and official[105] == pytest.approx(floor + 0.5 * (peak - floor))
    assert official[110] == pytest.approx(peak)  # a fresh warmup in every period (optax warmup-cosine on step % period)
    assert clean[109] < floor + 0.01 and clean[110] == pytest.approx(peak)  # restart jumps to the peak, no warmup
    assert min(official) >= floor and max(official) <= peak


@pytest.mark.parametrize("storage", ["official", "clean"])
def test_chain_storage_option(storage, monkeypatch):
    """official: the stored chain ends in the clipped x_K while the old log-prob is the raw sample's; clean:
    the chain is exactly what was sampled, so with equal online and EMA weights every ratio is 1."""
    agent = _agent(chain_storage=storage, tau_actor=1.0)
    with torch.no_grad():  # a huge output bias pushes most final samples outside [-1, 1]
        agent.actor.net.net[-1].bias.fill_(40.0)
    agent.target_actor.load_state_dict(agent.actor.state_dict())
    seen = {}
    real = agent.actor.log_prob

    def spy(obs, chain, **kw):
        seen["chain"] = chain.clone()
        return real(obs, chain, **kw)

    monkeypatch.setattr(agent.actor, "log_prob", spy)
    m = agent.actor_step(_batch(), _batch())
    final = seen["chain"][:, -1]
    if storage == "official":
        assert float(final.abs().max()) <= 1.0
        assert float(m["clip_frac"]) > 0.0
    else:
        assert float(final.abs().max()) > 1.0
        assert float(m["clip_frac"]) == 0.0


def test_state_dict_round_trip_gives_the_identical_next_update():
    replay = _replay()
    a = _agent(actor_lr_schedule="cosine", lr_warmup=3, lr_period=7)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        a.update(replay, g)
    tensors, meta = a.state_dict()
    b = _agent(actor_lr_schedule="cosine", lr_warmup=3, lr_period=7)
    b.load_state_dict({k: v.clone() for k, v in tensors.items()}, meta)
    ga, gb = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    ma, mb = a.update(replay, ga), b.update(replay, gb)
    assert {k: float(v) for k, v in ma.items()} == {k: float(v) for k, v in mb.items()}
    for (k, v), w in zip(a.actor.state_dict().items(), b.actor.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    for v, w in zip(a.critic.state_dict().values(), b.critic.state_dict().values(), strict=True):
        assert torch.equal(v, w)
    assert b.step == a.step == 4
    other = _agent(algo="ogpo")
    with pytest.raises(Exception, match="ogpo\\+ca"):
        other.load_state_dict(tensors, meta)
