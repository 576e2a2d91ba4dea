"""GCPs (flow and diffusion): chain log-probs re-derived independently, sampler/recompute agreement, PPO
ratio, determinism, BC learning and masking, gradient isolation of chains, and input validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import Normal

from ogpo.errors import ConfigError, ShapeError
from ogpo.gcp import DiffusionPolicy, FlowPolicy, GCPConfig, make_gcp

KINDS = ["flow", "diffusion"]


def tiny_cfg(kind: str, **kw) -> GCPConfig:
    base = dict(kind=kind, obs_dim=3, act_dim=2, H=3, K=4, hidden=[32, 32], time_dim=8)
    base.update(kw)
    return GCPConfig(**base)


def make(kind: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return make_gcp(tiny_cfg(kind, **kw))


def obs_batch(B: int = 16, obs_dim: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, obs_dim, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- independent references
def flow_step_means(gcp: FlowPolicy, obs: torch.Tensor, chain: torch.Tensor) -> list[torch.Tensor]:
    """mu_i of spec 1.4, one network call per step, written from the spec rather than from the module."""
    c = gcp.cfg
    mus = []
    for i in range(c.K):
        t = i / c.K
        x = chain[:, i]
        v = gcp.velocity(obs, x, torch.full((obs.shape[0],), t, dtype=obs.dtype))
        sigma = c.sigma0 * math.sqrt(1.0 - t) if c.tapered else c.sigma0
        drift = v + (sigma**2 / 2.0) * (t * v - x) / (1.0 - t) if c.drift_correction else v
        mu = x + drift * (1.0 / c.K)
        mus.append(mu.clamp(-1.0, 1.0) if c.clip_intermediate else mu)
    return mus


def flow_step_stds(cfg: GCPConfig) -> list[float]:
    return [cfg.sigma0 * math.sqrt(1.0 - i / cfg.K) if cfg.tapered else cfg.sigma0 for i in range(cfg.K)]


def cosine_alpha_bar_ref(K: int, s: float = 0.008) -> list[float]:
    f = [math.cos((t / K + s) / (1 + s) * math.pi / 2) ** 2 for t in range(K + 1)]
    ab = [1.0]
    for t in range(1, K + 1):
        beta = min(1.0 - f[t] / f[t - 1], 0.999)
        ab.append(ab[-1] * (1.0 - beta))
    return ab


def diffusion_step_means_stds(gcp: DiffusionPolicy, obs: torch.Tensor, chain: torch.Tensor):
    """DDPM posterior mean, x0_hat clipped to [-1, 1]; std floored at min_std; code step i <-> t = K - i."""
    c = gcp.cfg
    ab = cosine_alpha_bar_ref(c.K)
    mus, stds = [], []
    for i in range(c.K):
        t = c.K - i
        x = chain[:, i]
        eps = gcp.epsilon(obs, x, torch.full((obs.shape[0],), t / c.K, dtype=obs.dtype))
        x0 = ((x - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t])).clamp(-1.0, 1.0)
        alpha = ab[t] / ab[t - 1]
        beta = 1 - alpha
        c0 = beta * math.sqrt(ab[t - 1]) / (1 - ab[t])
        ct = (1 - ab[t - 1]) * math.sqrt(alpha) / (1 - ab[t])
        mu = c0 * x0 + ct * x
        mus.append(mu)
        stds.append(max(math.sqrt(beta * (1 - ab[t - 1]) / (1 - ab[t])), c.min_std))
    return mus, stds


def reference_log_prob(gcp, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
    c = gcp.cfg
    if c.kind == "flow":
        mus, stds = flow_step_means(gcp, obs, chain), flow_step_stds(c)
    else:
        mus, stds = diffusion_step_means_stds(gcp, obs, chain)
    total = Normal(torch.zeros_like(chain[:, 0]), 1.0).log_prob(chain[:, 0]).sum(-1)
    for i in range(c.K):
        total = total + Normal(mus[i], stds[i]).log_prob(chain[:, i + 1]).sum(-1)
    return total / ((c.K + 1) * c.H * c.act_dim)


# ---------------------------------------------------------------------------------- log-prob correctness
@pytest.mark.parametrize(
    "kind,extra",
    [
        ("flow", {}),
        ("flow", {"tapered": False}),
        ("flow", {"drift_correction": False, "clip_intermediate": False}),
        ("diffusion", {}),
    ],
)
def test_chain_log_prob_equals_independent_per_step_normals(kind, extra):
    gcp = make(kind, **extra).double()
    obs = obs_batch().double()
    s = gcp.sample(obs, generator=gen(3))
    assert s.chain.dtype == torch.float64
    with torch.no_grad():
        ref = reference_log_prob(gcp, obs, s.chain)
        got = gcp.log_prob(obs, s.chain)
    # schedules are built in float64 but stored as float32 buffers, hence not 1e-12
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_flow_noise_schedule_is_tapered_from_sigma0():
    gcp = FlowPolicy(GCPConfig(obs_dim=3, act_dim=2, H=2, K=10, hidden=[8]))
    std = gcp.std.squeeze(-1)
    assert std[0].item() == pytest.approx(0.05)
    assert std[-1].item() == pytest.approx(0.05 * math.sqrt(0.1), rel=1e-6)


def test_cosine_schedule_matches_reference():
    gcp = DiffusionPolicy(tiny_cfg("diffusion", K=7))
    ab = cosine_alpha_bar_ref(7)
    want = torch.tensor([math.sqrt(a) for a in ab], dtype=torch.float32)
    torch.testing.assert_close(gcp.bc_sqrt_ab, want)
    assert gcp.std.min().item() >= gcp.cfg.min_std  # last step posterior std 0 is floored


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_is_one_batched_pass_and_rows_are_independent(kind):
    gcp = make(kind)
    obs = obs_batch(8)
    s = gcp.sample(obs, generator=gen(4))
    calls = []
    hook = gcp.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    lp_all = gcp.log_prob(obs, s.chain)
    hook.remove()
    assert calls == [torch.Size([8, gcp.cfg.K, 3 + 6 + 8])]
    lp_one = torch.cat([gcp.log_prob(obs[j : j + 1], s.chain[j : j + 1]) for j in range(8)])
    torch.testing.assert_close(lp_all, lp_one, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- sampler vs recompute
@pytest.mark.parametrize("kind", KINDS)
def test_sampler_log_prob_equals_recomputed_on_stored_chain(kind):
    gcp = make(kind)
    obs = obs_batch(32)
    s = gcp.sample(obs, generator=gen(5))
    assert s.log_prob.shape == (32,)
    torch.testing.assert_close(s.log_prob, gcp.log_prob(obs, s.chain).detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_sampler_log_prob_matches_recompute_when_final_action_is_clipped(kind):
    gcp = make(kind)
    with torch.no_grad():  # drive every mean to the +-1 boundary so ~half the final samples leave [-1, 1]
        gcp.net.net[-1].bias.fill_(20.0)
    obs = obs_batch(64)
    s = gcp.sample(obs, generator=gen(6))
    final = s.chain[:, -1]
    assert (final.abs() > 1.0).any(), "test must exercise the final [-1, 1] clip"
    assert s.actions.abs().max() <= 1.0
    torch.testing.assert_close(s.actions.reshape(64, -1), final.clamp(-1, 1))
    lp = gcp.log_prob(obs, s.chain).detach()
    torch.testing.assert_close(s.log_prob, lp, rtol=0, atol=1e-5)
    # the official-code pitfall: evaluating on the clipped chunk gives a different value
    clipped_chain = s.chain.clone()
    clipped_chain[:, -1] = s.actions.reshape(64, -1)
    lp_clipped = gcp.log_prob(obs, clipped_chain).detach()
    assert (lp_clipped - s.log_prob).abs().max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_samples_stay_within_randn_clip_of_their_means(kind):
    gcp = make(kind, randn_clip=0.5)
    obs = obs_batch(64)
    s = gcp.sample(obs, generator=gen(7))
    c = gcp.cfg
    with torch.no_grad():
        if kind == "flow":
            mus, stds = flow_step_means(gcp, obs, s.chain), flow_step_stds(c)
        else:
            mus, stds = diffusion_step_means_stds(gcp, obs, s.chain)
    for i in range(c.K):
        assert ((s.chain[:, i + 1] - mus[i]).abs() <= 0.5 * stds[i] + 1e-5).all()


# ---------------------------------------------------------------------------------- PPO ratio
@pytest.mark.parametrize("kind", KINDS)
def test_ratio_is_exactly_one_for_equal_weights_and_moves_after_a_change(kind):
    gcp = make(kind)
    twin = copy.deepcopy(gcp)
    obs = obs_batch(32)
    s = gcp.sample(obs, generator=gen(8))
    lp_old = gcp.log_prob(obs, s.chain).detach()
    ratio = torch.exp(twin.log_prob(obs, s.chain) - lp_old)
    assert torch.equal(ratio, torch.ones_like(ratio))
    with torch.no_grad():
        twin.net.net[0].weight.add_(0.05 * torch.randn(twin.net.net[0].weight.shape, generator=gen(9)))
    ratio = torch.exp(twin.log_prob(obs, s.chain) - lp_old)
    assert (ratio != 1.0).all()


# ---------------------------------------------------------------------------------- sampling behaviour
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_sampling_is_reproducible_and_in_range(kind):
    gcp = make(kind)
    obs = obs_batch(32)
    a = gcp.sample(obs, deterministic=True, generator=gen(10))
    b = gcp.sample(obs, deterministic=True, generator=gen(10))
    other = gcp.sample(obs, deterministic=True, generator=gen(11))
    assert a.log_prob is None
    assert torch.equal(a.actions, b.actions) and torch.equal(a.chain, b.chain)
    assert not torch.equal(a.actions, other.actions)
    assert a.actions.shape == (32, 3, 2) and a.chain.shape == (32, 5, 6)
    assert a.actions.abs().max() <= 1.0
    torch.testing.assert_close(a.actions.reshape(32, -1), a.chain[:, -1].clamp(-1, 1))


def test_flow_ode_is_plain_euler():
    gcp = make("flow")
    obs = obs_batch(8)
    s = gcp.sample(obs, deterministic=True, generator=gen(12))
    x = s.chain[:, 0]
    K = gcp.cfg.K
    with torch.no_grad():
        for i in range(K):
            x = x + gcp.velocity(obs, x, torch.full((8,), i / K)) / K
    torch.testing.assert_close(s.chain[:, -1], x, rtol=0, atol=1e-6)


def test_diffusion_ddim_step_is_deterministic_eta_zero():
    gcp = make("diffusion")
    obs = obs_batch(8)
    s = gcp.sample(obs, deterministic=True, generator=gen(13))
    K = gcp.cfg.K
    ab = cosine_alpha_bar_ref(K)
    x = s.chain[:, 0]
    with torch.no_grad():
        for i in range(K):
            t = K - i
            eps = gcp.epsilon(obs, x, torch.full((8,), t / K))
            x0 = ((x - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t])).clamp(-1, 1)
            eps = (x - math.sqrt(ab[t]) * x0) / math.sqrt(1 - ab[t])
            x = math.sqrt(ab[t - 1]) * x0 + math.sqrt(1 - ab[t - 1]) * eps
    torch.testing.assert_close(s.chain[:, -1], x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_chains_carry_no_gradient_but_log_prob_does(kind):
    gcp = make(kind)
    obs = obs_batch(8).requires_grad_(True)
    for deterministic in (False, True):
        s = gcp.sample(obs, deterministic=deterministic, generator=gen(14))
        assert not s.chain.requires_grad and not s.actions.requires_grad
        assert s.log_prob is None or not s.log_prob.requires_grad
    lp = gcp.log_prob(obs.detach(), s.chain)
    assert lp.requires_grad
    lp.sum().backward()
    assert gcp.net.net[0].weight.grad is not None


# ---------------------------------------------------------------------------------- behaviour cloning
def bimodal_chunks(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunks [n, 2, 2]: one of two mirrored modes (not observable) plus an obs-dependent shift."""
    g = gen(seed)
    obs = torch.rand(n, 2, generator=g) * 2 - 1
    mode = torch.randint(0, 2, (n, 1, 1), generator=g).float() * 2 - 1
    base = torch.tensor([[0.6, -0.3], [0.4, 0.5]])
    a = mode * base + 0.3 * obs[:, None, :] + 0.05 * torch.randn(n, 2, 2, generator=g)
    return obs, a.clamp(-1, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_bc_loss_falls_on_a_fixed_bimodal_dataset(kind):
    torch.manual_seed(0)
    gcp = make_gcp(GCPConfig(kind=kind, obs_dim=2, act_dim=2, H=2, K=5, hidden=[64, 64], time_dim=16))
    obs, a = bimodal_chunks(512)

    def eval_loss() -> float:
        with torch.no_grad():
            return gcp.bc_loss(obs, a, generator=gen(123)).item()

    before = eval_loss()
    opt = torch.optim.Adam(gcp.parameters(), lr=3e-3)
    g = gen(1)
    for _ in range(300):
        idx = torch.randint(0, 512, (128,), generator=g)
        loss = gcp.bc_loss(obs[idx], a[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("kind", KINDS)
def test_bc_mask_ignores_padded_steps(kind):
    gcp = make(kind)
    obs = obs_batch(16)
    a = torch.rand(16, 3, 2, generator=gen(15)) * 2 - 1
    mask = torch.ones(16, 3)
    mask[:8, 2] = 0.0
    mask[:4, 1] = 0.0
    garbage = a.clone()
    garbage[mask == 0] = torch.rand(int((mask == 0).sum()), 2, generator=gen(16)) * 2 - 1
    l1 = gcp.bc_loss(obs, a, mask, generator=gen(17))
    l2 = gcp.bc_loss(obs, garbage, mask, generator=gen(17))
    assert torch.equal(l1, l2)
    # the unmasked loss does see the garbage, and a bool mask means the same as a float one
    unmasked = gcp.bc_loss(obs, a, generator=gen(17))
    assert not torch.equal(unmasked, gcp.bc_loss(obs, garbage, generator=gen(17)))
    assert torch.equal(gcp.bc_loss(obs, a, mask.bool(), generator=gen(17)), l1)
    assert torch.equal(
        gcp.bc_loss(obs, a, torch.ones(16, 3), generator=gen(17)), gcp.bc_loss(obs, a, generator=gen(17))
    )


def test_bc_mask_normalises_by_valid_elements():
    gcp = make("flow")
    obs = obs_batch(4)
    a = torch.rand(4, 3, 2, generator=gen(18)) * 2 - 1
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.float32)
    g = gen(19)
    tau = torch.rand(4, 1, generator=g)
    z = torch.randn(4, 6, generator=g)
    a0 = (a * mask[..., None]).reshape(4, 6)
    with torch.no_grad():
        v = gcp.velocity(obs, tau * a0 + (1 - tau) * z, tau.squeeze(-1))
        err = (v - (a0 - z)).square().view(4, 3, 2)
        want = (err * mask[..., None]).sum() / (mask.sum() * 2)
        got = gcp.bc_loss(obs, a, mask, generator=gen(19))
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_raise_named_errors(kind):
    gcp = make(kind)
    with pytest.raises(ShapeError, match="obs"):
        gcp.sample(torch.zeros(4, 5))
    bad = obs_batch(4)
    bad[1, 2] = float("nan")
    with pytest.raises(ShapeError, match="obs.*NaN"):
        gcp.sample(bad)
    obs = obs_batch(4)
    s = gcp.sample(obs, generator=gen(20))
    with pytest.raises(ShapeError, match="chain"):
        gcp.log_prob(obs, s.chain[:, :-1])
    with pytest.raises(ShapeError, match="obs"):
        gcp.log_prob(bad, s.chain)
    with pytest.raises(ShapeError, match="actions"):
        gcp.bc_loss(obs, torch.zeros(4, 2, 2))
    with pytest.raises(ShapeError, match="mask"):
        gcp.bc_loss(obs, torch.zeros(4, 3, 2), torch.ones(4, 2))
    with pytest.raises(ConfigError, match="gcp.K"):
        make_gcp(tiny_cfg(kind, K=0))
    with pytest.raises(ConfigError, match="gcp.H"):
        make_gcp(tiny_cfg(kind, H=0))
    with pytest.raises(ConfigError, match="gcp.act_dim"):
        make_gcp(tiny_cfg(kind, act_dim=0))


def test_unknown_kind_and_mismatched_kind_raise_config_error():
    with pytest.raises(ConfigError, match="'transformer'"):
        make_gcp(tiny_cfg("transformer"))
    with pytest.raises(ConfigError, match="kind"):
        FlowPolicy(tiny_cfg("diffusion"))
    with pytest.raises(ConfigError, match="beta_schedule"):
        make_gcp(tiny_cfg("diffusion", beta_schedule="quadratic"))
    with pytest.raises(ConfigError, match="sigma0"):
        make_gcp(tiny_cfg("flow", sigma0=0.0))


@pytest.mark.parametrize("kind", KINDS)
def test_weights_only_in_state_dict_and_round_trip(kind):
    gcp = make(kind)
    sd = gcp.state_dict()
    assert all(k.startswith(("net.", "time_emb.")) for k in sd)  # schedules are rebuilt from the config
    other = make(kind, seed=5)
    other.load_state_dict(sd)
    obs = obs_batch(4)
    s = gcp.sample(obs, generator=gen(21))
    assert torch.equal(gcp.log_prob(obs, s.chain), other.log_prob(obs, s.chain))


@pytest.mark.parametrize("kind", KINDS)
def test_validate_false_skips_only_the_finiteness_check(kind):
    gcp = make(kind)
    bad = obs_batch(4)
    bad[0, 0] = float("inf")
    s = gcp.sample(bad, generator=gen(22), validate=False)  # the caller vouched for its inputs
    assert s.chain.shape == (4, gcp.cfg.K + 1, 6)
    with pytest.raises(ShapeError, match="obs"):  # shapes are always checked (no host sync needed)
        gcp.sample(torch.zeros(4, 7), validate=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_sampling_and_log_prob_follow_the_module_device(kind):
    dev = torch.device("cuda")
    gcp = make(kind).to(dev)
    obs = obs_batch(64).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    s = gcp.sample(obs, generator=g)
    assert s.chain.device.type == "cuda" and s.actions.device.type == "cuda"
    torch.testing.assert_close(s.log_prob, gcp.log_prob(obs, s.chain).detach(), rtol=0, atol=1e-4)
    loss = gcp.bc_loss(obs, s.actions, torch.ones(64, 3, device=dev), generator=g)
    loss.backward()
