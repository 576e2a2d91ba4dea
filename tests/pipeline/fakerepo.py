"""A throwaway git + DVC repository with a 3-stage pipeline of trivial Python commands.

It has the shape of the real DAG (data -> checkpoint dir -> eval metrics) and the real conventions
(checkpoint dir with weights.safetensors + config.json carrying weights_sha256; metrics/eval.json with
successes/n; a resumable ``state/finetune/`` outside DVC outs), but runs in about a second, so the
orchestration mechanics (run-cache across workers, retries, resume, pulls) are tested fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

STAGES_PY = r"""
import json, os, sys, time
from pathlib import Path

import torch
import yaml

from ogpo.checkpoint import save_checkpoint

stage = sys.argv[1]
p = yaml.safe_load(Path("params.yaml").read_text())[stage]
if stage == "ingest":
    Path("data").mkdir(exist_ok=True)
    Path("data/demos.txt").write_text("demo " * p["episodes"])
elif stage == "finetune":
    n_demo = len(Path("data/demos.txt").read_text().split())
    state = Path("state/finetune/progress.json")
    steps = json.loads(state.read_text())["steps"] if state.exists() else []
    if steps:
        print(f"resuming at step {len(steps)}", flush=True)
    for step in range(len(steps), p["steps"]):
        time.sleep(p["step_s"])
        steps.append(step)
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_name(".progress.tmp")
        tmp.write_text(json.dumps({"steps": steps}))
        os.replace(tmp, state)
    w = torch.arange(4, dtype=torch.float32) * p["scale"] + n_demo
    save_checkpoint("models/finetuned", {"actor.w": w}, {"format": "fake", "steps": steps})
    import shutil
    shutil.rmtree("state/finetune", ignore_errors=True)
elif stage == "evaluate":
    cfg = json.loads(Path("models/finetuned/config.json").read_text())
    Path("metrics").mkdir(exist_ok=True)
    out = {"bc": {"successes": 5, "n": p["n"]}, "finetuned": {"successes": p["successes"], "n": p["n"],
           "steps": len(cfg["steps"])}}
    Path("metrics/eval.json").write_text(json.dumps(out))
"""

DVC_YAML = {
    "stages": {
        "ingest": {
            "cmd": "python fake_stages.py ingest",
            "deps": ["fake_stages.py"],
            "params": ["ingest"],
            "outs": ["data"],
        },
        "finetune": {
            "cmd": "python fake_stages.py finetune",
            "deps": ["fake_stages.py", "data"],
            "params": ["finetune"],
            "outs": ["models/finetuned"],
        },
        "evaluate": {
            "cmd": "python fake_stages.py evaluate",
            "deps": ["fake_stages.py", "models/finetuned"],
            "params": ["evaluate"],
            "metrics": [{"metrics/eval.json": {"cache": False}}],
        },
    }
}

PARAMS = {
    "ingest": {"episodes": 3},
    "finetune": {"steps": 3, "step_s": 0.0, "scale": 1.0},
    "evaluate": {"n": 20, "successes": 18},
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def make_fake_repo(path: Path, params: dict | None = None) -> Path:
    """Create the repo at ``path`` (bare-able origin for clones) and return it; one commit on ``main``."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=path, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=path, check=True)
    (path / "fake_stages.py").write_text(STAGES_PY)
    (path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump(params or PARAMS, sort_keys=False))
    (path / ".gitignore").write_text("/data\n/models\n/metrics\n/state\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "fake pipeline")
    return path


def commit_params(repo: Path, section: str, key: str, value, message: str) -> str:
    """Change one param on ``main`` and commit; returns the new sha."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-q", "-am", message)
    return git(repo, "rev-parse", "HEAD")
