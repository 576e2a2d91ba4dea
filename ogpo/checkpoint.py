"""Self-describing checkpoints: weights in safetensors plus a JSON config. Loading never unpickles.

A checkpoint is a directory holding ``weights.safetensors`` and ``config.json``. The config carries the
sha256 of the weights file so a truncated or swapped file is caught on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ogpo.errors import CheckpointError

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write a checkpoint directory atomically (temp dir, then rename), replacing any old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        flat = _unshared({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        save_file(flat, str(tmp / WEIGHTS))
        cfg = dict(config)
        cfg["weights_sha256"] = file_sha256(tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share memory with an earlier one (safetensors refuses shared storage; an agent
    whose EMA actor is its online actor, as QC's, stores the same weights under two names)."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        if ptr != -1:
            seen.add(ptr)
    return out


def recover_checkpoint(path: str | Path) -> bool:
    """Finish an interrupted replacement: if only the previous copy (``.name.old``) exists, put it back.

    Replacing a checkpoint directory takes two renames; a process killed between them leaves the old copy
    under its temporary name. Returns whether a checkpoint exists at ``path`` afterwards."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    return path.is_dir()


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint directory, verifying the weights hash; raises CheckpointError naming the problem."""
    path = Path(path)
    recover_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG}: not valid JSON ({e})") from e
    want = config.get("weights_sha256")
    got = file_sha256(path / WEIGHTS)
    if want != got:
        raise CheckpointError(f"{path / WEIGHTS}: sha256 {got[:12]}... does not match config ({str(want)[:12]}...)")
    try:
        tensors = load_file(str(path / WEIGHTS))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path / WEIGHTS}: cannot read safetensors ({e})") from e
    return tensors, config


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of ``module`` with keys prefixed ``prefix.`` (to store several modules in one file)."""
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module_tensors(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load the ``prefix.``-keyed entries of ``tensors`` into ``module`` (strict)."""
    sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights for '{prefix}' do not match the model: {e}") from e
