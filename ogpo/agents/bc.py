"""Behaviour-cloning pretraining with an EMA copy and early stopping (spec 4).

The paper's "poorly initialized" start: BC is evaluated on a schedule and stopped as soon as success reaches
``target_success`` (0.45 in the official code, so the start is at most about 50%).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ogpo.agents.progress import eta_text, evals_left
from ogpo.agents.schedules import SCHEDULES
from ogpo.checks import check_number, check_positive_int
from ogpo.data.replay import ReplayBuffer
from ogpo.errors import ConfigError, TrainingError
from ogpo.gcp.base import GCP
from ogpo.nets import ema_update_

log = logging.getLogger(__name__)


@dataclass
class BCConfig:
    max_steps: int = 500_000
    batch_size: int = 256
    lr: float = 3e-4
    lr_schedule: str = "constant"  # or "cosine" (repeating, spec 4)
    lr_floor: float = 2e-5
    lr_warmup: int = 2000
    lr_period: int = 50_000
    tau: float = 0.005  # EMA of the BC iterates (becomes the target actor)
    eval_every: int = 5000
    target_success: float | None = 0.45  # stop as soon as eval success >= this; None = run max_steps
    log_every: int = 1000

    def validate(self) -> None:
        check_positive_int("max_steps", self.max_steps)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("log_every", self.log_every)
        check_positive_int("lr_warmup", self.lr_warmup, minimum=0)
        check_positive_int("lr_period", self.lr_period, minimum=0)
        check_number("lr", self.lr, gt=0)
        check_number("lr_floor", self.lr_floor, ge=0)
        check_number("tau", self.tau, gt=0, le=1)
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {sorted(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.target_success is not None and not 0 < self.target_success <= 1:
            raise ConfigError(f"target_success must be in (0, 1], got {self.target_success!r}")


@dataclass
class BCResult:
    steps: int
    stopped_early: bool
    last_success: float | None
    curve: list[dict]  # rows: step, success, loss


def train_bc(
    actor: GCP,
    target_actor: GCP,
    demos: ReplayBuffer,
    cfg: BCConfig,
    evaluate: Callable[[int], float] | None = None,
    on_eval: Callable[[dict], None] | None = None,
    generator: torch.Generator | None = None,
) -> BCResult:
    """Train ``actor`` by BC on length-H chunks from ``demos``; ``target_actor`` tracks it by EMA.

    ``evaluate(step)`` returns a success rate (the caller decides which policy and sampler it evaluates).
    """
    cfg.validate()
    H = actor.cfg.H
    opt = torch.optim.AdamW(actor.parameters(), lr=cfg.lr, eps=1e-8, weight_decay=0.0)
    sched = SCHEDULES[cfg.lr_schedule]
    curve: list[dict] = []
    loss_sum = torch.zeros(())
    n_sum = 0
    t0 = time.perf_counter()
    eval_s: list[float] = []  # wall time of each gate evaluation, for the ETA
    last_success = None
    step = 0
    for step in range(1, cfg.max_steps + 1):
        for g in opt.param_groups:
            g["lr"] = sched(step - 1, cfg.lr, cfg.lr_floor, cfg.lr_warmup, cfg.lr_period)
        b = demos.sample(cfg.batch_size, H, gamma=1.0, generator=generator)
        loss = actor.bc_loss(b.obs, b.actions, b.valid, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not bool(torch.isfinite(loss)):
            raise TrainingError(f"BC loss is not finite at step {step}; weights left at step {step - 1}")
        opt.step()
        ema_update_(target_actor, actor, cfg.tau)
        loss_sum = loss_sum + loss.detach()
        n_sum += 1
        if step % cfg.log_every == 0:
            rate = step / max(time.perf_counter() - t0 - sum(eval_s), 1e-9)
            n_evals = evals_left(step, cfg.max_steps, cfg.eval_every) if evaluate is not None else 0
            log.info(
                "BC step %d/%d  loss %.4f  %.0f steps/s  %s",
                step, cfg.max_steps, float(loss.detach()), rate,
                eta_text((cfg.max_steps - step) / rate, n_evals, eval_s, cfg.target_success),
            )  # fmt: skip
        if evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            t_eval = time.perf_counter()
            last_success = float(evaluate(step))
            eval_s.append(time.perf_counter() - t_eval)
            row = {"step": step, "success": last_success, "loss": float(loss_sum / max(n_sum, 1))}
            loss_sum, n_sum = torch.zeros(()), 0
            curve.append(row)
            if on_eval is not None:
                on_eval(row)
            log.info("BC step %d: success %.3f", step, last_success)
            if cfg.target_success is not None and last_success >= cfg.target_success:
                return BCResult(step, True, last_success, curve)
    return BCResult(step, False, last_success, curve)
