"""Test-wide settings: one torch thread (2-core machines run several processes at once), headless GL."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
