"""Every stage on the tiny profile through `dvc repro` in a temporary git repo (slow, real robosuite).

Checks: the full DAG runs and writes its artifacts; `dvc metrics show` / `dvc plots show` read them; a second
repro re-runs nothing; changing one finetune param re-runs only finetune, evaluate and report; finetune killed
with SIGKILL after its first checkpoint resumes to the same env-step count with a gap-free learning curve.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MUJOCO_GL", "egl")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    return env


def sh(cwd: Path, *args: str, timeout: float = 900) -> str:
    out = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def curve(ws: Path) -> list[dict]:
    with open(ws / "plots/learning_curve.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A git workspace holding the project's tracked files, on the tiny profile, after one full repro."""
    ws = tmp_path_factory.mktemp("pipeline")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, ws / f)
    sh(ws, "git", "init", "-q")
    sh(ws, "git", "config", "user.email", "ci@example.invalid")
    sh(ws, "git", "config", "user.name", "ci")
    sh(ws, str(BIN / "python"), "-m", "stages.profile", "tiny")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "tiny")
    out = sh(ws, "dvc", "repro")
    assert ran_stages(out) == ["ingest", "pretrain_bc", "fit_critic", "finetune", "evaluate", "report"], out
    return ws


def test_full_dag_writes_artifacts(ws: Path):
    for p in [
        "data/demos.hdf5",
        "data/summary.json",
        "models/bc/weights.safetensors",
        "models/critic/config.json",
        "models/finetuned/weights.safetensors",
        "eval/episodes.csv",
        "metrics/eval.json",
        "reports/report.html",
    ]:
        assert (ws / p).exists(), p
    ev = json.loads((ws / "metrics/eval.json").read_text())
    assert ev["bc"]["n"] == ev["finetuned"]["n"] == 4
    assert 0.0 <= ev["finetuned"]["ci_low"] <= ev["finetuned"]["success"] <= ev["finetuned"]["ci_high"] <= 1.0
    assert list((ws / "eval/videos").glob("*.gif")), "no rollout video"
    rows = curve(ws)
    assert [int(r["env_steps"]) for r in rows] == [200, 400]
    assert not (ws / "state/finetune").exists(), "resumable state must be removed when the stage completes"
    html = (ws / "reports/report.html").read_text()
    assert "<svg" in html and "<table" in html
    metrics = sh(ws, "dvc", "metrics", "show")
    assert "metrics/eval.json" in metrics and "finetuned.success" in metrics
    sh(ws, "dvc", "plots", "show", "-o", str(ws / "dvc_plots"))
    assert (ws / "dvc_plots/index.html").exists()


def test_second_repro_runs_nothing_and_param_change_reruns_downstream_only(ws: Path):
    t = time.perf_counter()
    out = sh(ws, "dvc", "repro")
    assert ran_stages(out) == [], out
    assert time.perf_counter() - t < 60
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["finetune"]["agent"]["G"] = 3
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh(ws, "dvc", "repro")
    assert ran_stages(out) == ["finetune", "evaluate", "report"], out


def test_finetune_killed_after_checkpoint_resumes_without_gaps(ws: Path):
    reference = [int(r["env_steps"]) for r in curve(ws)]
    state = ws / "state/finetune/config.json"
    proc = subprocess.Popen(
        [str(BIN / "python"), "-m", "stages.finetune"], cwd=ws, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 600
        while not state.exists():
            assert proc.poll() is None, "finetune ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.2)
        time.sleep(random.Random(0).uniform(0.0, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = json.loads(state.read_text())
    assert saved["trainer"]["env_steps"] > 0
    out = sh(ws, str(BIN / "python"), "-m", "stages.finetune")
    assert "resumed from state/finetune" in out, out[-2000:]
    steps = [int(r["env_steps"]) for r in curve(ws)]
    assert steps == reference, (steps, reference)  # same evaluation points: no gap, no duplicate
    m = json.loads((ws / "metrics/finetune.json").read_text())
    assert m["env_steps"] == 400
    assert not (ws / "state/finetune").exists()
