"""Every stage on the tiny profile through `dvc repro` in a temporary git repo (slow, real robosuite).

Checks: the full DAG runs and writes its artifacts; `dvc metrics show` / `dvc plots show` read them; a second
repro re-runs nothing; changing one finetune param re-runs only finetune, evaluate and report; finetune killed
with SIGKILL after its first checkpoint resumes to the same env-step count with a gap-free learning curve; and
`dvc repro` with `finetune.algo` set to every registered algorithm (DPPO on a diffusion BC start), with the kill -9
resume repeated for an off-policy baseline (QC) and for the on-policy DPPO.
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

from ogpo.algos import algorithms
from ogpo.checkpoint import recover_checkpoint
from tests.ogpo.agents.test_online import SMALL, SMALL_ON_POLICY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "pretrain_bc", "fit_critic", "finetune", "evaluate", "report"]
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
    assert ran_stages(out) == ["check_params", *STAGES], out
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
    assert "dvclive/evaluate/metrics.json" in metrics and "finetuned.success" in metrics
    assert "dvclive/finetune/metrics.json" in metrics and "params" not in metrics  # numbers only, no params echo
    live = [line.split("\t") for line in (ws / "dvclive/finetune/plots/metrics/success.tsv").read_text().splitlines()]
    assert [(int(a), float(b)) for a, b in live[1:]] == [(int(r["env_steps"]), float(r["success"])) for r in rows]
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
    assert ran_stages(out) == ["check_params", "finetune", "evaluate", "report"], out


def test_critic_without_offline_fit_runs_through_dvc_repro(ws: Path):
    """``fit_critic.fit.mode: none`` (the CPU profile's and the paper's default) logs no curve: its declared
    dvclive plots directory must still be an output DVC accepts; the original params come back from the
    run-cache."""
    before = (ws / "params.yaml").read_text()
    params = yaml.safe_load(before)
    params["fit_critic"]["fit"]["mode"] = "none"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = sh(ws, "dvc", "repro")
        assert ran_stages(out) == ["check_params", "fit_critic", "finetune", "evaluate", "report"], out
        assert json.loads((ws / "metrics/fit_critic.json").read_text())["updates"] == 0
        assert (ws / "dvclive/fit_critic/plots/metrics").is_dir()
    finally:
        (ws / "params.yaml").write_text(before)
    out = sh(ws, "dvc", "repro")
    assert ran_stages(out) == [], out  # every stage restored from the run-cache


def _outputs(ws: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(ws)): p.read_bytes()
        for d in ("data", "models", "metrics", "plots", "eval", "reports")
        for p in sorted((ws / d).rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["finetune"]["agent"].update(G=1), "finetune.agent.G must be"),
        (lambda p: p["pretrain_bc"]["bc"].update(log_every=0), "pretrain_bc.bc.log_every must be an integer >= 1"),
        (lambda p: p["ingest"].update(count=0), "ingest.count"),
    ],
)
def test_bad_param_stops_dvc_repro_before_any_output_is_removed(ws: Path, change, message):
    before = _outputs(ws)
    original = (ws / "params.yaml").read_text()
    params = yaml.safe_load(original)
    change(params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        res = subprocess.run(["dvc", "repro"], cwd=ws, env=_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode != 0
        text = res.stdout + res.stderr
        assert message in text and "Traceback" not in text, text[-3000:]
        assert ran_stages(res.stdout) == ["check_params"], res.stdout
        assert _outputs(ws) == before  # every previous output is still there, byte for byte
    finally:
        (ws / "params.yaml").write_text(original)
    out = sh(ws, "dvc", "repro")
    assert ran_stages(out) in ([], ["check_params"]), out  # good params again: nothing else runs (or restores)


def test_finetune_killed_after_checkpoint_resumes_without_gaps(ws: Path):
    kill_and_resume(ws, total_env_steps=400)


def kill_and_resume(ws: Path, total_env_steps: int) -> None:
    """SIGKILL finetune after its first checkpoint; the re-run resumes and ends with the reference curve."""
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
        # a short random delay past the first checkpoint: the kill lands mid-training (or mid-checkpoint), never
        # after the end (a tiny run can finish in ~2 s after its first checkpoint on a fast machine)
        time.sleep(random.Random(0).uniform(0.0, 0.2))
        assert proc.poll() is None, "finetune finished before it could be killed: give it more work past the checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    recover_checkpoint(state.parent)  # a kill between the two renames of a checkpoint replacement (as the stage does)
    saved = json.loads(state.read_text())
    assert saved["trainer"]["env_steps"] > 0
    out = sh(ws, str(BIN / "python"), "-m", "stages.finetune")
    assert "resumed from state/finetune" in out, out[-2000:]
    steps = [int(r["env_steps"]) for r in curve(ws)]
    assert steps == reference, (steps, reference)  # same evaluation points: no gap, no duplicate
    m = json.loads((ws / "metrics/finetune.json").read_text())
    assert m["env_steps"] == total_env_steps
    assert not (ws / "state/finetune").exists()


# ogpo+ca is the profile's default, run by the tests above; dppo goes last because it needs a diffusion BC
ALGOS = sorted((n for n in algorithms() if n != "ogpo+ca"), key=lambda n: n == "dppo")
KILL_TESTED = ("qc", "dppo")


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_runs_through_dvc_repro(ws: Path, algo: str):
    spec = algorithms()[algo]
    original = (ws / "params.yaml").read_text()
    params = yaml.safe_load(original)
    ft = params["finetune"]
    ft["algo"] = algo
    ft["agent"] = (SMALL | SMALL_ON_POLICY)[algo]
    ft["online"] |= {"total_env_steps": 200, "eval_every": 100, "checkpoint_every": 40}
    params["evaluate"]["videos"] = 0
    kind = "flow" if "flow" in spec.gcp_kinds else spec.gcp_kinds[0]
    params["pretrain_bc"]["gcp"]["kind"] = kind
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = sh(ws, "dvc", "repro")
        assert ran_stages(out)[-3:] == ["finetune", "evaluate", "report"], out
        m = json.loads((ws / "metrics/finetune.json").read_text())
        assert m["algo"] == algo and m["env_steps"] == 200
        cfg = json.loads((ws / "models/finetuned/config.json").read_text())
        assert cfg["algo"] == algo and cfg["gcp"]["kind"] == kind
        rows = curve(ws)
        assert [int(r["env_steps"]) for r in rows] == [100, 200]
        assert set(rows[0]) >= {"success", "rollout_success", "updates"}
        ev = json.loads((ws / "metrics/eval.json").read_text())
        assert ev["finetuned"]["n"] == 4
        if algo in KILL_TESTED:
            kill_and_resume(ws, total_env_steps=200)
    finally:
        (ws / "params.yaml").write_text(original)


def test_a_robosuite_study_runs_finetune_and_evaluate_per_run_from_the_pipelines_checkpoints(ws: Path):
    """A Lift study on the tiny profile's models/bc and models/critic: each (algo, seed) runs the finetune and
    evaluate stages in its own work directory; the evaluate stage's BC and fine-tuned results are the run's
    step-0 and final points; the params of the root pipeline are untouched."""
    from ogpo.study.aggregate import read_runs_csv

    sh(ws, "dvc", "repro")  # the root pipeline up to date (earlier tests restore its params)
    before = (ws / "params.yaml").read_text()
    sh(ws, str(BIN / "python"), "-m", "stages.study", "new", "lifttiny", "--task", "lift", "--algos", "ogpo+ca,qc",
       "--seeds", "0", "--budget", "200", "--eval-every", "100")  # fmt: skip
    path = ws / "studies/lifttiny/study.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["study"] |= {"eval_episodes": 2, "final_episodes": 4, "overrides": {a: SMALL[a] for a in ("ogpo+ca", "qc")}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = sh(ws, "dvc", "repro", "studies/lifttiny/dvc.yaml")
    ran = [s.split(":")[-1] for s in ran_stages(out)]
    assert ran[:2] == ["check", "start"] and ran[-1] == "aggregate"
    assert sorted(ran[2:-1]) == ["run@ogpo+ca-0", "run@qc-0"]
    df = read_runs_csv(ws / "results/lifttiny/runs.csv")
    ev = json.loads((ws / "metrics/eval.json").read_text())
    for algo in ("ogpo+ca", "qc"):
        run = df[df.algo == algo]
        assert run.env_steps.tolist() == [0, 100, 200] and run.episodes.tolist() == [4, 2, 4]
        assert run.final.tolist() == [0, 0, 1]
        rec = json.loads((ws / f"results/lifttiny/runs/{algo}/seed0.json").read_text())
        assert rec["provenance"]["finetune"]["algo"] == algo and rec["gcp_kind"] == "flow"
    assert set(df[df.env_steps == 0].successes) == {ev["bc"]["successes"]}  # same BC, same 4 seeds
    assert (ws / "results/lifttiny/report.html").exists()
    assert not (ws / "results/lifttiny/work").exists() or not any((ws / "results/lifttiny/work").iterdir())
    assert (ws / "params.yaml").read_text() == before
