"""The toy BC-then-fine-tuning recipe (``ogpo.study.toy``), re-exported for the learning tests, and runnable by
hand for the curves:

python -m tests.ogpo.toy_recipe flow|diffusion [algo=qc] [total_env_steps=N] [key=value ...]   (keys: agent overrides)
"""

from __future__ import annotations

import sys

import torch
import yaml

from ogpo.study.toy import OGPO_TOY, H, run

__all__ = ["H", "OGPO_TOY", "run"]

if __name__ == "__main__":
    torch.set_num_threads(1)
    kw = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    name = kw.pop("algo", "ogpo+ca")
    steps = kw.pop("total_env_steps", 16_000)
    run(sys.argv[1] if len(sys.argv) > 1 else "flow", algo=name, total_env_steps=steps, agent_overrides=kw)
