"""Stages reject bad params and bad inputs before any work, with one clear line and exit code 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run_stage(ws: Path, stage: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"], cwd=ws, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((ROOT / "profiles/tiny.yaml").read_text())
    return tmp_path


def edit(ws: Path, fn) -> None:
    p = yaml.safe_load((ws / "params.yaml").read_text())
    fn(p)
    (ws / "params.yaml").write_text(yaml.safe_dump(p))


@pytest.mark.parametrize(
    "stage, change, message",
    [
        ("finetune", lambda p: p["finetune"]["agent"].update(GG=3), "finetune.agent.GG"),
        ("finetune", lambda p: p["finetune"]["agent"].update(G=1), "finetune.agent.G"),
        ("finetune", lambda p: p["finetune"]["online"].update(total_env_steps=-5), "finetune.online.total_env_steps"),
        ("pretrain_bc", lambda p: p["pretrain_bc"]["gcp"].update(K=0), "K"),
        ("ingest", lambda p: p["ingest"].pop("task") and p["ingest"].update(task="jenga"), "jenga"),
        ("evaluate", lambda p: p.pop("evaluate"), "missing section 'evaluate'"),
    ],
)
def test_bad_params_fail_before_work(ws: Path, stage, change, message):
    edit(ws, change)
    out = run_stage(ws, stage)
    assert out.returncode == 1, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (ws / "models").exists() and not (ws / "data").exists()


def test_missing_and_corrupt_checkpoints_give_clear_errors(ws: Path):
    out = run_stage(ws, "finetune")
    assert out.returncode == 1 and "models/bc: checkpoint directory not found" in out.stderr, out.stderr
    bc = ws / "models/bc"
    bc.mkdir(parents=True)
    (bc / "config.json").write_text('{"weights_sha256": "00"}')
    (bc / "weights.safetensors").write_bytes(b"not a safetensors file")
    out = run_stage(ws, "finetune")
    assert out.returncode == 1 and "does not match config" in out.stderr, out.stderr
    assert (bc / "weights.safetensors").read_bytes() == b"not a safetensors file"  # untouched
