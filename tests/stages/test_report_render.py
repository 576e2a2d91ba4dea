"""The report stage end to end: realistic artifacts -> `python -m stages.report` -> headless Chromium.

Chromium is Debian's ``chromium`` (apt-packages.txt; helpers in tests/browser.py). The test checks what a
reader would see: a screenshot that is not blank, and the rendered DOM holding the plots (svg), tables and
inlined videos.
"""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.browser import assert_screenshot_shows_plots, needs_chromium, rendered_dom
from tests.ogpo.test_report import CURVE_COLUMNS


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
        "  online:\n    eval_episodes: 100\n"
        "evaluate:\n  episodes: 100\n  videos: 2\n"
        "report:\n  title: OGPO on Lift (CPU profile)\n  max_videos: 3\n"
    )
    for i in range(2):
        _rollout_gif(root / f"eval/videos/finetuned_seed{i}.gif", seed=i)


@pytest.mark.slow
@needs_chromium
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

    # The plots were drawn: the fine-tuning curve's blue (#0072B2) and the BC level's orange (#D55E00).
    colors = ((0x00, 0x72, 0xB2), (0xD5, 0x5E, 0x00))
    assert_screenshot_shows_plots(report, tmp_path / "report.png", tmp_path / "profile1", colors)

    dom = rendered_dom(report, tmp_path / "profile2")
    text = dom.joined
    assert dom.counts.get("svg", 0) == 13  # learning curve, intervals, BC x2, diagnostics x9
    assert dom.counts.get("path", 0) >= 13 and dom.counts.get("table", 0) == 4
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
    # The learning curve has its Wilson band (100 episodes per evaluation, from params.yaml) and the BC point
    assert "each with its 95% Wilson interval (shaded) over its 100 evaluation episodes" in text
    assert "BC policy at step 0 (43/100)" in text
    assert "Notes on missing or skipped inputs" not in text
