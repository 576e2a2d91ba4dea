"""The precision/compile seam (ogpo.precision): bfloat16 changes only the network evaluations (outputs, log-probs,
ratios and losses stay float32, and equal online and EMA weights still give a PPO ratio of exactly 1), a host
that cannot do what was asked falls back with one warning line, a compile failure falls back to eager once, and
a compiled update does not recompile from step to step."""

import logging

import pytest
import torch

import ogpo.algos.ogpo as ogpo_mod
from ogpo import precision
from ogpo.errors import ConfigError
from ogpo.precision import Acceleration, accelerate_, acceleration_of, resolve, run_net
from tests.ogpo.algos.test_ogpo import DA, H, _agent, _batch

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not precision.bf16_supported(CPU)[0], reason="no CPU bfloat16 support here")


@needs_bf16
@pytest.mark.parametrize("storage", ["clean", "official"])
def test_bf16_ratio_is_exactly_one_with_equal_weights(storage, monkeypatch):
    """With online == EMA weights, log pi_new - log pi_old is exactly 0 for every chain under bf16, all in
    float32; the sampler's own (per-step, bf16) log-prob is not bitwise the batched one, which is why the agent
    re-evaluates the old log-prob by the batched pass."""
    agent = _agent(precision="bf16", chain_storage=storage, tau_actor=1.0)
    assert agent.acceleration.dtype is torch.bfloat16
    agent.target_actor.load_state_dict(agent.actor.state_dict())
    seen: dict[str, torch.Tensor] = {}
    real_loss, real_sample = ogpo_mod.ppo_clip_loss, agent.target_actor.sample

    def loss_spy(lp, lp_old, adv, eps):
        seen["lp"], seen["lp_old"] = lp.detach().clone(), lp_old.detach().clone()
        return real_loss(lp, lp_old, adv, eps)

    def sample_spy(*a, **kw):
        s = real_sample(*a, **kw)
        seen["sampler_lp"] = s.log_prob.detach().clone()
        return s

    monkeypatch.setattr(ogpo_mod, "ppo_clip_loss", loss_spy)
    monkeypatch.setattr(agent.target_actor, "sample", sample_spy)
    m = agent.actor_step(_batch(), _batch())
    assert seen["lp"].dtype == seen["lp_old"].dtype == torch.float32
    if storage == "clean":  # official storage clips x_K in the new log-prob's chain only (spec 1.4)
        assert torch.equal(seen["lp"], seen["lp_old"])
        assert float(m["clip_frac"]) == 0.0
    assert not torch.equal(seen["sampler_lp"], seen["lp_old"])  # the bf16 per-step rows differ
    assert torch.allclose(seen["sampler_lp"], seen["lp_old"], atol=0.5)  # ... by bf16 rounding only


@needs_bf16
def test_bf16_runs_the_networks_in_bf16_and_returns_float32():
    agent = _agent(precision="bf16")
    dtypes: list[torch.dtype] = []
    hook = agent.actor.net.net[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    obs = torch.randn(5, 2)
    out = agent.actor(obs, torch.randn(5, H * DA), torch.rand(5))
    q = agent.critic.online(obs, torch.rand(5, H, DA))
    hook.remove()
    assert dtypes == [torch.bfloat16]
    assert out.dtype == q.dtype == torch.float32
    fp32 = _agent()
    assert fp32.acceleration == Acceleration()
    fp32_out = fp32.actor(obs, torch.randn(5, H * DA), torch.rand(5))
    assert fp32_out.dtype == torch.float32


def test_bf16_keeps_checkpoints_unchanged():
    """The acceleration is a runtime setting: no state_dict key, no change to the saved config."""
    a, b = _agent(), _agent()
    accelerate_(b.actor, Acceleration(dtype=torch.bfloat16))
    assert list(a.actor.state_dict()) == list(b.actor.state_dict())
    assert acceleration_of(b.actor).dtype is torch.bfloat16 and acceleration_of(a.actor).dtype is None


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        _agent(precision="fp16")


def test_bf16_falls_back_with_one_warning_where_unsupported(monkeypatch, caplog):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: (False, "this CPU has no bf16"))
    with caplog.at_level(logging.WARNING, logger="ogpo.precision"):
        agent = _agent(precision="bf16")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["ogpo+ca: precision bf16 requested but this CPU has no bf16; using fp32"]
    assert agent.acceleration.dtype is None


def test_compile_falls_back_with_one_warning_without_a_compiler(monkeypatch, caplog):
    monkeypatch.setattr(precision.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="ogpo.precision"):
        acc = resolve("fp32", True, CPU, "ogpo")
    assert [r.getMessage() for r in caplog.records] == [
        "ogpo: compile requested but no C++ compiler (g++) on PATH for torch.compile's CPU backend; running eager"
    ]
    assert acc == Acceleration()


def test_a_failing_compile_falls_back_to_eager_once(monkeypatch, caplog):
    """A toolchain failure shows up only at the first compiled call: one warning, the eager result, and the
    owner stays eager afterwards."""

    def broken_compile(net, **kw):
        def fn(x):
            raise RuntimeError("inductor: C++ compile failed\nlong details")

        return fn

    monkeypatch.setattr(torch, "compile", broken_compile)
    owner = torch.nn.Module()
    net = torch.nn.Linear(3, 2)
    accelerate_(owner, Acceleration(compile=True))
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING, logger="ogpo.precision"):
        y1, y2 = run_net(owner, net, x), run_net(owner, net, x)
    assert torch.equal(y1, net(x)) and torch.equal(y2, net(x))
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile failed (RuntimeError: inductor: C++ compile failed); running eager"
    ]
    assert acceleration_of(owner).compile is False


def test_an_eager_error_is_not_swallowed():
    owner, net = torch.nn.Module(), torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError):
        run_net(owner, net, torch.randn(4, 5))


def test_compiled_updates_do_not_recompile_per_step(monkeypatch):
    """Through dynamo (the cheap eager backend, so the test does not build C++ kernels): the graphs the first
    updates compile are all the later updates use, and the compiled update gives the eager update's numbers."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: real_compile(net, backend="eager", **kw))
    torch._dynamo.reset()
    compiled, eager = _agent(compile=True), _agent()
    assert compiled.acceleration.compile
    for i in range(2):
        compiled.update_on(_batch(seed=i), _batch(seed=i))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    for i in range(2, 5):
        mc = compiled.update_on(_batch(seed=i), _batch(seed=i))
    assert counters["stats"]["unique_graphs"] == graphs
    for i in range(5):
        me = eager.update_on(_batch(seed=i), _batch(seed=i))
    for k in ("actor_loss", "critic_loss", "clip_frac"):
        assert float(mc[k]) == pytest.approx(float(me[k]), rel=1e-3, abs=1e-5), k
