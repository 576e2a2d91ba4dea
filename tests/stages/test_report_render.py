"""The report stage end to end: realistic artifacts -> `python -m stages.report` -> headless Chromium.

Chromium is Debian's ``chromium`` (apt-packages.txt). The test checks what a reader would see: a
screenshot that is not blank, and the rendered DOM holding the plots (svg), tables and inlined videos.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.ogpo.test_report import CURVE_COLUMNS

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _rollout_gif(path: Path, seed: int, frames: int = 12) -> None:
    """A small animated GIF in the spirit of an evaluation rollout: a gripper lifting a cube."""
    rng = random.Random(seed)
    images = []
    for t in range(frames):
        im = Image.new("RGB", (96, 96), (205, 215, 228))
        d = ImageDraw.Draw(im)
        d.rectangle([0, 70, 95, 95], fill=(120, 95, 70))  # table
        lift = max(0, t - frames // 2) * 4
        x = 40 + rng.randint(-2, 2)
        d.rectangle([x, 58 - lift, x + 12, 70 - lift], fill=(200, 40, 40))  # cube
        gy = min(44, 10 + 5 * t) - lift
        d.rectangle([x - 4, gy, x + 16, gy + 6], fill=(60, 60, 60))  # gripper
        images.append(im)
    images[0].save(path, save_all=True, append_images=images[1:], duration=80, loop=0)


def write_realistic_artifacts(root: Path, seed: int = 0) -> None:
    """Artifacts shaped like a real CPU-profile Lift run: 60k env steps, evaluation every 5k."""
    rng = random.Random(seed)
    for d in ("plots", "metrics", "data", "eval/videos"):
        (root / d).mkdir(parents=True, exist_ok=True)
    with open(root / "plots/learning_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_COLUMNS)
        for i in range(61):
            step = i * 1000
            p = 0.42 + 0.5 / (1 + math.exp(-(step - 22000) / 5000))
            success = round(min(1.0, max(0.0, p + rng.gauss(0, 0.04))), 2) if step % 5000 == 0 else ""
            w.writerow(
                [
                    step,
                    success,
                    round(p + rng.gauss(0, 0.05), 3),
                    round(160 - 90 * (p - 0.42) / 0.5 + rng.gauss(0, 6), 1),
                    round(-0.002 + rng.gauss(0, 0.002), 5),
                    round(0.08 * math.exp(-step / 30000) + 0.01 + abs(rng.gauss(0, 0.004)), 5),
                    round(0.6 * math.exp(-step / 20000) + 0.05, 4),
                    round(rng.gauss(0, 0.002), 5),
                    round(0.02 + 0.01 * math.exp(-step / 20000), 5),
                    round(0.04 + 0.03 * math.exp(-step / 15000), 4),
                    round(0.2 + 0.5 * (p - 0.42), 4),
                    round(step / 24.8, 1),
                ]
            )
    with open(root / "plots/bc_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "success", "loss"])
        for step in range(0, 3001, 100):
            success = round(min(0.46, 0.16 * step / 1000 + rng.gauss(0, 0.03)), 2) if step % 500 == 0 else ""
            w.writerow([step, success if success == "" else max(0.0, success), round(1.2 / (1 + step / 250), 4)])
    ev = {
        "bc": {"successes": 43, "n": 100, "mean_return": 0.43, "mean_length": 161.4},
        "finetuned": {"successes": 91, "n": 100, "mean_return": 0.91, "mean_length": 71.9},
    }
    for e in ev.values():
        e["success"] = e["successes"] / e["n"]
    (root / "metrics/eval.json").write_text(json.dumps(ev, indent=2))
    timings = {
        "ingest": {"wall_time_s": 21.7, "env_steps": 7500, "env_steps_per_s": 345.6},
        "pretrain_bc": {"wall_time_s": 148.2, "updates": 3000, "updates_per_s": 20.2},
        "fit_critic": {"wall_time_s": 0.3},
        "finetune": {"wall_time_s": 1089.5, "env_steps": 60000, "env_steps_per_s": 55.1, "updates": 1875},
        "evaluate": {"wall_time_s": 171.0, "env_steps": 23330, "env_steps_per_s": 136.4},
    }
    for stage, m in timings.items():
        (root / f"metrics/{stage}.json").write_text(json.dumps(m))
    summary = {"content_hash": "9f2c" * 16, "episodes": 50, "success_rate": 1.0}
    (root / "data/summary.json").write_text(json.dumps(summary))
    (root / "params.yaml").write_text(
        "ingest:\n  source: scripted:lift\n  episodes: 50\n"
        "pretrain_bc:\n  target_success: 0.5\n  max_steps: 3000\n"
        "finetune:\n  variant: ogpo+ca\n  G: 8\n  env_steps: 60000\n  actor_lr: 4.5e-5\n"
        "evaluate:\n  episodes: 100\n  videos: 2\n"
        "report:\n  title: OGPO on Lift (CPU profile)\n  max_videos: 3\n"
    )
    for i in range(2):
        _rollout_gif(root / f"eval/videos/finetuned_seed{i}.gif", seed=i)


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.srcs += [v or "" for k, v in attrs if k == "src"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, check=False)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' is not installed (apt-packages.txt)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    write_realistic_artifacts(work)
    proc = subprocess.run(
        [sys.executable, "-m", "stages.report"], cwd=work, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = work / "reports/report.html"
    assert proc.stdout.strip() == "reports/report.html" and report.is_file()

    shot = tmp_path / "report.png"
    out = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", report.as_uri()], tmp_path / "profile1")
    assert shot.is_file(), f"no screenshot; chromium said: {out.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 50, "screenshot is (nearly) one colour: nothing rendered"
        # Most of the page is background; a rendered report still inks a sizeable share of the pixels.
        # A blank or error page has almost no dark pixels; the rendered report has text, axes and lines.
        dark = sum(rgb.convert("L").histogram()[:200]) / (rgb.width * rgb.height)
        assert dark > 0.01, f"only {dark:.2%} of the screenshot is ink"
        # The plots were drawn: the fine-tuning curve's blue (#0072B2) and the BC level's orange (#D55E00).
        pixels = np.asarray(rgb).astype(int)
        for color in ((0x00, 0x72, 0xB2), (0xD5, 0x5E, 0x00)):
            close = (np.abs(pixels - np.array(color)).max(axis=-1) < 40).sum()
            assert close > 500, f"plot colour {color} barely appears ({close} pixels): plots not rendered?"

    out = _chromium(["--dump-dom", report.as_uri()], tmp_path / "profile2")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = _Dom()
    dom.feed(out.stdout)
    text = " ".join(" ".join(dom.text).split())
    assert dom.counts.get("svg", 0) >= 13  # learning curve, intervals, BC x2, diagnostics x9
    assert dom.counts.get("polyline", 0) >= 12 and dom.counts.get("table", 0) == 4
    assert dom.counts.get("img", 0) == 2 and all(s.startswith("data:image/gif;base64,") for s in dom.srcs)
    for heading in (
        "Fine-tuning learning curve",
        "Environment steps to reach a success level",
        "BC vs fine-tuned",
        "BC pretraining",
        "Training diagnostics",
        "Stage timings and throughput",
        "Rollouts",
        "Provenance and parameters",
    ):
        assert heading in text
    assert "91.0%" in text and "43.0%" in text and "intervals do not overlap" in text
    assert "9f2c" * 16 in text and "target_success: 0.5" in text
