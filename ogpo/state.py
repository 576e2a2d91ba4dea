"""Flatten training state (modules, optimizers, RNG streams) into tensors + JSON for safetensors
checkpoints, so resumable state is saved and restored without pickle."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ogpo.errors import CheckpointError


def optimizer_to_flat(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> ({prefix.state.<param>.<key>: tensor}, JSON-able param_groups)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            # a copy: the live moments keep changing, and a snapshot must not alias them
            tensors[f"{prefix}.state.{pid}.{k}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_flat(
    prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    head = prefix + ".state."
    for key, v in tensors.items():
        if key.startswith(head):
            pid, name = key[len(head) :].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"optimizer state '{prefix}' does not match: {e}") from e


def generator_state(g: torch.Generator) -> torch.Tensor:
    return g.get_state()


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def numpy_rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
