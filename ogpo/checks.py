"""Input validation helpers: fail loudly with the name of the offending value, never broadcast silently."""

from __future__ import annotations

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
