"""The shared off-policy trainer through the Agent interface alone, for every registered off-policy algorithm:
one run seed split into independent streams (two seeds differ in start states and replay samples, one seed twice
is identical), and the run state (``trainer.state_dict``) round-trips exactly into a fresh trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ogpo.agents.online import OnlineConfig, OnlineTrainer, curve_columns
from ogpo.algos import RunSeeds, algorithms
from ogpo.algos.base import STREAMS
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.toy import PointGapEnv
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig

H = 4
# Small, fast settings per algorithm (every key must be an option of that algorithm's config class).
SMALL: dict[str, dict] = {
    "ogpo": dict(G=4, ppo_batch_size=8, batch_size=16, best_of_n=2, lr_warmup=5, lr_period=20),
    "ogpo+": dict(G=4, ppo_batch_size=8, batch_size=16, best_of_n=2, lr_warmup=5, lr_period=20),
    "ogpo+ca": dict(G=4, ppo_batch_size=8, batch_size=16, best_of_n=2, lr_warmup=5, lr_period=20),
    "qc": dict(best_of_n=2, batch_size=16),
    "expo": dict(n_base=2, n_edit=2, edit_hidden=[16], batch_size=16, update_gate_utd=1.0),
    "dsrl": dict(batch_size=8, actor_hidden=[16]),
}
# The on-policy DPPO has its own trainer (ogpo/agents/onpolicy.py, tested in tests/ogpo/algos/test_dppo.py);
# these are its small settings for the pipeline tests.
SMALL_ON_POLICY: dict[str, dict] = {"dppo": dict(n_steps=5, batch_size=16, update_epochs=2, value_hidden=[16, 16, 16])}


def off_policy_algos() -> list[str]:
    """Registered algorithms with small settings here (the on-policy DPPO has its own trainer and tests)."""
    return [n for n in algorithms() if n in SMALL]


def make_trainer(algo: str, seed: int, steps: int = 160) -> OnlineTrainer:
    spec = algorithms()[algo]
    torch.manual_seed(123)  # the same BC weights for every run (the BC checkpoint is an input, not the run seed)
    kind = spec.gcp_kinds[0]
    actor = make_gcp(GCPConfig(kind=kind, obs_dim=2, act_dim=2, H=H, K=3, hidden=[16], sigma0=0.2, min_std=0.05))
    seeds = RunSeeds(seed)
    torch.manual_seed(seeds.int_seed("init"))
    critic = CriticPair(CriticConfig(obs_dim=2, chunk_dim=H * 2, M=3, hidden=[16]))
    target = copy.deepcopy(actor).requires_grad_(False)
    agent = spec.build(actor, target, critic, spec.make_config(**SMALL[algo]), seeds)
    cfg = OnlineConfig(total_env_steps=steps, start_training=40, utd=0.25, eval_every=80, eval_episodes=4,
                       checkpoint_every=10**9, log_every=10**9)  # fmt: skip
    replay = ReplayBuffer(5_000, 2, 2, extras=agent.replay_extras)
    return OnlineTrainer(agent, PointGapEnv(4), PointGapEnv(4), replay, cfg, seeds)


def _rows(rows: list[dict]) -> str:
    """Curve rows without wall time, as text (NaN metrics compare equal this way)."""
    return repr([{k: v for k, v in r.items() if k != "wall_time"} for r in rows])


def test_seed_streams_are_independent_and_reproducible():
    a, b = RunSeeds(0), RunSeeds(1)
    ints = [a.int_seed(s) for s in STREAMS]
    assert len(set(ints)) == len(STREAMS)  # no two streams of one run share a seed
    assert ints == [RunSeeds(0).int_seed(s) for s in STREAMS]
    assert all(a.int_seed(s) != b.int_seed(s) for s in STREAMS)


@pytest.mark.parametrize("algo", off_policy_algos())
def test_two_seeds_differ_in_start_states_and_replay_samples_one_seed_twice_is_identical(algo):
    runs = {}
    for name, seed in (("a", 0), ("a_again", 0), ("b", 1)):
        tr = make_trainer(algo, seed)
        rows: list[dict] = []
        tr.run(on_eval=rows.append)
        batch = tr.replay.sample(16, H, 0.99, generator=tr.sample_gen)
        runs[name] = (tr, rows, batch)
    (ta, ra, ba), (t2, r2, b2), (tb, _, bb) = runs["a"], runs["a_again"], runs["b"]
    n = ta.replay.size
    assert ta.updates > 0
    assert t2.replay.size == n and torch.equal(t2.replay.obs[:n], ta.replay.obs[:n])
    assert _rows(r2) == _rows(ra)
    assert torch.equal(b2.start, ba.start)
    assert not torch.equal(tb.replay.obs[0], ta.replay.obs[0])  # env reset stream: different start states
    assert not torch.equal(bb.start, ba.start)  # replay stream: different samples
    assert list(ra[0]) == curve_columns(ta.agent)


@pytest.mark.parametrize("algo", off_policy_algos())
def test_run_state_round_trips_into_a_fresh_trainer(algo):
    tr = make_trainer(algo, seed=3, steps=240)
    tr.cfg.total_env_steps = 128  # not a multiple of the 30-step toy horizon: episodes are in flight
    tr.run()
    assert tr.updates > 0 and any(tr._traj)  # unfinished trajectories are part of the state
    tensors, meta = tr.state_dict()
    clones = []
    for _ in range(2):
        fresh = make_trainer(algo, seed=99, steps=240)  # another seed: everything must come from the state
        fresh.load_state_dict({k: v.clone() for k, v in tensors.items()}, copy.deepcopy(meta))
        clones.append(fresh)
    a, b = clones
    assert a.env_steps == tr.env_steps and a.updates == tr.updates
    sa, _ = a.agent.state_dict()
    st, _ = tr.agent.state_dict()
    for k, v in st.items():
        assert torch.equal(sa[k], v), k
    # the unfinished trajectories were stored as truncated episodes: the replay grew by exactly their steps
    assert a.replay.size == tr.replay.size + sum(len(t) for t in tr._traj)
    rows_a: list[dict] = []
    rows_b: list[dict] = []
    a.run(on_eval=rows_a.append)
    b.run(on_eval=rows_b.append)
    assert a.env_steps == b.env_steps == 240
    assert _rows(rows_a) == _rows(rows_b) and len(rows_a) == 2
    for (k, v), w in zip(a.agent.actor.state_dict().items(), b.agent.actor.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    np.testing.assert_array_equal(a.replay.obs[: a.replay.size].numpy(), b.replay.obs[: b.replay.size].numpy())
