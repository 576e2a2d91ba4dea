"""ogpo: Off-Policy Generative Policy Optimization for flow and diffusion robot policies.

``ogpo.load_policy(path)`` loads a policy checkpoint from a local directory (config and safetensors verified;
never unpickled). A versioned checkpoint at a git revision is fetched by the pipeline, which owns DVC and the
object store: ``pipeline.pull.load_policy(rev="v1")`` (or ``ogpo pull``). The library imports nothing from
``stages`` or ``pipeline``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_policy(path: str | Path, *, which: str = "actor") -> Any:
    """The GCP in checkpoint directory ``path``: ``which`` = "actor" or "target_actor" (the EMA copy)."""
    from ogpo.policy_io import load_policy_dir

    return load_policy_dir(path, which=which)
