"""Diffusion GCP (spec 10 item 7, DPPO style) behind the same interface as the flow GCP.

Epsilon-prediction MLP on [obs, x_t, emb(t/K)], K DDPM steps with a cosine beta schedule. Evaluation uses the
deterministic DDIM sampler (eta = 0); fine-tuning uses stochastic DDPM posterior steps whose std is floored at
``min_std`` (otherwise the last step, with posterior variance 0, would have a singular likelihood).

Chain convention is the flow one: chain[:, 0] is the initial noise (DDPM time t = K) and chain[:, i] the state
after i denoising steps (t = K - i), so chain[:, K] is the final, pre-clip chunk. ``clip_intermediate`` clips
the predicted clean chunk x0_hat to [-1, 1] before it enters the posterior mean (DPPO's
``denoised_clip_value``); at the last step the posterior mean is x0_hat itself, so that mean lies in [-1, 1].
Clipping the posterior mean of an intermediate step instead would cut the legitimately wide x_t of
noisy steps.
"""

from __future__ import annotations

import math

import torch

from ogpo.errors import ConfigError
from ogpo.gcp.base import GCPConfig
from ogpo.gcp.flow import GaussianChainGCP

MAX_BETA = 0.999


def cosine_alpha_bar(K: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar_t for t = 0..K (float64, alpha_bar_0 = 1) of the cosine schedule (Nichol & Dhariwal).

    Betas are clipped at 0.999 (the last one would be 1 otherwise) and alpha_bar is recomputed from the
    clipped betas so that every downstream coefficient is consistent with the betas actually used.
    """
    t = torch.arange(K + 1, dtype=torch.float64) / K
    f = torch.cos((t + s) / (1.0 + s) * (math.pi / 2.0)).square()
    f = f / f[0]
    betas = (1.0 - f[1:] / f[:-1]).clamp(0.0, MAX_BETA)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])


BETA_SCHEDULES = {"cosine": cosine_alpha_bar}


class DiffusionPolicy(GaussianChainGCP):
    """DDPM/DDIM GCP with epsilon prediction; per-step Gaussian log-probs for the PPO ratio."""

    kind = "diffusion"

    def __init__(self, cfg: GCPConfig) -> None:
        super().__init__(cfg)
        if cfg.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"gcp.beta_schedule {cfg.beta_schedule!r} is unknown; choose one of {sorted(BETA_SCHEDULES)}"
            )
        K = cfg.K
        ab_all = BETA_SCHEDULES[cfg.beta_schedule](K)  # [K+1], index = DDPM time t
        t = torch.arange(K, 0, -1)  # DDPM time of code step i = 0..K-1 is t = K - i
        ab, ab_prev = ab_all[t], ab_all[t - 1]
        alpha = ab / ab_prev
        beta = 1.0 - alpha
        post_var = beta * (1.0 - ab_prev) / (1.0 - ab)
        std = post_var.sqrt().clamp_min(cfg.min_std)

        def col(v: torch.Tensor) -> torch.Tensor:
            return v.float().unsqueeze(-1)

        self.register_buffer("tau_grid", (t.double() / K).float(), persistent=False)
        # x0_hat = sqrt(1/ab) x_t - sqrt(1/ab - 1) eps
        self.register_buffer("sqrt_recip_ab", col((1.0 / ab).sqrt()), persistent=False)
        self.register_buffer("sqrt_recipm1_ab", col((1.0 / ab - 1.0).sqrt()), persistent=False)
        # DDPM posterior mean  = c0 * x0_hat + ct * x_t
        self.register_buffer("post_c0", col(beta * ab_prev.sqrt() / (1.0 - ab)), persistent=False)
        self.register_buffer("post_ct", col((1.0 - ab_prev) * alpha.sqrt() / (1.0 - ab)), persistent=False)
        self.register_buffer("std", col(std), persistent=False)
        self.register_buffer("log_std", col(std.log()), persistent=False)
        # DDIM (eta = 0)
        self.register_buffer("sqrt_ab", col(ab.sqrt()), persistent=False)
        self.register_buffer("sqrt_1m_ab", col((1.0 - ab).sqrt()), persistent=False)
        self.register_buffer("sqrt_ab_prev", col(ab_prev.sqrt()), persistent=False)
        self.register_buffer("sqrt_1m_ab_prev", col((1.0 - ab_prev).sqrt()), persistent=False)
        # BC loss: indexed by DDPM time t = 0..K
        self.register_buffer("bc_sqrt_ab", ab_all.sqrt().float(), persistent=False)
        self.register_buffer("bc_sqrt_1m_ab", (1.0 - ab_all).sqrt().float(), persistent=False)

    def epsilon(self, obs: torch.Tensor, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """eps_theta(s, x_t, t/K): obs [N, obs_dim], x [N, H*d_a], tau = t/K [N] -> [N, H*d_a]."""
        return self(obs, x, tau)

    def _x0_hat(self, eps: torch.Tensor, x: torch.Tensor, sel: int | slice) -> torch.Tensor:
        x0 = self.sqrt_recip_ab[sel] * x - self.sqrt_recipm1_ab[sel] * eps
        return x0.clamp(-1.0, 1.0) if self.cfg.clip_intermediate else x0

    def _mean(self, out: torch.Tensor, x: torch.Tensor, sel: int | slice) -> torch.Tensor:
        return self.post_c0[sel] * self._x0_hat(out, x, sel) + self.post_ct[sel] * x

    def _deterministic_step(self, out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        x0 = self._x0_hat(out, x, i)
        eps = (x - self.sqrt_ab[i] * x0) / self.sqrt_1m_ab[i]  # re-derived so a clipped x0 stays consistent
        return self.sqrt_ab_prev[i] * x0 + self.sqrt_1m_ab_prev[i] * eps

    def bc_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """DDPM epsilon loss: t ~ U{1..K}, x_t = sqrt(ab_t) a + sqrt(1 - ab_t) eps, ||eps_theta - eps||^2."""
        obs, a, mask = self._prep_bc(obs, actions, mask, validate)
        B, D = a.shape
        K = self.cfg.K
        t = torch.randint(1, K + 1, (B,), generator=generator, device=a.device)
        eps = torch.randn(B, D, generator=generator, device=a.device, dtype=a.dtype)
        x_t = self.bc_sqrt_ab[t].unsqueeze(-1) * a + self.bc_sqrt_1m_ab[t].unsqueeze(-1) * eps
        pred = self(obs, x_t, t.to(a.dtype) / K)
        return self._masked_mean((pred - eps).square(), mask)
