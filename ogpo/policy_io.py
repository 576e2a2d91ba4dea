"""Saving and loading policies (GCP) and critics as self-describing checkpoints (DESIGN.md: checkpoints).

A policy checkpoint stores the online actor and its EMA copy plus a JSON config with the GCP config and the
metadata a user needs to run it (task, obs keys, H, kind, K, git rev, params hash). Loading rebuilds the
module from the config and never unpickles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ogpo.checkpoint import load_checkpoint, load_module_tensors, module_tensors, save_checkpoint
from ogpo.critic import CriticConfig, CriticPair
from ogpo.errors import CheckpointError
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCP, GCPConfig

POLICY_FORMAT = "ogpo-policy/1"
CRITIC_FORMAT = "ogpo-critic/1"


def save_policy(
    path: str | Path,
    actor: GCP,
    target_actor: GCP,
    meta: dict[str, Any],
    deploy: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Online and EMA actor plus, under ``deploy.<name>.``, the extra modules a deployed policy needs (DSRL's
    noise actor); ``meta`` names the algorithm (``algo``, ``algo_config``) when a fine-tuning stage wrote it."""
    tensors = module_tensors("actor", actor) | module_tensors("target_actor", target_actor)
    for name, mod in (deploy or {}).items():
        tensors |= module_tensors(f"deploy.{name}", mod)
    config = {"format": POLICY_FORMAT, "gcp": dataclasses.asdict(actor.cfg), **meta}
    save_checkpoint(path, tensors, config)


def _gcp_from_config(path: Path, config: dict[str, Any]) -> GCPConfig:
    if config.get("format") != POLICY_FORMAT:
        raise CheckpointError(f"{path}: not a policy checkpoint (format {config.get('format')!r})")
    try:
        return GCPConfig(**config["gcp"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: bad gcp config in config.json ({e})") from e


def load_policy_pair(path: str | Path, device: str | torch.device = "cpu") -> tuple[GCP, GCP, dict[str, Any]]:
    """(online actor, EMA actor, config) from a policy checkpoint directory."""
    path = Path(path)
    tensors, config = load_checkpoint(path)
    cfg = _gcp_from_config(path, config)
    actor, target = make_gcp(cfg), make_gcp(cfg)
    load_module_tensors("actor", actor, tensors)
    load_module_tensors("target_actor", target, tensors)
    return actor.to(device), target.to(device).requires_grad_(False), config


def load_policy_dir(path: str | Path, which: str = "actor", device: str | torch.device = "cpu") -> GCP:
    """Load one policy from a checkpoint dir: ``which`` = "actor" (evaluated policy) or "target_actor" (EMA)."""
    actor, target, _ = load_policy_pair(path, device)
    if which not in ("actor", "target_actor"):
        raise CheckpointError(f"which must be actor or target_actor, got {which!r}")
    return (actor if which == "actor" else target).eval()


def load_deployed_policy(
    path: str | Path, mode: str, device: str | torch.device = "cpu", generator: torch.Generator | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], GCP, dict[str, Any]]:
    """(obs -> action chunks, the GCP, config) for evaluating a policy checkpoint.

    mode "ode": the online actor, deterministic; "sde": the EMA actor, stochastic. A checkpoint written by an
    algorithm whose deployed policy is more than its GCP (its registry entry has a ``deploy`` hook, e.g. DSRL's
    noise actor feeding the frozen flow) is rebuilt through that hook instead.
    """
    path = Path(path)
    tensors, config = load_checkpoint(path)
    actor, target, _ = load_policy_pair(path, device)
    gcp = (actor if mode == "ode" else target).eval()
    algo = config.get("algo")
    if algo is not None:
        from ogpo.algos import get_algo

        spec = get_algo(algo)
        if spec.deploy is not None:
            return spec.deploy(gcp, tensors, config, mode, generator), gcp, config

    def fn(obs: torch.Tensor) -> torch.Tensor:
        return gcp.sample(obs, deterministic=mode == "ode", generator=generator).actions

    return fn, gcp, config


def save_critic(path: str | Path, critic: CriticPair, meta: dict[str, Any]) -> None:
    tensors = module_tensors("critic", critic.online) | module_tensors("target_critic", critic.target)
    config = {"format": CRITIC_FORMAT, "critic": dataclasses.asdict(critic.online.cfg), **meta}
    save_checkpoint(path, tensors, config)


def load_critic(path: str | Path, device: str | torch.device = "cpu") -> tuple[CriticPair, dict[str, Any]]:
    path = Path(path)
    tensors, config = load_checkpoint(path)
    if config.get("format") != CRITIC_FORMAT:
        raise CheckpointError(f"{path}: not a critic checkpoint (format {config.get('format')!r})")
    try:
        pair = CriticPair(CriticConfig(**config["critic"]))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: bad critic config ({e})") from e
    load_module_tensors("critic", pair.online, tensors)
    load_module_tensors("target_critic", pair.target, tensors)
    return pair.to(device), config
