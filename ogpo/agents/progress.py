"""What the off- and on-policy trainers report the same way: metric averages between evaluations, the
learning-curve row of an evaluation, and progress lines with an honest rate and ETA.

The rate in a progress line is measured over the window since the previous line, not since the start: the
first env steps of a run are update-free (before ``start_training``) and several times faster than the rest, so
an average from the start would promise an ETA the run cannot keep. Evaluations are timed apart from the
steps: the rate leaves them out and the ETA adds the ones still due at the mean time of those already run (on
Square one 32-episode evaluation takes over a minute, a window's worth of steps).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from ogpo.rollout import EvalResult


class MetricWindow:
    """Per-key sums and counts of update metrics since the last evaluation (tensors stay on their device
    until an evaluation reads them: no host sync per update)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, Any], names: tuple[str, ...]) -> None:
        for k in names:
            if k in metrics:
                self.sums[k] = self.sums.get(k, 0.0) + metrics[k]
                self.counts[k] = self.counts.get(k, 0) + 1

    def means(self, names: tuple[str, ...]) -> dict[str, float]:
        """Mean per name (NaN for a name no update reported), then start a new window."""
        out = {k: float(self.sums[k]) / self.counts[k] if k in self.sums else float("nan") for k in names}
        self.sums, self.counts = {}, {}
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.sums = dict(state.get("sums", {}))
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}


def eval_row(
    ev: EvalResult,
    env_steps: int,
    metrics: dict[str, float],
    recent: list[dict],
    updates: int,
    wall_time: float,
    log: logging.Logger,
) -> dict[str, Any]:
    """One learning-curve row (``ogpo.agents.online.curve_columns`` order), logged on one line."""
    row: dict[str, Any] = {
        "env_steps": env_steps,
        "success": ev.success_rate,
        "return": float(ev.returns.mean()),
        "episode_length": float(ev.lengths.mean()),
        **metrics,
        "rollout_success": float(np.mean([r["success"] for r in recent])) if recent else float("nan"),
        "updates": updates,
        "wall_time": round(wall_time, 2),
    }
    log.info(
        "eval @ %d env steps: success %.3f  return %.2f  length %.1f",
        env_steps, row["success"], row["return"], row["episode_length"],
    )  # fmt: skip
    return row


def evals_left(step: int, max_steps: int, every: int) -> int:
    """Evaluations still to run at steps >= ``step``: one at each multiple of ``every`` and one at ``max_steps``
    (a progress line is logged before the evaluation of its own step)."""
    return max_steps // every - (step - 1) // every + (1 if max_steps % every else 0)


def eta_text(train_s: float, n_evals: int, eval_s: list[float], gate: float | None) -> str:
    """The time left: ``train_s`` of training at the measured rate plus the ``n_evals`` evaluations still due,
    each at the mean of the times ``eval_s`` those already run took (an evaluation can cost more than the
    training between two of them, so a rate that leaves them out, or averages them in before the first one
    ran, promises an ETA the run cannot keep). With a success ``gate`` (BC) it is an upper bound, said as one."""
    if n_evals and eval_s:
        mean = sum(eval_s) / len(eval_s)
        text = f"{train_s + n_evals * mean:.0f}s left ({n_evals} evaluations of ~{mean:.0f}s included)"
    elif n_evals:
        text = f"{train_s:.0f}s of training left plus {n_evals} evaluations (not yet timed)"
    else:
        text = f"{train_s:.0f}s left"
    return f"at most {text}, less if an evaluation reaches the gate {gate:g}" if gate else text


class ProgressLog:
    """``tick`` logs a progress line every ``every`` env steps with the recent rate and the ETA from it;
    ``evaluated`` records the time of each evaluation (with ``eval_every`` the ETA counts the ones still due).
    A window that began before ``start_training`` ran (almost) no updates, so its rate says nothing about the
    rest of the run: its line gives the rate and says the ETA is not yet measured."""

    def __init__(
        self,
        log: logging.Logger,
        total: int,
        every: int,
        env_steps: int,
        eval_every: int | None = None,
        start_training: int = 0,
    ) -> None:
        self.log, self.total, self.every, self.eval_every = log, total, every, eval_every
        self.start_training = start_training
        self.last_steps, self.last_time = env_steps, time.perf_counter()
        self.eval_s: list[float] = []
        self._eval_in_window = 0.0

    def evaluated(self, seconds: float) -> None:
        self.eval_s.append(seconds)
        self._eval_in_window += seconds

    def tick(self, env_steps: int, updates: int, prefix: str = "") -> None:
        if env_steps - self.last_steps < self.every:
            return
        now = time.perf_counter()
        rate = (env_steps - self.last_steps) / max(now - self.last_time - self._eval_in_window, 1e-9)
        n_evals = evals_left(env_steps, self.total, self.eval_every) if self.eval_every else 0
        if self.last_steps < self.start_training:
            eta = f"not yet measured (collecting without updates until {self.start_training} env steps)"
        else:
            eta = eta_text((self.total - env_steps) / max(rate, 1e-9), n_evals, self.eval_s, None)
        self.last_steps, self.last_time, self._eval_in_window = env_steps, now, 0.0
        self.log.info(
            "%senv steps %d/%d  updates %d  %.0f steps/s  ETA %s",
            prefix, env_steps, self.total, updates, rate, eta,
        )  # fmt: skip
