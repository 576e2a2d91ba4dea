"""Rollout videos: record frames of single-env episodes with a chunk policy and save them as animated GIFs
(self-contained in the HTML report, no codec needed).

Framing: the camera views of the robosuite tasks show much table and floor, so at GIF sizes (48-128 px) the
robot and the object are a few pixels wide. ``record_episode`` therefore renders each frame larger, keeps the
scene's focus points of every recorded frame (the env's ``focus_points()``: robot bases, end-effectors, the
task's objects), and after the episode crops every frame to one square box that holds all of them (plus a
margin) and resizes it to the env's ``render_size``. One box per episode: the view does not jitter, and the
gripper never leaves it. Envs without ``focus_points`` (or tasks with no known object) keep the full frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ogpo.rollout import ChunkPolicy

log = logging.getLogger(__name__)

MARGIN = 0.12  # of the points' bounding-box side, added on every side
MIN_SIDE = 0.3  # the crop is at least this fraction of the frame (at most ~3.3x zoom)
MAX_RENDER = 512  # largest side rendered for cropping (pixels), unless the output itself is larger


@dataclass(frozen=True)
class CropBox:
    """A square crop of a frame, in pixels of that frame: columns ``x0..x0+side``, rows ``y0..y0+side``."""

    x0: float
    y0: float
    side: float

    def scaled(self, factor: float) -> CropBox:
        return CropBox(self.x0 * factor, self.y0 * factor, self.side * factor)

    @property
    def pil_box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)


def crop_box(uv: np.ndarray, width: int, height: int, margin: float = MARGIN, min_side: float = MIN_SIDE) -> CropBox:
    """The square box around pixel points ``uv`` ``[N, 2]`` (column, row) of a ``width`` x ``height`` frame.

    Points outside the frame are clamped to its edge and NaN rows (behind the camera) are ignored. The
    points' bounding box grows by ``margin`` times its longer side on every side, becomes a square (at least
    ``min_side`` of the shorter frame side and one pixel, at most the whole of it) around the same centre,
    and is shifted back inside the frame. No usable point: the largest centred square.
    """
    limit = float(min(width, height))
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    uv = uv[np.isfinite(uv).all(axis=1)]
    if len(uv) == 0:
        return CropBox((width - limit) / 2, (height - limit) / 2, limit)
    uv = np.clip(uv, 0.0, [float(width), float(height)])
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    extent = float((hi - lo).max())
    side = min(max(extent * (1.0 + 2.0 * margin), min_side * limit, 1.0), limit)
    cx, cy = (lo + hi) / 2
    x0 = min(max(cx - side / 2, 0.0), width - side)
    y0 = min(max(cy - side / 2, 0.0), height - side)
    return CropBox(float(x0), float(y0), float(side))


def crop_resize(frame: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """``frame`` cut to ``box`` (sub-pixel exact) and resized to ``[size, size, 3]`` uint8."""
    img = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box.pil_box), dtype=np.uint8)


class _Framer:
    """Grabs large frames and focus points during an episode, then crops them all to one box."""

    def __init__(self, env, margin: float, min_side: float) -> None:
        self.env, self.margin, self.min_side = env, margin, min_side
        self.size = int(env.render_size)
        pts = env.focus_points()
        # render large enough that the initial scene's crop already has `size` pixels; the episode's box
        # holds the initial points, so it is never smaller
        first = crop_box(env.project_points(pts, self.size), self.size, self.size, margin, min_side)
        zoom = self.size / first.side
        self.render_size = max(self.size, min(math.ceil(self.size * zoom), max(MAX_RENDER, self.size)))
        self.frames: list[np.ndarray] = []
        self.points: list[np.ndarray] = [pts]

    def grab(self) -> None:
        self.frames.append(self.env.render(self.render_size))
        self.points.append(self.env.focus_points())

    def finish(self) -> tuple[list[np.ndarray], CropBox]:
        s = self.render_size
        uv = self.env.project_points(np.concatenate(self.points), s)
        box = crop_box(uv, s, s, self.margin, self.min_side)
        return [crop_resize(f, box, self.size) for f in self.frames], box.scaled(self.size / s)


def _framer(env, framing: bool, margin: float, min_side: float) -> _Framer | None:
    if not framing or not all(hasattr(env, a) for a in ("focus_points", "project_points", "render_size")):
        return None
    if len(env.focus_points()) == 0:
        name = getattr(getattr(env, "spec", None), "name", type(env).__name__)
        log.info("video of %s: no known object to frame; keeping the full camera frame", name)
        return None
    return _Framer(env, margin, min_side)


def record_episode(
    env,
    policy: ChunkPolicy,
    H: int,
    seed: int,
    frame_skip: int = 2,
    *,
    framing: bool = True,
    margin: float = MARGIN,
    min_side: float = MIN_SIDE,
) -> tuple[list[np.ndarray], bool]:
    """Run one episode on a single env with ``render()`` (e.g. RobosuiteEnv(render=True)); frames + success.

    Frames are ``[S, S, 3]`` uint8 with S the env's ``render_size``. With ``framing`` (default) and an env
    that has ``focus_points``/``project_points``, every frame is cropped to one square box holding the robot
    and the task's objects over the whole episode (see the module doc); otherwise full camera frames.
    """
    obs = env.reset(seed)
    framer = _framer(env, framing, margin, min_side)
    frames: list[np.ndarray] = []

    def grab() -> None:
        if framer is None:
            frames.append(env.render())
        else:
            framer.grab()

    grab()
    t, success, done = 0, False, False
    while not done:
        chunk = policy(obs[None])[0]
        for a in chunk:
            obs, _, terminated, truncated, info = env.step(a)
            t += 1
            if t % frame_skip == 0:
                grab()
            success = bool(info["success"])
            done = terminated or truncated
            if done:
                break
    grab()
    if framer is not None:
        frames, box = framer.finish()
        log.debug("video crop (pixels of a %d px frame): %s", framer.size, box)
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
