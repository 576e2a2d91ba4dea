"""Stages reject bad params and bad inputs before any work, with one clear line and exit code 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ogpo.errors import ConfigError
from stages.common import load_params

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
        ("pretrain_bc", lambda p: p["pretrain_bc"]["gcp"].update(K=0), "pretrain_bc.gcp.K must be an integer >= 1"),
        ("ingest", lambda p: p["ingest"].pop("task") and p["ingest"].update(task="jenga"), "jenga"),
        ("evaluate", lambda p: p.pop("evaluate"), "missing section 'evaluate'"),
        ("pretrain_bc", lambda p: p["pretrain_bc"]["bc"].update(tau=2), "pretrain_bc.bc.tau must be in (0, 1], got 2"),
        ("fit_critic", lambda p: p["fit_critic"].update(hidden=[]), "fit_critic.hidden must be a non-empty list"),
        # the device is checked against this host when the stage starts (a GPU profile validates anywhere)
        ("pretrain_bc", lambda p: p["pretrain_bc"].update(device="cuda:99"), "pretrain_bc.device cuda:99 requested"),
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


BOUNDS = [
    ("pretrain_bc", "bc", {"lr": 0}, "pretrain_bc.bc.lr must be > 0, got 0"),
    ("pretrain_bc", "bc", {"lr": -1e-4}, "pretrain_bc.bc.lr must be > 0, got -0.0001"),
    ("pretrain_bc", "bc", {"lr_floor": -1.0}, "pretrain_bc.bc.lr_floor must be >= 0, got -1.0"),
    ("pretrain_bc", "bc", {"tau": 0}, "pretrain_bc.bc.tau must be in (0, 1], got 0"),
    ("pretrain_bc", "bc", {"tau": 1.5}, "pretrain_bc.bc.tau must be in (0, 1], got 1.5"),
    ("pretrain_bc", "bc", {"log_every": 0}, "pretrain_bc.bc.log_every must be an integer >= 1, got 0"),
    ("pretrain_bc", "bc", {"lr_warmup": -1}, "pretrain_bc.bc.lr_warmup must be an integer >= 0, got -1"),
    ("pretrain_bc", "bc", {"lr_period": -1}, "pretrain_bc.bc.lr_period must be an integer >= 0, got -1"),
    ("pretrain_bc", "gcp", {"hidden": []}, "pretrain_bc.gcp.hidden must be a non-empty list of layer widths, got []"),
    ("pretrain_bc", "gcp", {"hidden": [32, 0]}, "pretrain_bc.gcp.hidden[1] must be an integer >= 1, got 0"),
    ("pretrain_bc", "gcp", {"beta_schedule": "linear"}, "pretrain_bc.gcp.beta_schedule must be one of ['cosine']"),
    ("pretrain_bc", None, {"device": "gpu"}, "pretrain_bc.device must be one of cpu, cuda, cuda:N, got 'gpu'"),
    ("fit_critic", None, {"hidden": [32, 0]}, "fit_critic.hidden[1] must be >= 1, got 0"),
    ("fit_critic", None, {"hidden": []}, "fit_critic.hidden must be a non-empty list of layer widths, got []"),
    ("fit_critic", None, {"device": "cuda:x"}, "fit_critic.device must be one of cpu, cuda, cuda:N, got 'cuda:x'"),
    ("fit_critic", "fit", {"lr": 0.0}, "fit_critic.fit.lr must be > 0, got 0.0"),
    ("fit_critic", "fit", {"weight_decay": -1e-5}, "fit_critic.fit.weight_decay must be >= 0, got -1e-05"),
    ("fit_critic", "fit", {"gamma": 1.01}, "fit_critic.fit.gamma must be in [0, 1], got 1.01"),
    ("fit_critic", "fit", {"tau": 0}, "fit_critic.fit.tau must be in (0, 1], got 0"),
    ("fit_critic", "fit", {"mc_weight": -1}, "fit_critic.fit.mc_weight must be >= 0, got -1"),
    ("fit_critic", "fit", {"calql_alpha": -0.5}, "fit_critic.fit.calql_alpha must be >= 0, got -0.5"),
    ("fit_critic", "fit", {"log_every": 0}, "fit_critic.fit.log_every must be an integer >= 1, got 0"),
    ("evaluate", None, {"device": "cuda:"}, "evaluate.device must be one of cpu, cuda, cuda:N, got 'cuda:'"),
    ("ingest", None, {"task": "jenga"}, "ingest.task must be one of can, lift, square, tool_hang, transport"),
    ("ingest", None, {"source": "scripted:can"}, "ingest.source 'scripted:can' does not make demos for task 'lift'"),
    ("ingest", None, {"source": ""}, "ingest.source must be a file path, s3://bucket/key or scripted:<task>"),
    ("ingest", None, {"count": None}, "ingest.count is required with source 'scripted:lift'"),
    ("ingest", None, {"filter_key": "20_percent"}, "ingest.filter_key applies to file sources"),
]


@pytest.mark.parametrize("section, sub, change, message", BOUNDS)
def test_ranges_are_checked_when_params_load(ws: Path, section, sub, change, message):
    """In-process (the CLI path is the same load_params call, tested above): each range names its key."""
    from stages.evaluate import EvaluateParams
    from stages.fit_critic import CriticParams
    from stages.ingest import IngestParams
    from stages.pretrain_bc import PretrainParams

    schemas = {
        "ingest": IngestParams,
        "pretrain_bc": PretrainParams,
        "fit_critic": CriticParams,
        "evaluate": EvaluateParams,
    }
    edit(ws, lambda p: (p[section][sub] if sub else p[section]).update(change))
    with pytest.raises(ConfigError) as info:
        load_params(section, schemas[section], ws / "params.yaml")
    assert str(info.value).startswith(f"{ws / 'params.yaml'}: {message}"), str(info.value)
