"""Critic ensemble over action chunks and the chunked TD target (spec 2.1, 2.2, 3.3).

All M heads live in one batched module (``EnsembleMLP``), so scoring a batch under every head is a handful of
batched matmuls, never a Python loop over heads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ogpo.checks import check_positive_int, check_shape
from ogpo.errors import ConfigError
from ogpo.nets import EnsembleMLP, ema_update_
from ogpo.precision import run_net


@dataclass
class CriticConfig:
    obs_dim: int = 23
    chunk_dim: int = 28  # H * d_a: the critic sees the whole flattened chunk
    M: int = 10
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512, 512])
    layer_norm: bool = True

    def validate(self) -> None:
        check_positive_int("critic.obs_dim", self.obs_dim)
        check_positive_int("critic.chunk_dim", self.chunk_dim)
        check_positive_int("critic.M", self.M, minimum=2)


class CriticEnsemble(nn.Module):
    """Q_m(s, A) for m = 1..M: input [obs, flattened chunk], LayerNorm + GELU hidden layers, scalar output."""

    def __init__(self, cfg: CriticConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.net = EnsembleMLP(cfg.M, cfg.obs_dim + cfg.chunk_dim, cfg.hidden, 1, layer_norm=cfg.layer_norm)

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim], chunk [B, chunk_dim] (or [B, H, d_a]) -> Q per head [M, B]."""
        chunk = chunk.reshape(chunk.shape[0], -1)
        check_shape("critic obs", obs, (None, self.cfg.obs_dim))
        check_shape("critic chunk", chunk, (obs.shape[0], self.cfg.chunk_dim))
        return run_net(self, self.net, torch.cat([obs, chunk], dim=-1)).squeeze(-1)


class CriticPair(nn.Module):
    """Online critics and their EMA targets, kept together so they are saved and moved as one."""

    def __init__(self, cfg: CriticConfig) -> None:
        super().__init__()
        self.online = CriticEnsemble(cfg)
        self.target = copy.deepcopy(self.online).requires_grad_(False)

    def ema_(self, tau: float) -> None:
        ema_update_(self.target, self.online, tau)


def reduce_samples(q: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce Q over the sample axis (last): mean, median or 25%-trimmed mean (spec 3.3)."""
    if how == "mean":
        return q.mean(-1)
    if how == "median":
        return q.median(-1).values
    if how == "trimmed":
        n = q.shape[-1]
        cut = n // 4
        return q.sort(-1).values[..., cut : n - cut].mean(-1)
    raise ConfigError(f"q_vr_reduce must be mean, median or trimmed, got {how!r}")


@torch.no_grad()
def td_target(
    target_critic: CriticEnsemble,
    next_chunks: torch.Tensor,
    next_obs: torch.Tensor,
    R: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    H: int,
    reduce: str = "mean",
) -> torch.Tensor:
    """y = R + gamma^H * m * mean_m reduce_g Q_bar_m(s_{t+H}, A'_g)  (spec 2.2 / 3.3).

    next_chunks: [B, n, H*d_a] chunks sampled from the EMA actor at next_obs (n = 1 without Q-VR).
    """
    B, n = next_chunks.shape[:2]
    obs_rep = next_obs.repeat_interleave(n, dim=0)
    q = target_critic(obs_rep, next_chunks.reshape(B * n, -1)).view(-1, B, n)  # [M, B, n]
    q_next = reduce_samples(q, reduce).mean(0)  # heads: mean aggregation
    return R + (gamma**H) * mask * q_next


def critic_loss(q: torch.Tensor, y: torch.Tensor, valid_last: torch.Tensor) -> torch.Tensor:
    """mean over batch and heads of valid * (Q_m - y)^2; q [M, B], y [B], valid_last [B]."""
    return (valid_last * (q - y).square()).mean()
