"""SAC machinery shared by DSRL (noise actor) and EXPO (edit policy), written once.

- ``BoundedTanhGaussian``: u ~ N(mu, sigma^2), output e = B * tanh(u) in (-B, B)^D, with the exact log-density of
  e: the Gaussian log-prob of u minus both Jacobians (tanh, and D * log B for the scale), as the official
  ``TanhNormalDist`` + affine rescale computes it.
- ``GaussianPolicy``: a trunk MLP over the input and two linear heads (mean, log-std clipped to [-20, 2]).
- ``Temperature``: alpha = exp(log_alpha) with the SAC temperature loss alpha * (H_bar - H_target), and an
  optional cap on log alpha (``log_alpha_max``) so a target entropy that cannot be reached does not drive
  exp(log_alpha) past float32.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ogpo.nets import _fan_avg_uniform_, hidden_layers

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def log1m_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), stable for large |u|: 2 (log 2 - u - softplus(-2u))."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class BoundedTanhGaussian:
    """e = bound * tanh(u), u ~ N(mean, exp(log_std)^2), per dimension; log_prob sums over the last axis."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, bound: float) -> None:
        self.mean, self.log_std, self.bound = mean, log_std, float(bound)

    def rsample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-density: (e [..., D], log_prob [...])."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        u = self.mean + self.log_std.exp() * eps
        return self.bound * torch.tanh(u), self.log_prob_pre_tanh(u)

    def log_prob_pre_tanh(self, u: torch.Tensor) -> torch.Tensor:
        """log density of e = bound * tanh(u) at the e that u maps to."""
        z = (u - self.mean) / self.log_std.exp()
        gauss = -0.5 * z.square() - self.log_std - _LOG_SQRT_2PI
        return (gauss - log1m_tanh_sq(u)).sum(-1) - u.shape[-1] * math.log(self.bound)

    def mode(self) -> torch.Tensor:
        return self.bound * torch.tanh(self.mean)


class GaussianPolicy(nn.Module):
    """trunk(x) -> (mean, log_std) heads of width ``out_dim``; log_std clipped to [-20, 2].

    ``trunk`` ends in an activation (its output feeds both heads); ``head_init_scale`` scales the heads'
    variance-scaling init (DSRL's official actor uses 1e-2, so the initial policy is near N(0, 1)).
    """

    def __init__(self, trunk: nn.Module, trunk_dim: int, out_dim: int, head_init_scale: float | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.mean = nn.Linear(trunk_dim, out_dim)
        self.log_std = nn.Linear(trunk_dim, out_dim)
        if head_init_scale is not None:
            for lin in (self.mean, self.log_std):
                _fan_avg_uniform_(lin.weight, trunk_dim, out_dim)
                with torch.no_grad():
                    lin.weight.mul_(math.sqrt(head_init_scale))
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mean(h), self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)

    def dist(self, x: torch.Tensor, bound: float) -> BoundedTanhGaussian:
        mean, log_std = self(x)
        return BoundedTanhGaussian(mean, log_std, bound)


def mlp_trunk(in_dim: int, hidden: list[int], layer_norm: bool, activation: type[nn.Module]) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation per hidden layer (an activation after the last one too)."""
    return nn.Sequential(*hidden_layers(in_dim, hidden, layer_norm, activation))


class Temperature(nn.Module):
    """alpha = exp(log_alpha); ``loss`` = alpha * (H_bar - H_target) with H_bar = -mean log_prob (detached).

    The gradient lowers alpha when the policy's entropy exceeds the target and raises it otherwise.
    ``log_alpha_max`` (None = uncapped, the official behaviour) clamps log_alpha after each step.
    """

    def __init__(self, init: float = 1.0, log_alpha_max: float | None = None) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init), dtype=torch.float32))
        self.log_alpha_max = log_alpha_max

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def loss(self, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
        entropy = -log_prob.detach().mean()
        return self.alpha * (entropy - target_entropy)

    @torch.no_grad()
    def cap_(self) -> None:
        if self.log_alpha_max is not None:
            self.log_alpha.clamp_(max=self.log_alpha_max)
