"""ogpo: Off-Policy Generative Policy Optimization for flow and diffusion robot policies.

``ogpo.load_policy`` loads a policy checkpoint from a local directory, or, given ``rev``, a versioned one
fetched through DVC at that git revision (hash and config verified; never unpickled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_policy(
    path: str | Path | None = None,
    *,
    rev: str | None = None,
    artifact: str = "models/finetuned",
    repo: str | None = None,
    which: str = "actor",
) -> Any:
    """A GCP from ``path`` (a checkpoint dir) or from ``artifact`` at git revision ``rev`` of ``repo``.

    The ``rev`` form is the one place the library reaches up into ``pipeline`` (DVC and object storage), and
    only when asked: a plain local load needs neither.
    """
    if (path is None) == (rev is None):
        raise ValueError("load_policy: give exactly one of path or rev")
    if path is not None:
        from ogpo.policy_io import load_policy_dir

        return load_policy_dir(path, which=which)
    from pipeline.pull import load_policy as pull_and_load

    return pull_and_load(rev, artifact=artifact, repo=repo, which=which)
