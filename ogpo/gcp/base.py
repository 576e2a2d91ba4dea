"""The one interface every generative control policy (GCP) exposes.

OGPO, BC, evaluation and every baseline talk only to this interface, so flow and diffusion policies are
interchangeable (DESIGN.md). Shapes use B for the batch (B*G when G chains per state are drawn), K denoising
steps, H chunk length and d_a the action dimension; a chain is the whole denoising trajectory
``[B, K+1, H*d_a]`` from the initial noise x_0 (index 0) to the final action chunk (index K).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class GCPConfig:
    """Architecture and sampler settings (defaults: spec section 8)."""

    kind: str = "flow"  # "flow" | "diffusion"
    obs_dim: int = 23
    act_dim: int = 7  # d_a
    H: int = 4  # chunk length
    K: int = 10  # denoising steps
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512, 512])
    time_dim: int = 32
    # flow SDE (spec 1.4)
    sigma0: float = 0.05  # constant_noise_std, tapered as sigma0*sqrt(1 - t_i)
    tapered: bool = True
    drift_correction: bool = True  # error_correct_sde_to_ode
    clip_intermediate: bool = True  # clip means to [-1, 1]
    randn_clip: float = 3.0  # samples clipped to mu +- randn_clip*sigma
    # diffusion (spec 10 item 7)
    min_std: float = 0.1  # clipped minimum std of stochastic DDPM steps during fine-tuning
    beta_schedule: str = "cosine"

    def validate(self) -> None:
        """ConfigError naming the first bad field (run by params loading, before any work)."""
        from ogpo.errors import ConfigError
        from ogpo.gcp import GCP_KINDS
        from ogpo.gcp.diffusion import BETA_SCHEDULES
        from ogpo.gcp.flow import validate_gcp_config

        if self.kind not in GCP_KINDS:
            raise ConfigError(f"gcp.kind must be one of {sorted(GCP_KINDS)}, got {self.kind!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"gcp.beta_schedule must be one of {sorted(BETA_SCHEDULES)}, got {self.beta_schedule!r}")
        validate_gcp_config(self)


@dataclass
class ChainSample:
    """Output of a sampler.

    actions: [B, H, d_a] final chunk clipped to [-1, 1] (what the env executes).
    chain:   [B, K+1, H*d_a] the stored denoising trajectory; log-probs are evaluated on exactly these points.
    log_prob: [B] normalized chain log-prob under the sampling weights (None for deterministic sampling).
    """

    actions: torch.Tensor
    chain: torch.Tensor
    log_prob: torch.Tensor | None


class GCP(nn.Module):
    """Abstract GCP. Subclasses: ``FlowPolicy`` (ogpo.gcp.flow) and ``DiffusionPolicy`` (ogpo.gcp.diffusion)."""

    cfg: GCPConfig

    @property
    def chunk_dim(self) -> int:
        return self.cfg.H * self.cfg.act_dim

    def sample(
        self,
        obs: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        *,
        x0: torch.Tensor | None = None,
    ) -> ChainSample:
        """Sample one chain per row of obs [B, obs_dim]. Deterministic = ODE / DDIM (evaluation).

        ``x0`` [B, H*d_a] gives the initial noise (default: drawn from N(0, I) with ``generator``)."""
        raise NotImplementedError

    def log_prob(self, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """Normalized log-prob [B] of stored chains [B, K+1, H*d_a] under the current weights (differentiable)."""
        raise NotImplementedError

    def bc_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Behaviour-cloning loss on chunks actions [B, H, d_a]; mask [B, H] zeroes padded chunk steps."""
        raise NotImplementedError
