"""Demonstrations as a replay buffer of whole episodes, so BC and offline critic fitting sample length-H
chunks with the same valid-mask semantics as online training (padded steps past an episode end are masked)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ogpo.data.demos import Dataset, read_robomimic
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.robosuite import ogpo_reward

ACTION_CLIP = 1.0 - 1e-5  # demo actions are clipped to +-(1 - 1e-5) (spec 5)


def dataset_to_buffer(ds: Dataset, device: str | torch.device = "cpu") -> ReplayBuffer:
    total = sum(len(e) for e in ds.episodes)
    buf = ReplayBuffer(max(total, 1), ds.obs_dim, ds.act_dim, device=device)
    for e in ds.episodes:
        next_obs = e.next_obs if e.next_obs is not None else np.concatenate([e.obs[1:], e.obs[-1:]], 0)
        actions = np.clip(e.actions, -ACTION_CLIP, ACTION_CLIP)
        # datasets hold robomimic's 0/1 reward; training uses the OGPO convention (spec 5: -1 per step, +5)
        rewards = np.asarray(ogpo_reward(np.asarray(e.rewards) > 0.5), dtype=np.float32)
        buf.add_episode(e.obs, actions, rewards, next_obs, terminated=bool(e.success), success=bool(e.success))
    return buf


def load_demo_buffer(
    path: str | os.PathLike, device: str | torch.device = "cpu", filter_key: str | None = None
) -> tuple[ReplayBuffer, dict[str, Any]]:
    """Read a robomimic-layout dataset and return (buffer, info with task, obs/act dims, obs keys, hash)."""
    ds = read_robomimic(path, filter_key=filter_key)
    info = {
        "task": ds.task.name,
        "obs_dim": ds.obs_dim,
        "act_dim": ds.act_dim,
        "obs_keys": list(ds.task.obs_keys),
        "episodes": len(ds),
        "content_hash": ds.content_hash(),
    }
    return dataset_to_buffer(ds, device), info
