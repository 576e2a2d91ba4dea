"""Input validation helpers: fail loudly with the name of the offending value, never broadcast silently."""

from __future__ import annotations

import math

import torch

from ogpo.errors import ConfigError, ShapeError


def check_shape(name: str, x: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise ShapeError unless ``x`` has ``len(shape)`` dims and matches every non-None entry."""
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ShapeError(f"{name}: expected shape {want}, got {list(x.shape)}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ShapeError if ``x`` holds NaN or inf (one host sync; call on inputs, not in hot loops)."""
    if not bool(torch.isfinite(x).all()):
        raise ShapeError(f"{name}: contains NaN or inf")


def check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    """Raise ConfigError unless ``value`` is an int >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(
    name: str,
    value: float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    """Raise ConfigError unless ``value`` is a finite number (not a bool) within the given bounds.

    Messages read like the params loader's: ``lr must be > 0, got 0.0``; ``tau must be in (0, 1], got 2.0``
    when both sides are bounded.
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    ok = (gt is None or value > gt) and (ge is None or value >= ge) and (lt is None or value < lt)
    if ok and (le is None or value <= le):
        return
    lower = f"({gt}" if gt is not None else (f"[{ge}" if ge is not None else "")
    upper = f"{lt})" if lt is not None else (f"{le}]" if le is not None else "")
    if lower and upper:
        want = f"in {lower}, {upper}"
    else:
        want = " and ".join(f"{op} {b}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None)
    raise ConfigError(f"{name} must be {want}, got {value!r}")
