"""Learning-rate schedules (spec 4, 8.1, 9.5 item 3)."""

from __future__ import annotations

import math


def repeating_cosine(step: int, peak: float, floor: float, warmup: int, period: int, rewarmup: bool = True) -> float:
    """Repeating warmup-cosine with warm restarts every ``period`` steps.

    rewarmup=True is the official code (optax ``warmup_cosine_decay_schedule(init=floor, peak, warmup,
    decay_steps=period, end=floor)`` evaluated at ``step % period``): every period starts with a linear warmup
    floor -> peak over ``warmup`` steps, then a cosine peak -> floor over the remaining ``period - warmup``.
    rewarmup=False: one warmup at the start, then cosine peak -> floor over ``period`` steps, restarting at
    the peak with no further warmup.
    """
    if period <= 0:
        return floor + (peak - floor) * step / warmup if 0 < warmup and step < warmup else peak
    if rewarmup:
        s = step % period
        if s < warmup:
            return floor + (peak - floor) * s / warmup
        decay = max(period - warmup, 1)
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * min(s - warmup, decay) / decay))
    if warmup > 0 and step < warmup:
        return floor + (peak - floor) * step / warmup
    phase = ((step - warmup) % period) / period
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * phase))


def constant(
    step: int, peak: float, floor: float = 0.0, warmup: int = 0, period: int = 0, rewarmup: bool = True
) -> float:
    return peak


SCHEDULES = {"cosine": repeating_cosine, "constant": constant}
