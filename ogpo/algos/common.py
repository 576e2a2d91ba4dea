"""Pieces several algorithms share, written once: a guarded optimizer step and replay batch drawing.

(The critic ensemble and chunked TD target live in ``ogpo.critic``, the replay in ``ogpo.data.replay``, the
LR schedules in ``ogpo.agents.schedules`` and the SAC machinery in ``ogpo.algos.sac``.)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import TrainingError


def check_finite_step(name: str, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Stop before the optimizer step when a loss or gradient is not finite (weights stay the last good ones).
    One host sync per step: cheap next to the network evaluations of an update."""
    if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
        value = float(loss.detach())
        raise TrainingError(f"{name} is not finite (loss={value:.4g}); stopped before the optimizer step")


def optimizer_step(
    name: str,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: Iterable[torch.Tensor],
    grad_clip: float,
) -> torch.Tensor:
    """zero_grad, backward, global-norm clip, finite check, step; returns the pre-clip gradient norm."""
    params = list(params)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    check_finite_step(name, loss, gn)
    opt.step()
    return gn


def sample_with_success(
    replay: ReplayBuffer, batch_size: int, H: int, gamma: float, generator: torch.Generator
) -> tuple[SequenceBatch, SequenceBatch | None]:
    """A replay batch and, once the success view is active (spec 2.6), a success-buffer batch (else None)."""
    batch = replay.sample(batch_size, H, gamma, generator=generator)
    succ = None
    if replay.success_active(batch_size, H):
        succ = replay.sample(batch_size, H, gamma, generator=generator, success_only=True)
    return batch, succ
