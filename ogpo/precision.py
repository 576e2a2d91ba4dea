"""How the networks compute: float32 or bfloat16 matmuls (autocast), eager or ``torch.compile``d.

Why a separate seam: fine-tuning is update-bound, and on CPUs with AVX512-BF16/AMX or on GPUs a bfloat16
matmul is several times faster than a float32 one. Only the network *evaluations* change precision: every
network output is cast back to float32 before it enters a Gaussian log-density, a PPO ratio, an advantage, a
TD target or a loss (``run_net``), so the quantities PPO and TD learning are sensitive to stay float32.

Both choices are runtime settings of a module (``Acceleration``), never part of its saved config or weights:
a checkpoint trained with bfloat16 loads and evaluates like any other. A host that cannot do what was asked
gets one warning line and float32 / eager, never an error.
"""

from __future__ import annotations

import logging
import shutil
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# compiled callables per network module, held weakly and outside the module: a deepcopy (the EMA target is a
# copy of the online actor) gets a fresh entry instead of a wrapper around the original's weights
_COMPILED: weakref.WeakKeyDictionary[nn.Module, Callable[[torch.Tensor], torch.Tensor]] = weakref.WeakKeyDictionary()
_PROVEN: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # compiled nets whose first call succeeded


@dataclass(frozen=True)
class Acceleration:
    """What ``run_net`` does for one module: autocast dtype (None = float32) and whether to compile."""

    dtype: torch.dtype | None = None
    compile: bool = False


def bf16_supported(device: torch.device) -> tuple[bool, str]:
    """(can this device run bfloat16 matmuls at speed, why not)."""
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "" if ok else "this GPU has no bfloat16 support"
    if device.type == "cpu":
        ok = bool(torch.backends.mkldnn.is_available()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return ok, "" if ok else "this CPU has no AVX512-BF16/AMX bfloat16 support"
    return False, f"bfloat16 autocast is not set up for device type {device.type!r}"


def compile_supported() -> tuple[bool, str]:
    """(can torch.compile run here, why not): inductor needs a C++ compiler on CPU (and Triton on GPU)."""
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "no C++ compiler (g++) on PATH for torch.compile's CPU backend"
    return True, ""


def resolve(precision: str, compile: bool, device: torch.device, who: str) -> Acceleration:
    """The Acceleration to use for ``who``'s networks on ``device``; falls back with one warning line each."""
    dtype = None
    if precision == "bf16":
        ok, why = bf16_supported(device)
        if ok:
            dtype = torch.bfloat16
        else:
            log.warning("%s: precision bf16 requested but %s; using fp32", who, why)
    elif precision != "fp32":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if compile:
        ok, why = compile_supported()
        if not ok:
            log.warning("%s: compile requested but %s; running eager", who, why)
            compile = False
    return Acceleration(dtype=dtype, compile=compile)


def accelerate_(module: nn.Module, acc: Acceleration) -> None:
    """Give ``module`` (a GCP or critic ensemble: anything whose forward goes through ``run_net``) its
    Acceleration. Kept out of ``nn.Module``'s registries, so state_dict keys and deepcopies are unaffected."""
    module.__dict__["_acceleration"] = acc


def acceleration_of(module: nn.Module) -> Acceleration:
    return module.__dict__.get("_acceleration") or Acceleration()


def run_net(owner: nn.Module, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` as ``owner``'s Acceleration says, always returning float32.

    Compilation is lazy (the first call compiles); if it fails (a toolchain problem surfaces only then), the
    owner falls back to eager with one warning line and the call is retried eagerly.
    """
    acc = acceleration_of(owner)
    fn: Callable[[torch.Tensor], torch.Tensor] = net
    if acc.compile:
        compiled = _COMPILED.get(net)  # not `get(net) or ...`: a compiled module refuses len() and so bool()
        if compiled is None:
            compiled = _COMPILED[net] = torch.compile(net)
        fn = compiled
    try:
        if acc.dtype is None:
            out = fn(x)
        else:
            with torch.autocast(x.device.type, dtype=acc.dtype):
                out = fn(x).float()
    except Exception as e:
        if fn is net or net in _PROVEN:
            raise  # an eager error, or a compiled net that already worked: a real error, not the toolchain
        first = str(e).splitlines()[0][:200] if str(e) else ""
        log.warning("torch.compile failed (%s: %s); running eager", type(e).__name__, first)
        accelerate_(owner, Acceleration(dtype=acc.dtype, compile=False))
        _COMPILED.pop(net, None)
        return run_net(owner, net, x)
    if fn is not net:
        _PROVEN.add(net)
    return out
