"""Rollout videos: the crop maths on hand-built points, the framed recorder on a fake env, and the framing of a
real robosuite Lift episode rendered offscreen (projected cube and gripper in the frame, the cube larger)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from ogpo.video import CropBox, crop_box, crop_resize, record_episode, save_gif

os.environ.setdefault("MUJOCO_GL", "egl")


# ---- crop maths -------------------------------------------------------------------------------------------


def test_crop_box_square_with_margin_around_the_points_centre():
    box = crop_box(np.array([[30.0, 40.0], [70.0, 50.0]]), 200, 200, margin=0.1, min_side=0.0)
    assert box == pytest.approx(CropBox(26.0, 21.0, 48.0))  # extent 40 -> 40 * 1.2, centred on (50, 45)


def test_crop_box_minimum_side_and_shift_back_inside():
    # one point: the minimum side (0.3 of 100) around it
    assert crop_box(np.array([[50.0, 50.0]]), 100, 100, margin=0.1, min_side=0.3) == pytest.approx(
        CropBox(35.0, 35.0, 30.0)
    )
    # near a corner: shifted inside, not shrunk
    box = crop_box(np.array([[2.0, 97.0], [12.0, 99.0]]), 100, 100, margin=0.0, min_side=0.2)
    assert box == pytest.approx(CropBox(0.0, 80.0, 20.0))


def test_crop_box_clamps_outside_points_and_never_exceeds_the_frame():
    uv = np.array([[-50.0, 10.0], [150.0, 20.0]])  # both outside horizontally
    assert crop_box(uv, 100, 100) == pytest.approx(CropBox(0.0, 0.0, 100.0))
    # a wide frame: the square is at most the frame's height and stays inside
    box = crop_box(np.array([[10.0, 10.0], [190.0, 90.0]]), 200, 100)
    assert box.side == pytest.approx(100.0) and 0.0 <= box.x0 <= 100.0 and box.y0 == pytest.approx(0.0)


def test_crop_box_ignores_points_behind_the_camera():
    uv = np.array([[np.nan, np.nan], [40.0, 40.0], [60.0, 60.0]])
    assert crop_box(uv, 100, 100, margin=0.0, min_side=0.0) == pytest.approx(CropBox(40.0, 40.0, 20.0))
    assert crop_box(np.full((2, 2), np.nan), 120, 80) == pytest.approx(CropBox(20.0, 0.0, 80.0))


def test_crop_box_contains_all_points_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = rng.integers(20, 300, size=2)
        uv = rng.uniform(-0.2, 1.2, size=(rng.integers(1, 8), 2)) * [w, h]
        b = crop_box(uv, int(w), int(h), margin=float(rng.uniform(0, 0.3)), min_side=float(rng.uniform(0, 1)))
        c = np.clip(uv, 0, [w, h])
        assert b.x0 >= -1e-9 and b.y0 >= -1e-9 and b.x0 + b.side <= w + 1e-9 and b.y0 + b.side <= h + 1e-9
        assert b.side <= min(w, h) + 1e-9
        if (c.max(0) - c.min(0)).max() <= min(w, h):
            assert (c >= [b.x0 - 1e-9, b.y0 - 1e-9]).all() and (c <= [b.x0 + b.side + 1e-9, b.y0 + b.side + 1e-9]).all()


def test_crop_resize_cuts_the_box_and_resizes():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[20:40, 60:80] = 255  # a white square: rows 20..40, columns 60..80
    out = crop_resize(frame, CropBox(60.0, 20.0, 20.0), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[4:-4, 4:-4].min() == 255 and out.mean() > 200  # the filter blends in the box's outside at its rim
    np.testing.assert_array_equal(crop_resize(frame, CropBox(0.0, 0.0, 100.0), 100), frame)


# ---- the recorder on a fake env -----------------------------------------------------------------------------


class _DotEnv:
    """A 'camera' looking at the unit square: a dot at world (x, y) drawn at pixel (x*S, y*S)."""

    def __init__(self, size: int = 32) -> None:
        self.render_size, self.pos, self.sizes = size, np.array([0.4, 0.4]), []

    def reset(self, seed):
        self.pos, self.t = np.array([0.4, 0.4]), 0
        return np.zeros(2, np.float32)

    def step(self, a):
        self.t += 1
        self.pos = self.pos + 0.01
        return np.zeros(2, np.float32), -1.0, False, self.t >= 10, {"success": False}

    def render(self, size=None):
        s = int(size or self.render_size)
        self.sizes.append(s)
        img = np.zeros((s, s, 3), np.uint8)
        c, r = (self.pos * s).astype(int)
        img[r - s // 20 : r + s // 20 + 1, c - s // 20 : c + s // 20 + 1] = 255
        return img


class _FocusDotEnv(_DotEnv):
    """The same with the framing interface: the dot's corners as focus points, projected by scaling."""

    def focus_points(self):
        return np.array([[*(self.pos - 0.05), 0.0], [*(self.pos + 0.05), 0.0]])

    def project_points(self, points, size=None):
        return np.asarray(points)[:, :2] * int(size or self.render_size)


def _zero_policy(obs):
    return np.zeros((obs.shape[0], 2, 2), np.float32)


def test_record_episode_frames_one_box_from_the_whole_episode(tmp_path):
    env = _FocusDotEnv(32)
    frames, ok = record_episode(env, _zero_policy, 2, seed=0)
    assert not ok and len(frames) == 7 and all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    # rendered larger than the output (the initial box is 0.3 of the frame: about 3.3x), one size throughout
    assert len(set(env.sizes)) == 1 and 96 <= env.sizes[0] <= 512
    # the dot covers more of each framed frame than of the full frame, in every frame (no frame loses it)
    full = _FocusDotEnv(32)
    plain, _ = record_episode(full, _zero_policy, 2, seed=0, framing=False)
    assert full.sizes == [32] * 7
    for framed, f in zip(frames, plain, strict=True):
        assert (framed > 127).mean() > 2 * (f > 127).mean() > 0
    save_gif(frames, tmp_path / "v.gif")  # the GIF path is unchanged
    assert (tmp_path / "v.gif").stat().st_size > 0


def test_record_episode_without_focus_points_keeps_full_frames():
    env = _DotEnv(32)
    frames, _ = record_episode(env, _zero_policy, 2, seed=0)
    assert env.sizes == [32] * 7 and all(f.shape == (32, 32, 3) for f in frames)


# ---- a real robosuite Lift episode ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lift():
    from ogpo.envs.robosuite import RobosuiteEnv

    env = RobosuiteEnv("lift", render=True, render_size=64, horizon=16)
    yield env
    env.close()


def _expert_policy(env):
    from ogpo.envs.experts import make_expert

    expert, started = make_expert("lift", 1, seed=0), []

    def policy(obs):
        if not started:
            expert.reset(0, obs[0])
            started.append(True)
        return expert.act(obs)[:, None]

    return policy


def _red(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(int)
    return (f[..., 0] > 100) & (f[..., 0] > f[..., 1] + 50) & (f[..., 0] > f[..., 2] + 50)  # Lift's cube is red


def test_lift_projection_matches_robosuite_and_the_rendered_image(lift):
    from robosuite.utils.camera_utils import get_camera_transform_matrix, project_points_from_world_to_camera

    lift.reset(0)
    sim, s = lift.raw.sim, 256
    cube = sim.data.body_xpos[lift.raw.cube_body_id].copy()
    eef = sim.data.site_xpos[lift.raw.robots[0].eef_site_id["right"]].copy()
    uv = lift.project_points(np.stack([cube, eef]), s)
    assert np.isfinite(uv).all() and ((uv >= 0) & (uv < s)).all()  # both inside the frame
    m = get_camera_transform_matrix(sim, lift.camera, s, s)
    rc = project_points_from_world_to_camera(np.stack([cube, eef]), m, s, s)  # (row, column), rounded
    np.testing.assert_array_equal(rc, np.round(uv[:, ::-1]).astype(int))
    frame = lift.render(s)
    assert frame.shape == (s, s, 3)
    c, r = np.round(uv[0]).astype(int)
    assert _red(frame)[r, c], "the projected cube centre is not on the (red) cube"
    pts = lift.focus_points()
    assert pts.shape == (2 + 8 * len(np.flatnonzero(sim.model.geom_bodyid == lift.raw.cube_body_id)), 3)
    box = crop_box(lift.project_points(pts, s), s, s)
    for x, y in uv:  # the crop of the initial scene holds the cube and the gripper
        assert box.x0 <= x <= box.x0 + box.side and box.y0 <= y <= box.y0 + box.side


def test_lift_video_is_zoomed_on_robot_and_cube(lift):
    framed, _ = record_episode(lift, _expert_policy(lift), 1, seed=0)
    full, _ = record_episode(lift, _expert_policy(lift), 1, seed=0, framing=False)
    assert len(framed) == len(full) == 10
    assert all(f.shape == (64, 64, 3) and f.dtype == np.uint8 for f in framed)
    # the cube covers a clearly larger part of the image, in every frame, and stays in view
    ratios = [_red(a).mean() / _red(b).mean() for a, b in zip(framed, full, strict=True)]
    print("cube area ratio framed/full per frame:", np.round(ratios, 2))
    assert min(ratios) > 1.5, ratios
    # fixed framing: the same episode gives the same frames (deterministic)
    again, _ = record_episode(lift, _expert_policy(lift), 1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(framed, again, strict=True))


def test_lift_video_without_known_object_falls_back_to_full_frame(lift, monkeypatch, caplog):
    import ogpo.envs.robosuite as rs

    monkeypatch.setattr(rs, "FOCUS_BODIES", {})
    assert lift.focus_points().shape == (0, 3)
    with caplog.at_level(logging.INFO, logger="ogpo.video"):
        frames, _ = record_episode(lift, _expert_policy(lift), 1, seed=0)
    assert "no known object to frame" in caplog.text
    lift.reset(0)
    np.testing.assert_array_equal(frames[0], lift.render())
