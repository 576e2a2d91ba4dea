"""Rollout videos: record frames of single-env episodes with a chunk policy and save them as animated GIFs
(self-contained in the HTML report, no codec needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ogpo.rollout import ChunkPolicy


def record_episode(env, policy: ChunkPolicy, H: int, seed: int, frame_skip: int = 2) -> tuple[list[np.ndarray], bool]:
    """Run one episode on a single env with ``render()`` (e.g. RobosuiteEnv(render=True)); frames + success."""
    obs = env.reset(seed)
    frames = [env.render()]
    t, success, done = 0, False, False
    while not done:
        chunk = policy(obs[None])[0]
        for a in chunk:
            obs, _, terminated, truncated, info = env.step(a)
            t += 1
            if t % frame_skip == 0:
                frames.append(env.render())
            success = bool(info["success"])
            done = terminated or truncated
            if done:
                break
    frames.append(env.render())
    return frames, success


def save_gif(frames: list[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write frames as a looping GIF atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path
