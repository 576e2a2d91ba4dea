"""Generative control policies: the GCP interface, the flow and diffusion GCPs, and ``make_gcp``."""

from __future__ import annotations

from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP, ChainSample, GCPConfig
from ogpo.gcp.diffusion import DiffusionPolicy
from ogpo.gcp.flow import FlowPolicy, GaussianChainGCP

GCP_KINDS: dict[str, type[GCP]] = {"flow": FlowPolicy, "diffusion": DiffusionPolicy}


def make_gcp(cfg: GCPConfig) -> GCP:
    """Build the GCP named by ``cfg.kind`` (ConfigError naming an unknown kind)."""
    cls = GCP_KINDS.get(cfg.kind)
    if cls is None:
        raise ConfigError(f"gcp.kind {cfg.kind!r} is unknown; choose one of {sorted(GCP_KINDS)}")
    return cls(cfg)


__all__ = [
    "GCP",
    "GCP_KINDS",
    "ChainSample",
    "DiffusionPolicy",
    "FlowPolicy",
    "GCPConfig",
    "GaussianChainGCP",
    "make_gcp",
]
