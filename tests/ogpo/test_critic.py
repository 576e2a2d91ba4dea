import copy

import pytest
import torch

from ogpo.algos.ogpo import best_of_n_index, group_advantages, ppo_clip_loss
from ogpo.critic import CriticConfig, CriticEnsemble, CriticPair, critic_loss, td_target
from ogpo.errors import ShapeError
from ogpo.nets import ema_update_


def test_ensemble_heads_are_independent_and_batched():
    torch.manual_seed(0)
    c = CriticEnsemble(CriticConfig(obs_dim=3, chunk_dim=4, M=5, hidden=[16, 16]))
    obs, chunk = torch.randn(7, 3), torch.randn(7, 4)
    q = c(obs, chunk)
    assert q.shape == (5, 7)
    assert not torch.allclose(q[0], q[1])  # independent init
    # gradient of head 0 does not touch head 1's parameters
    q[0].sum().backward()
    w = c.net.linears[0].weight.grad
    assert w[0].abs().sum() > 0 and w[1].abs().sum() == 0
    with pytest.raises(ShapeError, match="critic chunk"):
        c(obs, torch.randn(7, 5))


def test_td_target_bootstrap_mask_and_mean_over_heads():
    torch.manual_seed(0)
    c = CriticEnsemble(CriticConfig(obs_dim=2, chunk_dim=3, M=4, hidden=[8]))
    next_obs, next_chunks = torch.randn(5, 2), torch.randn(5, 1, 3)
    R, mask = torch.randn(5), torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    y = td_target(c, next_chunks, next_obs, R, mask, gamma=0.9, H=4)
    expect = R + 0.9**4 * mask * c(next_obs, next_chunks[:, 0]).mean(0)
    assert torch.allclose(y, expect)
    # terminal sequences get exactly R
    assert torch.allclose(y[mask == 0], R[mask == 0])
    # Q-VR: mean over samples per head, then over heads
    chunks8 = torch.randn(5, 8, 3)
    y8 = td_target(c, chunks8, next_obs, R, mask, 0.9, 4)
    per = torch.stack([c(next_obs, chunks8[:, g]) for g in range(8)], -1).mean(-1).mean(0)
    assert torch.allclose(y8, R + 0.9**4 * mask * per, atol=1e-6)


def test_critic_loss_weighted_by_valid():
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([0.0, 0.0])
    assert critic_loss(q, y, torch.tensor([1.0, 0.0])).item() == pytest.approx((1 + 9) / 4)


def test_ema_moves_by_exactly_tau():
    torch.manual_seed(0)
    pair = CriticPair(CriticConfig(obs_dim=2, chunk_dim=2, M=2, hidden=[4]))
    with torch.no_grad():
        for p in pair.online.parameters():
            p.add_(1.0)
    before = [p.clone() for p in pair.target.parameters()]
    pair.ema_(0.05)
    for b, t, o in zip(before, pair.target.parameters(), pair.online.parameters(), strict=True):
        assert torch.allclose(t, 0.95 * b + 0.05 * o, atol=1e-7)
    m1, m2 = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    t0 = copy.deepcopy(m1)
    ema_update_(m1, m2, 0.005)
    assert torch.allclose(m1.weight, t0.weight + 0.005 * (m2.weight - t0.weight), atol=1e-7)


def test_conservative_advantage_rule():
    # q [M=3, B=1, G=4]; per-head group advantages are built by hand
    per_head = torch.tensor(
        [
            [[1.0, -2.0, 0.5, 0.5]],
            [[2.0, -1.0, -0.5, -0.5]],
            [[3.0, -3.0, 0.2, -0.2]],
        ]
    )
    q = per_head + torch.tensor([10.0, -5.0, 3.0]).view(3, 1, 1)  # per-head offsets cancel
    adv = group_advantages(q, "conservative")
    # all heads positive -> min; all negative -> max (smallest magnitude); mixed -> 0
    assert torch.allclose(adv, torch.tensor([[1.0, -1.0, 0.0, 0.0]]))
    van = group_advantages(q, "vanilla")
    assert torch.allclose(van, per_head.mean(0))
    assert torch.allclose(group_advantages(q, "vanilla", clip_min=0.0), van.clamp(min=0))


def test_ppo_clip_loss():
    lp_old = torch.zeros(4)
    lp_new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.005]))
    adv = torch.tensor([1.0, 1.0, -1.0, 2.0])
    loss, frac = ppo_clip_loss(lp_new, lp_old, adv, eps=0.01)
    expect = -(1.0 + 1.01 + -0.99 + 1.005 * 2) / 4
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert frac.item() == pytest.approx(0.5)


def test_best_of_n_picks_argmax_of_min_of_two_heads():
    torch.manual_seed(0)
    M, N, n = 5, 3, 4
    q = torch.randn(M, N * n)
    heads = torch.randint(M, (2, N * n))
    best = best_of_n_index(q, heads, n)
    for i in range(N):
        scores = [min(q[heads[0, i * n + j], i * n + j], q[heads[1, i * n + j], i * n + j]) for j in range(n)]
        assert best[i].item() == int(torch.tensor(scores).argmax())
