"""EXPO (baselines-spec 3): the noisy Base sampler, OTF best-of-(N+M), the edit policy's log-density, the
temperature with and without its cap, the gamma^1 / gamma^H TD target, the Jacobi-style update, EMA targets,
persistence, the deploy hook and the registry entry. Tiny dims: obs 3, d_a 2, H 2, K 3, M 3 heads (D = 28 for
the temperature tests, as Square)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from ogpo.algos.base import RunSeeds, get_algo
from ogpo.algos.expo import EXPOAgent, EXPOConfig, deploy, frozen, subsample_min
from ogpo.checkpoint import load_checkpoint, module_tensors, save_checkpoint
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import ConfigError, TrainingError
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig

OBS, DA, H, K, M = 3, 2, 2, 3, 3
D = H * DA

torch.set_num_threads(1)


def _gcp(kind: str = "flow", act_dim: int = DA, h: int = H):
    torch.manual_seed(0)
    return make_gcp(GCPConfig(kind=kind, obs_dim=OBS, act_dim=act_dim, H=h, K=K, hidden=[16, 16], min_std=0.05))


def _agent(seed: int = 0, act_dim: int = DA, h: int = H, **kw) -> EXPOAgent:
    cfg = EXPOConfig(**(dict(batch_size=16, edit_hidden=[16, 16], update_gate_utd=1.0) | kw))
    critic_cfg = CriticConfig(obs_dim=OBS, chunk_dim=h * act_dim, M=M, hidden=[16])
    return EXPOAgent(_gcp(act_dim=act_dim, h=h), critic_cfg, cfg, seed=seed)


def _replay(n_episodes: int = 6, T: int = 9, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(500, OBS, DA)
    for e in range(n_episodes):
        obs = rng.normal(size=(T + 1, OBS)).astype(np.float32)
        success = e % 2 == 0
        rewards = -np.ones(T)
        rewards[-1] = 5.0 if success else -1.0
        buf.add_episode(obs[:-1], rng.uniform(-1, 1, size=(T, DA)), rewards, obs[1:], success, success,
                        chunk_start=np.arange(T) % H == 0)  # fmt: skip
    return buf


def _batch(B: int = 16, seed: int = 0) -> SequenceBatch:
    return _replay(seed=seed).sample(B, H, 0.99, generator=torch.Generator().manual_seed(seed))


def _params(mod: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in mod.parameters()]


def _same(a: list[torch.Tensor], mod: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, mod.parameters(), strict=True))


class ConstQ(torch.nn.Module):
    """Every head returns the same constant: a critic whose TD target is known in closed form."""

    def __init__(self, value: float, heads: int = M) -> None:
        super().__init__()
        self.value, self.heads = value, heads

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        return torch.full((self.heads, obs.shape[0]), self.value)


class PeakQ(torch.nn.Module):
    """Q(s, A) = -||A - 0.5||^2 for every head (the optimum is known); counts its calls and rows."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        self.calls.append(obs.shape[0])
        q = -(chunk.reshape(chunk.shape[0], -1) - 0.5).square().sum(-1)
        return q.unsqueeze(0).expand(M, -1)


# ---- spec 3.6 minimal unit test (a)-(e) --------------------------------------------------------------------------


def test_expo_wiring_a_otf_returns_one_of_n_plus_m_candidates_with_bounded_unclipped_edits():
    agent = _agent(n_base=5, n_edit=3, edit_bound=0.05, base_noise_std=0.0)
    # a saturated base flow: every base chunk is exactly +1 after the final clip, so edits step outside [-1, 1]
    with torch.no_grad():
        out = agent.target_actor.net.net[-1]
        out.weight.zero_()
        out.bias.fill_(100.0)
    obs = torch.randn(6, OBS)
    res = agent.otf(obs)
    assert res.candidates.shape == (6, 5 + 3, D) and res.chunk.shape == (6, D)
    assert torch.equal(res.chunk, res.candidates[torch.arange(6), res.index])
    base, edited = res.candidates[:, :5], res.candidates[:, 5:]
    assert bool((base == 1.0).all())
    delta = edited - base[:, :3]
    assert bool((delta.abs() <= 0.05).all()) and bool((delta != 0).any())
    assert float(edited.max()) > 1.0  # not re-clipped (spec 3.5.4)
    a = agent.act(obs, "rollout")
    assert a.shape == (6, H, DA) and float(a.abs().max()) <= 1.0 + 0.05


def test_expo_wiring_a_without_edits_otf_returns_a_base_sample():
    agent = _agent(n_base=4, n_edit=0)
    obs = torch.randn(5, OBS)
    state = agent.generator.get_state()
    res = agent.otf(obs)
    agent.generator.set_state(state)
    base = agent.base_sample(obs.repeat_interleave(4, dim=0)).view(5, 4, D)
    assert res.candidates.shape == (5, 4, D)
    torch.testing.assert_close(res.candidates, base, rtol=0, atol=0)
    assert torch.equal(res.chunk, base[torch.arange(5), res.index])


def test_expo_wiring_b_log_prob_is_the_density_of_the_scaled_tanh_edit():
    agent = _agent(act_dim=7, h=4, edit_bound=0.05)  # D = 28
    obs, base = torch.randn(64, OBS), torch.rand(64, 28) * 2 - 1
    g_state = agent.generator.get_state()
    e, lp = agent.edit_sample(obs, base)
    mean, log_std = agent.edit(torch.cat([obs, base], -1))
    agent.generator.set_state(g_state)
    u = mean + log_std.exp() * torch.randn(mean.shape, generator=agent.generator)
    torch.testing.assert_close(e, 0.05 * torch.tanh(u))
    ref = TransformedDistribution(
        Normal(mean.double(), log_std.exp().double()), [TanhTransform(), AffineTransform(0.0, 0.05)]
    ).log_prob(e.double()).sum(-1)  # fmt: skip
    torch.testing.assert_close(lp.double(), ref, rtol=0, atol=2e-3)
    assert lp.requires_grad  # reparameterised: the edit loss differentiates through it


def _alpha_trajectory(agent: EXPOAgent, steps: int) -> list[float]:
    with torch.no_grad():
        _, lp = agent.edit_sample(torch.randn(256, OBS), agent.base_sample(torch.randn(256, OBS)))
    out = [float(agent.temperature.log_alpha.detach())]
    for _ in range(steps):
        out.append(float(agent.alpha_step(lp)["log_alpha"]))
    return out


def test_expo_wiring_c_uncapped_log_alpha_rises_monotonically_at_about_the_lr():
    """B = 0.05, D = 28: max entropy D log(2B) = -64.5 < H_tgt = -14, so log alpha only rises. Measured: +1.005 LR
    per step over the first 100 steps (Adam's normalised step on a fixed-sign gradient), 1.07 LR over 1e3, 1.28
    over 1e4 and 1.33 over 1e5 (log alpha ~ 40; the gradient alpha * gap grows with alpha)."""
    agent = _agent(act_dim=7, h=4, edit_bound=0.05, log_alpha_max=None)
    assert agent.target_entropy == -14.0
    traj = _alpha_trajectory(agent, 100)
    steps = np.diff(traj)
    assert bool((steps > 0).all())
    assert 0.95 * 3e-4 < float(np.mean(steps)) < 1.1 * 3e-4


def test_expo_wiring_c_reachable_target_makes_alpha_fall():
    agent = _agent(act_dim=7, h=4, edit_bound=0.05, log_alpha_max=None, edit_target_entropy=-3 * 28)
    with torch.no_grad():
        _, lp = agent.edit_sample(torch.randn(256, OBS), agent.base_sample(torch.randn(256, OBS)))
    assert -float(lp.mean()) > -84.0  # H_bar > H_tgt
    traj = _alpha_trajectory(agent, 100)
    assert bool((np.diff(traj) < 0).all())


def test_expo_wiring_d_td_target_uses_gamma_1_in_code_mode_and_gamma_h_in_fixed_mode():
    b = _batch()
    b.mask[:3] = 0.0
    for exponent, power in ((1, 1), ("H", H)):
        agent = _agent(bootstrap_exponent=exponent, gamma=0.9)
        agent.critic.target = ConstQ(-7.0)
        y = agent.td_target(b)
        torch.testing.assert_close(y, b.R + 0.9**power * b.mask * -7.0)
        assert bool((y[:3] == b.R[:3]).all())  # terminal rows bootstrap nothing


def test_expo_wiring_e_target_base_moves_by_exactly_tau_times_the_gap():
    agent = _agent(tau_actor=0.2, tau_critic=0.3)
    bar_old, crit_bar_old = _params(agent.target_actor), _params(agent.critic.target)
    agent.update(_replay(), torch.Generator().manual_seed(0))
    for old, new, online in zip(bar_old, agent.target_actor.parameters(), agent.actor.parameters(), strict=True):
        torch.testing.assert_close(new - old, 0.2 * (online - old), rtol=0, atol=1e-6)
    moved = [not torch.equal(o, n) for o, n in zip(bar_old, agent.target_actor.parameters(), strict=True)]
    assert any(moved)
    for old, new, online in zip(crit_bar_old, agent.critic.target.parameters(), agent.critic.online.parameters(),
                                strict=True):  # fmt: skip
        torch.testing.assert_close(new - old, 0.3 * (online - old), rtol=0, atol=1e-6)


# ---- temperature cap (the default) -----------------------------------------------------------------------


def test_capped_log_alpha_stops_at_the_cap_and_losses_stay_finite():
    # a large alpha LR reaches the cap in ~10 steps; the official 3e-4 takes ~3e3 steps per unit of log alpha
    agent = _agent(act_dim=7, h=4, alpha_lr=0.1, init_temperature=0.5)
    assert agent.cfg.log_alpha_max == 0.0
    traj = _alpha_trajectory(agent, 300)
    assert traj[0] < 0.0 and max(traj) == 0.0 and traj[-1] == 0.0
    assert bool((np.diff(traj) >= 0).all())
    replay = _replay()
    buf = ReplayBuffer(500, OBS, 7)
    buf.add_episode(replay.obs[:40], torch.rand(40, 7) * 2 - 1, -torch.ones(40), replay.next_obs[:40], False, False)
    for i in range(5):
        m = agent.update(buf, torch.Generator().manual_seed(i))
        assert all(math.isfinite(float(v)) for v in m.values())
        assert float(m["log_alpha"]) == 0.0


def test_uncapped_log_alpha_runs_away_until_the_edit_loss_overflows():
    """The official behaviour, sped up (alpha LR 1 instead of 3e-4): log alpha climbs without bound; around
    log alpha ~ 42 the edit gradient overflows float32 and the guarded step stops the run (TrainingError).
    At LR 3e-4 and 1.3 LR per step that is ~1e5 updates, ~5k Square env steps at UTD 20."""
    agent = _agent(act_dim=7, h=4, alpha_lr=1.0, log_alpha_max=None)
    buf = ReplayBuffer(500, OBS, 7)
    rng = np.random.default_rng(0)
    buf.add_episode(rng.normal(size=(40, OBS)), rng.uniform(-1, 1, (40, 7)), -np.ones(40), rng.normal(size=(40, OBS)),
                    False, False)  # fmt: skip
    log_alpha = []
    with pytest.raises(TrainingError, match="edit loss"):
        for i in range(400):
            log_alpha.append(float(agent.update(buf, torch.Generator().manual_seed(i))["log_alpha"]))
    assert bool((np.diff(log_alpha) > 0).all()) and log_alpha[-1] > 30.0


# ---- OTF and acting ----------------------------------------------------------------------------------------------


def test_subsample_min_uses_one_head_pair_for_the_whole_call():
    q = torch.randn(5, 200)
    out = subsample_min(q, torch.Generator().manual_seed(3), 2)
    pairs = [(i, j) for i in range(5) for j in range(5) if torch.equal(out, torch.minimum(q[i], q[j]))]
    assert pairs  # one pair explains every column (a per-column draw would not)


def test_otf_scores_every_candidate_once_with_the_target_critic_and_takes_the_argmax():
    agent = _agent(n_base=6, n_edit=6)
    agent.critic.target = PeakQ()
    agent.critic.online = None  # OTF must not touch the online critic
    obs = torch.randn(8, OBS)
    res = agent.otf(obs)
    assert agent.critic.target.calls == [8 * 12]
    q = -(res.candidates - 0.5).square().sum(-1)
    torch.testing.assert_close(-(res.chunk - 0.5).square().sum(-1), q.max(1).values)
    # selection really uses the critic: better than the average candidate
    assert float(q.max(1).values.mean()) > float(q.mean()) + 1e-3


def test_eval_mode_is_the_target_base_alone_without_critic_or_edits():
    agent = _agent()
    agent.critic.target = agent.critic.online = None
    agent.edit = None
    obs = torch.randn(7, OBS) * 3
    state = agent.generator.get_state()
    a = agent.act(obs, "eval")
    assert a.shape == (7, H, DA) and float(a.abs().max()) <= 1.0
    agent.generator.set_state(state)
    torch.testing.assert_close(a.reshape(7, D), agent.base_sample(obs), rtol=0, atol=0)


def test_base_sampler_is_clipped_euler_with_noise_after_the_clip():
    agent = _agent(base_noise_std=0.01)
    obs = torch.randn(4, OBS)
    g = torch.Generator().manual_seed(5)
    agent.generator = g
    got = agent.base_sample(obs)
    g.manual_seed(5)
    x = torch.randn(4, D, generator=g)
    for i in range(K):
        v = agent.target_actor.velocity(obs, x, torch.full((4,), i / K))
        x = (x + v / K).clamp(-1, 1) + 0.01 * torch.randn(4, D, generator=g)
    torch.testing.assert_close(got, x.clamp(-1, 1), rtol=0, atol=0)
    # uses the target flow, not the online one
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(1.0)
    g.manual_seed(5)
    assert torch.equal(agent.base_sample(obs), got)


@pytest.mark.parametrize("mode", ["rollout", "otf", "eval"])
def test_action_shapes(mode):
    assert _agent().act(torch.randn(5, OBS), mode).shape == (5, H, DA)


# ---- the update --------------------------------------------------------------------------------------------------


def test_update_trains_all_four_parts_and_reports_its_metrics():
    agent = _agent(log_alpha_max=None)  # uncapped: the default cap holds log alpha at alpha_0 = 1 here
    before = {n: _params(m) for n, m in agent.modules().items()}
    m = agent.update(_replay(), torch.Generator().manual_seed(0))
    assert set(m) == set(agent.metric_names) and agent.step == 1
    for name, mod in agent.modules().items():
        assert not _same(before[name], mod), name
    assert all(math.isfinite(float(v)) for v in m.values())


def test_gradients_stay_with_their_own_loss():
    agent = _agent()
    b = _batch()
    loss, _, _ = agent.edit_loss(b.obs)
    loss.backward()
    assert all(p.grad is None for p in agent.critic.online.parameters())
    assert all(p.requires_grad for p in agent.critic.online.parameters())  # frozen() restores the flags
    assert all(p.grad is None for p in agent.actor.parameters())
    assert agent.temperature.log_alpha.grad is None  # alpha is detached in L_e
    assert all(p.grad is not None for p in agent.edit.parameters())
    agent.edit.zero_grad(set_to_none=True)
    loss, _ = agent.critic_loss(b)
    loss.backward()
    assert all(p.grad is None for p in agent.edit.parameters())
    assert all(p.grad is None for p in agent.actor.parameters())
    assert all(p.grad is not None for p in agent.critic.online.parameters())


def test_frozen_restores_flags_after_an_error():
    lin = torch.nn.Linear(2, 2)
    lin.bias.requires_grad_(False)
    with pytest.raises(RuntimeError), frozen(lin):
        raise RuntimeError
    assert lin.weight.requires_grad and not lin.bias.requires_grad


def test_all_losses_come_from_the_pre_step_agent():
    """Jacobi-style (spec 3.3): every critic, edit-policy and temperature read during one update sees the weights
    from before that update, although the four optimizer steps happen inside it."""
    agent = _agent()
    seen: dict[str, list[torch.Tensor]] = {"critic": [], "edit": []}
    agent.critic.online.register_forward_pre_hook(
        lambda mod, inp: seen["critic"].append(mod.net.linears[0].weight.detach().clone())
    )
    agent.edit.register_forward_pre_hook(lambda mod, inp: seen["edit"].append(mod.mean.weight.detach().clone()))
    critic0, edit0 = agent.critic.online.net.linears[0].weight.clone(), agent.edit.mean.weight.clone()
    alpha0 = float(agent.temperature.alpha.detach())
    m = agent.update(_replay(), torch.Generator().manual_seed(0))
    assert len(seen["critic"]) == 2 and len(seen["edit"]) == 2  # critic: TD regression + edit loss; edit: OTF + L_e
    assert all(torch.equal(w, critic0) for w in seen["critic"])
    assert all(torch.equal(w, edit0) for w in seen["edit"])
    assert not torch.equal(agent.critic.online.net.linears[0].weight, critic0)
    assert not torch.equal(agent.edit.mean.weight, edit0)
    # L_e = mean(alpha_sg * l - Qsub): with the pre-step alpha, l = -entropy
    torch.testing.assert_close(m["edit_loss"], alpha0 * -m["edit_entropy"] - m["edit_q_mean"], rtol=1e-5, atol=1e-4)


def test_base_bc_uses_the_valid_mask_and_the_critic_does_not():
    """Two batches that differ only in actions past an episode end: the base flow gets the same update (masked BC),
    the critic a different one (no valid mask, as the code)."""
    b1 = _batch(seed=1)
    invalid = b1.valid == 0
    assert bool(invalid.any())
    b2 = dataclasses.replace(b1, actions=torch.where(invalid.unsqueeze(-1), b1.actions + 0.5, b1.actions))
    a1, a2 = _agent(), _agent()
    a1.update_on(b1)
    a2.update_on(b2)
    assert all(torch.equal(p, q) for p, q in zip(a1.actor.parameters(), a2.actor.parameters(), strict=True))
    assert not all(
        torch.equal(p, q) for p, q in zip(a1.critic.online.parameters(), a2.critic.online.parameters(), strict=True)
    )


def test_non_finite_loss_stops_before_any_step():
    """Every gradient is taken before any step, so a NaN critic target leaves the whole agent untouched."""
    agent = _agent()
    b = _batch()
    b.R[0] = float("nan")
    before = {n: copy.deepcopy(m.state_dict()) for n, m in agent.modules().items()}
    with pytest.raises(TrainingError, match="critic loss"):
        agent.update_on(b)
    for name, mod in agent.modules().items():
        assert all(torch.equal(v, mod.state_dict()[k]) for k, v in before[name].items()), name
    assert agent.step == 0


def test_ready_is_the_official_gate_batch_times_utd_times_h():
    agent = _agent(batch_size=16, update_gate_utd=2.0)
    small, big = _replay(n_episodes=6, T=9), _replay(n_episodes=8, T=9)  # 54 and 72 steps; gate 16*2*2 = 64
    assert not agent.ready(small) and agent.ready(big)
    assert EXPOConfig().update_gate_utd == 20.0  # Square


def test_state_dict_round_trip_gives_the_identical_next_update():
    a = _agent(seed=1)
    a.update(_replay(), torch.Generator().manual_seed(0))
    tensors, meta = a.state_dict()
    tensors = {k: v.clone() for k, v in tensors.items()}  # as through a file: the live optimizer state is not copied
    b = _agent(seed=2)
    b.load_state_dict(tensors, meta)
    ma = a.update(_replay(seed=1), torch.Generator().manual_seed(5))
    mb = b.update(_replay(seed=1), torch.Generator().manual_seed(5))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    for name, mod in a.modules().items():
        assert all(torch.equal(p, q) for p, q in zip(mod.state_dict().values(), b.modules()[name].state_dict().values(),
                                                     strict=True)), name  # fmt: skip
    assert b.step == 2


def test_bad_config_and_mode_are_rejected():
    for field, value in (("n_edit", 9), ("n_base", 0), ("edit_bound", 0.0), ("bootstrap_exponent", 2),
                         ("gamma", 1.5), ("log_alpha_max", float("nan")), ("tau_actor", 1.5),
                         ("edit_target_entropy", float("inf")), ("critic_weight_decay", -1.0)):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            EXPOConfig(**{field: value}).validate()
    with pytest.raises(ConfigError, match="log_alpha_max"):
        EXPOConfig(init_temperature=2.0, log_alpha_max=0.0).validate()
    EXPOConfig(init_temperature=2.0, log_alpha_max=None).validate()
    with pytest.raises(ConfigError, match="mode"):
        _agent().act(torch.randn(2, OBS), "ode")


# ---- registry and deploy -----------------------------------------------------------------------------------------


def test_registry_builds_from_the_given_critic_and_only_for_flows():
    spec = get_algo("expo")
    assert spec.gcp_kinds == ("flow",) and spec.deploy is deploy
    pair = CriticPair(CriticConfig(obs_dim=OBS, chunk_dim=D, M=M, hidden=[16]))
    with torch.no_grad():
        for p in pair.target.parameters():
            p.add_(0.1)
    actor = _gcp()
    cfg = spec.make_config(batch_size=16, edit_hidden=[16])
    agent = spec.build(actor, copy.deepcopy(actor), pair, cfg, RunSeeds(7))
    assert _same(_params(pair.online), agent.critic.online) and _same(_params(pair.target), agent.critic.target)
    assert agent.critic.online is not pair.online
    again = spec.build(_gcp(), copy.deepcopy(actor), pair, cfg, RunSeeds(7))
    other = spec.build(_gcp(), copy.deepcopy(actor), pair, cfg, RunSeeds(8))
    assert _same(_params(agent.edit), again.edit) and not _same(_params(agent.edit), other.edit)
    with pytest.raises(ConfigError, match="flow"):
        spec.build(_gcp("diffusion"), _gcp("diffusion"), pair, cfg, RunSeeds(7))
    with pytest.raises(ConfigError, match="critic"):
        spec.build(actor, copy.deepcopy(actor), CriticPair(CriticConfig(obs_dim=OBS, chunk_dim=D + 2, M=M)), cfg,
                   RunSeeds(7))  # fmt: skip


def test_deploy_round_trip_through_a_checkpoint(tmp_path):
    agent = _agent()
    for i in range(2):
        agent.update(_replay(seed=i), torch.Generator().manual_seed(i))
    tensors = module_tensors("actor", agent.actor) | module_tensors("target_actor", agent.target_actor)
    for name, mod in agent.deploy_modules().items():
        tensors |= module_tensors(f"deploy.{name}", mod)
    save_checkpoint(tmp_path / "ft", tensors, {"algo": "expo", "algo_config": dataclasses.asdict(agent.cfg)})
    loaded, config = load_checkpoint(tmp_path / "ft")
    actor = _gcp()
    actor.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("actor.")})
    obs = torch.randn(9, OBS)
    for mode in ("eval", "otf"):
        agent.generator.manual_seed(11)
        policy = deploy(actor, loaded, config, mode, torch.Generator().manual_seed(11))
        torch.testing.assert_close(policy(obs), agent.act(obs, mode), rtol=0, atol=0)
    ode = deploy(actor, loaded, config, "ode", torch.Generator().manual_seed(3))(obs)
    ref = agent.actor.sample(obs, deterministic=True, generator=torch.Generator().manual_seed(3)).actions
    torch.testing.assert_close(ode, ref, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="algo_config"):
        deploy(actor, loaded, {}, "eval")
    with pytest.raises(ConfigError, match="mode"):
        deploy(actor, loaded, config, "bon")


# ---- toy learning ------------------------------------------------------------------------------------------------

# Toy deviations from the Square defaults, each for the CPU budget: batch 64, a 2x64 edit MLP, EMA rates 0.05 (the
# OGPO toy test's; at 0.005 the base flow, which is evaluated, trails the improving OTF rollouts by ~200 updates of
# the ~2.2k this run makes), the toy's gamma 0.95, one update per 4 env steps (and the matching update gate), 10k
# env steps (16k, the OGPO toy budget, took ~9 min on the shared CPU at batch 128). N = M = 8, B = 0.05, the capped
# temperature and gamma^1 bootstrapping are the defaults. Measured (seed 0): BC 0.385 (77/200); eval-mode (Base(s)
# alone) success 0.28 / 0.30 / 0.31 / 0.55 / 0.56 at 2k / 4k / 6k / 8k / 10k env steps (64 episodes each), OTF rollout
# success 0.57 -> 0.92; final 0.66 (132/200); 200 s on the shared 2-core machine.
TOY_AGENT = dict(batch_size=64, edit_hidden=[64, 64], tau_actor=0.05, tau_critic=0.05, gamma=0.95, update_gate_utd=0.25)


@pytest.mark.slow
def test_expo_improves_on_bc_on_the_toy_task():
    from ogpo.stats import fisher_exact_less
    from tests.ogpo.toy_recipe import run

    r = run("flow", algo="expo", seed=0, total_env_steps=10_000, verbose=True, agent_overrides=TOY_AGENT,
            online_overrides={"utd": 0.25})  # fmt: skip
    assert r["bc_success"] <= 0.5
    assert r["episodes"] >= 200
    assert all(row["log_alpha"] == 0.0 for row in r["curve"])  # held at the cap (the target is unreachable)
    p = fisher_exact_less(r["final_successes"], r["episodes"], r["bc_successes"], r["episodes"])  # H1: BC < EXPO
    assert p < 0.05, (r["bc_success"], r["final_success"], p, [row["success"] for row in r["curve"]])
