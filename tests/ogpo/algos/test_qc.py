"""QC (baselines spec 2): the online critic picks BoN chunks for rollouts and for its own TD target, the target
critic scores the TD target, the flow is trained by flow matching on the replay or success batch only, and the
whole update resumes exactly. Tiny dims: obs 3, d_a 2, H 2, K 3, M 3."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ogpo.algos import RunSeeds, get_algo
from ogpo.algos.qc import QCAgent, QCConfig, best_of_n, bon_scores, pretrain_critic
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import ConfigError
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig
from ogpo.stats import fisher_exact_less

OBS, DA, H, K, M = 3, 2, 2, 3, 3
D = H * DA

torch.set_num_threads(1)


def _gcp(kind: str = "flow") -> nn.Module:
    torch.manual_seed(0)
    return make_gcp(GCPConfig(kind=kind, obs_dim=OBS, act_dim=DA, H=H, K=K, hidden=[32, 32], min_std=0.05))


def _critic_cfg() -> CriticConfig:
    return CriticConfig(obs_dim=OBS, chunk_dim=D, M=M, hidden=[16])


def _agent(kind: str = "flow", seed: int = 0, **kw) -> QCAgent:
    torch.manual_seed(seed)
    cfg = QCConfig(**(dict(batch_size=16, best_of_n=4, tau_critic=0.1) | kw))
    return QCAgent(_gcp(kind), _critic_cfg(), cfg, seed=seed)


def _replay(episodes: int = 12, seed: int = 0, success_every: int = 2) -> ReplayBuffer:
    """Random episodes (T 5..9); every ``success_every``-th ends in success (reward 5, terminated)."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(1000, OBS, DA)
    for e in range(episodes):
        T = int(rng.integers(5, 10))
        success = e % success_every == 0
        rew = -np.ones(T, np.float32)
        if success:
            rew[-1] = 5.0
        starts = np.arange(T) % H == 0
        buf.add_episode(rng.normal(size=(T, OBS)), rng.uniform(-1, 1, (T, DA)), rew, rng.normal(size=(T, OBS)),
                        terminated=success, success=success, chunk_start=starts)  # fmt: skip
    return buf


def _batch(B: int = 16, seed: int = 0) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, OBS, generator=g)
    return SequenceBatch(
        obs=obs,
        actions=torch.rand(B, H, DA, generator=g) * 2 - 1,
        R=-torch.rand(B, generator=g),
        mask=(torch.rand(B, generator=g) > 0.3).float(),
        next_obs=torch.randn(B, OBS, generator=g),
        valid=torch.ones(B, H),
        start=torch.zeros(B, dtype=torch.long),
    )


class QuadQ(nn.Module):
    """Q_m(s, A) = -||A - A*||^2 + b_m: every head prefers A*, heads differ by a constant."""

    def __init__(self, a_star: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.a_star, self.b = a_star, b

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        d = (chunk.reshape(chunk.shape[0], -1) - self.a_star).square().sum(-1)
        return -d.unsqueeze(0) + self.b.unsqueeze(-1)


def _clone(g: torch.Generator) -> torch.Generator:
    out = torch.Generator()
    out.set_state(g.get_state())
    return out


def _candidates(agent: QCAgent, obs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The n ODE candidates BoN draws per state, [B, n, D], reproduced from a generator clone."""
    n = agent.cfg.best_of_n
    a = agent.actor.sample(obs.repeat_interleave(n, 0), deterministic=True, generator=gen).actions
    return a.reshape(obs.shape[0], n, D)


def _params(mod: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in mod.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


A_STAR = torch.full((D,), 0.3)
A_OTHER = torch.full((D,), -0.6)


# ---- spec 2.7 (a): the online critic selects ------------------------------------------------------------------


def test_bon_returns_the_candidate_the_online_critic_prefers():
    agent = _agent(best_of_n=8)
    agent.critic.online = QuadQ(A_STAR, torch.tensor([0.0, 1.0, 2.0]))
    agent.critic.target = QuadQ(A_OTHER, torch.zeros(M))
    obs = torch.randn(10, OBS)
    cand = _candidates(agent, obs, _clone(agent.generator))
    chosen = agent.act(obs, "rollout").reshape(10, D)
    closest = cand[torch.arange(10), (cand - A_STAR).square().sum(-1).argmin(1)]
    assert torch.equal(chosen, closest)
    # the target critic would have chosen differently (so the test can tell the two apart)
    by_target = cand[torch.arange(10), (cand - A_OTHER).square().sum(-1).argmin(1)]
    assert not torch.equal(chosen, by_target)


def test_bon_critic_target_option_selects_with_the_target():
    agent = _agent(best_of_n=8, bon_critic="target")
    agent.critic.online = QuadQ(A_STAR, torch.zeros(M))
    agent.critic.target = QuadQ(A_OTHER, torch.zeros(M))
    obs = torch.randn(10, OBS)
    cand = _candidates(agent, obs, _clone(agent.generator))
    chosen = agent.act(obs, "bon").reshape(10, D)
    assert torch.equal(chosen, cand[torch.arange(10), (cand - A_OTHER).square().sum(-1).argmin(1)])


def test_candidates_are_independent_ode_samples_of_the_online_flow():
    agent = _agent(best_of_n=8)
    obs = torch.randn(5, OBS)
    choice = best_of_n(agent.actor, agent.critic.online, obs, 8, generator=_clone(agent.generator))
    cand = _candidates(agent, obs, _clone(agent.generator))
    assert torch.equal(choice.chunks.reshape(5, D), cand[torch.arange(5), choice.index])
    assert choice.scores.shape == (5, 8)
    # no shared noise: the 8 candidates of a state differ
    assert (cand[:, 1:] - cand[:, :1]).abs().amax(-1).min() > 0
    # scores are the mean of the online heads (spec 2.3)
    q = agent.critic.online(obs.repeat_interleave(8, 0), cand.reshape(40, D)).view(M, 5, 8)
    torch.testing.assert_close(choice.scores, q.mean(0))


def test_bon_scores_aggregations():
    q = torch.tensor([[[1.0, 4.0]], [[3.0, 0.0]], [[2.0, 2.0]]])  # [M=3, B=1, n=2]
    assert torch.equal(bon_scores(q, "mean"), torch.tensor([[2.0, 2.0]]))
    assert torch.equal(bon_scores(q, "min"), torch.tensor([[1.0, 0.0]]))
    q = torch.randn(5, 4, 6)
    g = torch.Generator().manual_seed(3)
    per_call = bon_scores(q, "subsample", heads=2, per_call=True, generator=g)
    idx = torch.randint(5, (2, 1, 1), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(per_call, torch.minimum(q[idx[0, 0, 0]], q[idx[1, 0, 0]]))
    per_cand = bon_scores(q, "subsample", heads=2, generator=torch.Generator().manual_seed(3))
    idx = torch.randint(5, (2, 4, 6), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(per_cand, q.gather(0, idx).min(0).values)
    with pytest.raises(ConfigError, match="bon_agg"):
        bon_scores(q, "max")


# ---- spec 2.7 (b): the TD target ---------------------------------------------------------------------------------


def test_td_target_is_online_bon_chunk_scored_by_target_heads():
    agent = _agent(best_of_n=8, gamma=0.9)
    agent.critic.online = QuadQ(A_STAR, torch.zeros(M))
    c = torch.tensor([0.5, -1.0, 2.0])
    agent.critic.target = QuadQ(A_OTHER, c)
    b = _batch()
    cand = _candidates(agent, b.next_obs, _clone(agent.generator))
    y, _ = agent.bon_td_target(b)
    B = len(b)
    a_bon = cand[torch.arange(B), (cand - A_STAR).square().sum(-1).argmin(1)]
    q_bar = -(a_bon - A_OTHER).square().sum(-1) + c.mean()  # mean over target heads
    torch.testing.assert_close(y, b.R + 0.9**H * b.mask * q_bar)
    # a target-chosen chunk would give a different y (the selector is not the target)
    a_tgt = cand[torch.arange(B), (cand - A_OTHER).square().sum(-1).argmin(1)]
    y_wrong = b.R + 0.9**H * b.mask * (-(a_tgt - A_OTHER).square().sum(-1) + c.mean())
    assert not torch.allclose(y, y_wrong)


def test_terminal_rows_bootstrap_nothing():
    agent = _agent()
    b = _batch()
    b.mask = torch.zeros(len(b))
    y, _ = agent.bon_td_target(b)
    assert torch.equal(y, b.R)


# ---- spec 2.7 (c): valid mask ------------------------------------------------------------------------------------


def test_rows_with_invalid_last_step_do_not_enter_the_critic_loss():
    b = _batch()
    b.valid[::2, -1] = 0.0
    agent = _agent()
    loss, _ = agent.critic_terms(b)
    # change everything about the invalid rows' targets: the loss must not move
    b2 = copy.deepcopy(b)
    b2.R[::2] += 100.0
    agent2 = _agent()
    loss2, _ = agent2.critic_terms(b2)
    assert torch.equal(loss, loss2)
    b3 = copy.deepcopy(b)
    b3.R[1::2] += 1.0  # a valid row does move it
    loss3, _ = _agent().critic_terms(b3)
    assert not torch.equal(loss, loss3)


# ---- spec 2.7 (d): which batch the BC loss uses ------------------------------------------------------------------


def _bc_probe(agent: QCAgent) -> dict:
    """Wrap actor.bc_loss: record its inputs and the generator state it started from."""
    rec: dict = {}
    orig = agent.actor.bc_loss

    def probe(obs, actions, mask=None, generator=None, **kw):
        rec.update(obs=obs, actions=actions, mask=mask, state=generator.get_state())
        return orig(obs, actions, mask, generator=generator, **kw)

    agent.actor.bc_loss = probe
    rec["orig"] = orig
    return rec


@pytest.mark.parametrize("success_flag", [False, True])
def test_bc_gradient_comes_from_the_success_batch_only_when_active(success_flag):
    b, s = _batch(seed=0), _batch(seed=1)
    agent = _agent(grad_clip=1e9)
    agent.opt.param_groups[0]["lr"] = 0.0  # the step leaves the weights alone; p.grad keeps the gradient
    rec = _bc_probe(agent)
    m = agent.update_on(b, s if success_flag else None)
    want = s if success_flag else b
    assert torch.equal(rec["obs"], want.obs) and torch.equal(rec["actions"], want.actions)
    g = torch.Generator()
    g.set_state(rec["state"])
    params = list(agent.actor.parameters())
    expected = torch.autograd.grad(rec["orig"](want.obs, want.actions, want.valid, generator=g), params)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, e)
    assert float(m["success_bc"]) == float(success_flag)
    # L_Q does not depend on the BC batch
    ref = _agent(grad_clip=1e9).update_on(b, None)
    assert torch.equal(m["critic_loss"], ref["critic_loss"])


def test_success_bc_off_ignores_the_success_batch():
    b, s = _batch(seed=0), _batch(seed=1)
    agent = _agent(success_bc=False)
    rec = _bc_probe(agent)
    m = agent.update_on(b, s)
    assert torch.equal(rec["obs"], b.obs) and float(m["success_bc"]) == 0.0


def test_update_switches_to_the_success_view_once_it_holds_enough():
    agent = _agent(batch_size=8)
    few = _replay(episodes=12, success_every=100)  # one successful episode: < 8 + H success steps
    assert not few.success_active(8, H)
    assert float(agent.update(few, torch.Generator().manual_seed(0))["success_bc"]) == 0.0
    many = _replay(episodes=12, success_every=2)
    assert many.success_active(8, H)
    assert float(agent.update(many, torch.Generator().manual_seed(0))["success_bc"]) == 1.0


# ---- gradient isolation, EMA, optimizer --------------------------------------------------------------------------


def test_losses_touch_disjoint_parameters():
    agent = _agent()
    b = _batch()
    lq, _ = agent.critic_terms(b)
    lq.backward()
    assert all(p.grad is None for p in agent.actor.parameters())
    assert all(p.grad is not None for p in agent.critic.online.parameters())
    assert all(p.grad is None for p in agent.critic.target.parameters())
    agent.opt.zero_grad(set_to_none=True)
    agent.actor.bc_loss(b.obs, b.actions, b.valid, generator=agent.generator).backward()
    assert all(p.grad is None for p in agent.critic.online.parameters())
    assert any(p.grad is not None for p in agent.actor.parameters())


def test_one_update_moves_flow_and_critic_and_the_target_by_exact_ema():
    agent = _agent(tau_critic=0.25)
    actor0, online0, target0 = _params(agent.actor), _params(agent.critic.online), _params(agent.critic.target)
    agent.update_on(_batch())
    assert not _same(actor0, _params(agent.actor))
    online1 = _params(agent.critic.online)
    assert not _same(online0, online1)
    for t0, o1, t1 in zip(target0, online1, agent.critic.target.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.75 * t0 + 0.25 * o1)
    assert agent.target_actor is agent.actor  # no EMA actor
    assert len(agent.opt.param_groups[0]["params"]) == len(list(agent.actor.parameters())) + len(online1)
    assert agent.opt.param_groups[0]["lr"] == 3e-4 and agent.step == 1


def test_pretrain_critic_trains_the_critic_and_leaves_the_flow():
    agent = _agent(batch_size=8)
    actor0, online0 = _params(agent.actor), _params(agent.critic.online)
    losses = pretrain_critic(agent, _replay(), 3, torch.Generator().manual_seed(0))
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert _same(actor0, _params(agent.actor))
    assert not _same(online0, _params(agent.critic.online))
    assert all(p not in agent.opt.state for p in agent.actor.parameters())  # no Adam moments for the flow yet


def test_ready_is_the_official_gate():
    agent = _agent(batch_size=16)
    buf = _replay(episodes=3)
    assert buf.size < 16 * H and not agent.ready(buf)
    buf = _replay(episodes=12)
    assert buf.size >= 16 * H and agent.ready(buf)


# ---- acting ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("mode", ["rollout", "eval", "bon"])
def test_action_shapes_and_bounds(kind, mode):
    agent = _agent(kind)
    a = agent.act(torch.randn(7, OBS) * 3, mode)
    assert a.shape == (7, H, DA) and a.abs().max() <= 1.0


def test_eval_is_one_ode_chunk_of_the_online_flow_without_the_critic():
    agent = _agent()
    agent.critic.online = agent.critic.target = None  # eval must not touch a critic
    obs = torch.randn(6, OBS)
    want = agent.actor.sample(obs, deterministic=True, generator=_clone(agent.generator)).actions
    assert torch.equal(agent.act(obs, "eval"), want)


def test_unknown_mode_and_bad_config_raise():
    with pytest.raises(ConfigError, match="act mode"):
        _agent().act(torch.randn(2, OBS), "sde")
    for field, value in [("best_of_n", 0), ("bon_critic", "ema"), ("bon_agg", "max"), ("gamma", 1.5),
                         ("tau_critic", 0.0), ("lr", -1.0), ("bon_subsample", "x")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            QCConfig(**{field: value}).validate()


# ---- persistence and registry ------------------------------------------------------------------------------------


def test_state_dict_round_trip_gives_the_identical_next_update():
    replay = _replay()
    a = _agent(batch_size=8)
    for i in range(3):
        a.update(replay, torch.Generator().manual_seed(i))
    tensors, meta = a.state_dict()
    tensors = {k: v.clone() for k, v in tensors.items()}
    b = _agent(batch_size=8, seed=5)  # different init and RNG
    b.load_state_dict(tensors, meta)
    assert b.step == 3
    ma = a.update(replay, torch.Generator().manual_seed(9))
    mb = b.update(replay, torch.Generator().manual_seed(9))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    for name, mod in a.modules().items():
        assert _same(_params(mod), _params(b.modules()[name])), name
    assert torch.equal(a.act(torch.ones(2, OBS)), b.act(torch.ones(2, OBS)))


def test_registry_build_takes_the_fit_critic_weights_and_the_online_flow():
    spec = get_algo("qc")
    assert spec.config is QCConfig and "flow" in spec.gcp_kinds
    cfg = spec.make_config()
    assert (cfg.best_of_n, cfg.tau_critic, cfg.lr, cfg.grad_clip, cfg.success_bc) == (8, 0.005, 3e-4, 1000.0, True)
    assert (cfg.bon_critic, cfg.bon_agg) == ("online", "mean")
    actor = _gcp()
    ema = copy.deepcopy(actor).requires_grad_(False)
    torch.manual_seed(7)
    pair = CriticPair(_critic_cfg())
    agent = spec.build(actor, ema, pair, spec.make_config(batch_size=8), RunSeeds(0))
    assert agent.actor is actor and agent.target_actor is actor
    assert all(p.requires_grad for p in agent.actor.parameters())
    assert _same(_params(agent.critic.online), _params(pair.online))
    assert _same(_params(agent.critic.target), _params(pair.target))
    assert agent.critic.online is not pair.online
    assert set(agent.metric_names) >= set(agent.update(_replay(), torch.Generator().manual_seed(0)))


# ---- toy learning test -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_qc_lifts_a_weak_bc_policy_on_the_toy_task():
    """BC at the shared gate (77/200 ODE successes at seed 0), then QC for 8k env steps (half the OGPO toy
    budget: 16k takes ~5 min here, over the 4-minute limit); one-sided Fisher test over 200 episodes each.
    Seen: 77/200 -> 166/200 in ~2-3 min (16k steps: 185/200). Ablations at 8k, same seed: success_bc=False
    falls to 43/200 (SFT on all replay drifts), best_of_n=1 (success-filtered SFT alone) reaches 99/200."""
    from tests.ogpo.toy_recipe import run

    out = run("flow", seed=0, total_env_steps=8_000, algo="qc", agent_overrides=TOY, verbose=True)
    assert out["bc_success"] <= 0.5, out["bc_success"]
    p = fisher_exact_less(out["final_successes"], 200, out["bc_successes"], 200)
    assert p < 0.05, (out["bc_successes"], out["final_successes"], p, [r["success"] for r in out["curve"]])


TOY = dict(batch_size=128, gamma=0.95, tau_critic=0.05, lr=3e-4)
