"""Learning-rate schedules (spec 4, 8.1, 9.5 item 3)."""

from __future__ import annotations

import math


def repeating_cosine(step: int, peak: float, floor: float, warmup: int, period: int) -> float:
    """Linear warmup floor->peak over ``warmup`` steps, then cosine peak->floor over ``period`` steps,
    restarting every ``period`` steps (warm restarts, as the official code's schedule repeats)."""
    if warmup > 0 and step < warmup:
        return floor + (peak - floor) * step / warmup
    if period <= 0:
        return peak
    phase = ((step - warmup) % period) / period
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * phase))


def constant(step: int, peak: float, floor: float = 0.0, warmup: int = 0, period: int = 0) -> float:
    return peak


SCHEDULES = {"cosine": repeating_cosine, "constant": constant}
