"""Network building blocks shared by the GCPs and the critics.

The ensemble layer keeps all M critic heads in one parameter tensor so a forward pass over M heads is a
single batched matmul (the PyTorch counterpart of the official code's vmapped ensemble).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _fan_avg_uniform_(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Variance-scaling (scale 1, fan_avg, uniform) init, as the official Flax code uses."""
    limit = math.sqrt(3.0 / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        w.uniform_(-limit, limit)


def hidden_layers(
    in_dim: int, hidden: list[int], layer_norm: bool = False, activation: type[nn.Module] = nn.GELU
) -> list[nn.Module]:
    """Linear (fan-avg uniform init, zero bias) -> [LayerNorm] -> activation, per hidden width."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        lin = nn.Linear(d, h)
        _fan_avg_uniform_(lin.weight, d, h)
        nn.init.zeros_(lin.bias)
        layers += [lin, *([nn.LayerNorm(h)] if layer_norm else []), activation()]
        d = h
    return layers


class MLP(nn.Module):
    """Plain MLP: Linear -> [LayerNorm] -> GELU per hidden layer, linear output."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, layer_norm: bool = False) -> None:
        super().__init__()
        layers = hidden_layers(in_dim, hidden, layer_norm)
        d = hidden[-1] if hidden else in_dim
        out = nn.Linear(d, out_dim)
        _fan_avg_uniform_(out.weight, d, out_dim)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SinusoidalTimeEmbedding(nn.Module):
    """Spec 1.2: 16 frequencies exp(-i ln(1e4)/15) on raw tau in [0, 1]; sin||cos -> Dense(64) -> GELU -> Dense(32)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (math.log(1e4) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = MLP(dim, [2 * dim], dim)
        self.dim = dim

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        """tau: [B] or [B, 1] -> [B, dim]."""
        arg = tau.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1))


class EnsembleLinear(nn.Module):
    """M independent linear layers applied as one batched matmul: x [M, B, in] -> [M, B, out]."""

    def __init__(self, M: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(M, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(M, 1, out_dim))
        for m in range(M):
            _fan_avg_uniform_(self.weight[m], in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """M MLPs with independent weights evaluated together; LayerNorm is per head (no learned mixing)."""

    def __init__(self, M: int, in_dim: int, hidden: list[int], out_dim: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.M = M
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        d = in_dim
        for h in hidden:
            self.linears.append(EnsembleLinear(M, d, h))
            self.norms.append(EnsembleLayerNorm(M, h) if layer_norm else nn.Identity())
            d = h
        self.out = EnsembleLinear(M, d, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in] (shared by all heads) or [M, B, in] -> [M, B, out]."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.M, -1, -1)
        for lin, norm in zip(self.linears, self.norms, strict=True):
            x = nn.functional.gelu(norm(lin(x)))
        return self.out(x)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with a separate scale and shift per head: x [M, B, d]."""

    def __init__(self, M: int, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(M, 1, d))
        self.bias = nn.Parameter(torch.zeros(M, 1, d))
        self.eps = eps
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, (self.d,), eps=self.eps) * self.weight + self.bias


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, in place, for every parameter (buffers copied)."""
    t_params = list(target.parameters())
    s_params = list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)
    for tb, sb in zip(target.buffers(), source.buffers(), strict=True):
        tb.copy_(sb)
