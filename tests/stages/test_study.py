"""A tiny toy study through `dvc repro` in a temporary git repo (slow: real BC and fine-tuning, ~1 min).

Checks: `python -m stages.study new` writes a study DVC runs as check -> start -> one stage per (algo, seed) ->
aggregate; runs.csv, summary.json and report.html come out; adding a seed runs only that seed's runs (and the
aggregate); a bad edit of the study file stops at the check stage with one line, every run's output intact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ogpo.study.aggregate import read_runs_csv
from tests.stages.test_pipeline_tiny import ROOT, ran_stages, sh

pytestmark = pytest.mark.slow

STUDY = "studies/tiny/study.yaml"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("study")
    for d in ("ogpo", "stages", "scripts", "studies/templates"):
        shutil.copytree(ROOT / d, ws / d, ignore=shutil.ignore_patterns("__pycache__"))
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    sh(ws, "dvc", "config", "core.analytics", "false")
    out = sh(ws, "python", "-m", "stages.study", "new", "tiny", "--task", "toy", "--algos", "ogpo+ca,qc",
             "--seeds", "0,1", "--budget", "1280", "--eval-every", "640")  # fmt: skip
    assert "studies/tiny" in out
    doc = yaml.safe_load((ws / STUDY).read_text())
    doc["study"] |= {"eval_episodes": 16, "final_episodes": 32}
    (ws / STUDY).write_text(yaml.safe_dump(doc, sort_keys=False))
    return ws


def _outputs(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted((ws / "results").rglob("*")) if p.is_file()}


def test_a_study_runs_every_algo_and_seed_then_adding_a_seed_runs_only_it(ws: Path):
    out = sh(ws, "dvc", "repro", "studies/tiny/dvc.yaml")
    runs = ["run@ogpo+ca-0", "run@ogpo+ca-1", "run@qc-0", "run@qc-1"]
    ran = [s.split(":")[-1] for s in ran_stages(out)]
    assert ran[:2] == ["check", "start"] and sorted(ran[2:-1]) == runs and ran[-1] == "aggregate", out
    res = ws / "results/tiny"
    df = read_runs_csv(res / "runs.csv")
    assert sorted(set(zip(df.algo, df.seed, strict=True))) == [("ogpo+ca", 0), ("ogpo+ca", 1), ("qc", 0), ("qc", 1)]
    for _, run in df.groupby(["algo", "seed"]):
        assert run.env_steps.iloc[0] == 0 and run.env_steps.iloc[-1] == 1280
        assert run.final.tolist()[-1] == 1 and sum(run.final) == 1
        assert run.episodes.iloc[0] == 32 and run.episodes.iloc[-1] == 32 and set(run.episodes.iloc[1:-1]) == {16}
    start = json.loads((res / "start/start.json").read_text())["start"]
    assert set(df[df.env_steps == 0].successes) == {start["successes"]}  # one shared BC start
    summary = json.loads((res / "summary.json").read_text())
    assert list(summary["algorithms"]) == ["ogpo+ca", "qc"]
    assert summary["algorithms"]["qc"]["probability_of_improvement"] is not None
    assert summary["wall_time_s"]["qc"] and all(t > 0 for t in summary["wall_time_s"]["qc"])
    html = (res / "report.html").read_text()
    assert "ogpo+ca" in html and "qc" in html and "<svg" in html
    status = sh(ws, "python", "-m", "stages.study", "status", STUDY)
    assert "4/4 runs done" in status

    before = {p: b for p, b in _outputs(ws).items() if "/runs/" in p}
    doc = yaml.safe_load((ws / STUDY).read_text())
    doc["study"]["seeds"] = [0, 1, 2]
    (ws / STUDY).write_text(yaml.safe_dump(doc, sort_keys=False))
    out = sh(ws, "dvc", "repro", "studies/tiny/dvc.yaml")
    ran = [s.split(":")[-1] for s in ran_stages(out)]
    assert ran[0] == "check" and sorted(ran[1:-1]) == ["run@ogpo+ca-2", "run@qc-2"] and ran[-1] == "aggregate", out
    assert {p: b for p, b in _outputs(ws).items() if p in before} == before  # finished runs untouched
    assert set(read_runs_csv(res / "runs.csv").seed) == {0, 1, 2}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(eval_every=5000), "eval_every 5000 is past the budget 1280"),
        (lambda s: s.update(algorithms=["ogpo+ca", "qc", "dppo"], overrides=s["overrides"] | {"dppo": {}}),
         "dppo cannot fine-tune a flow GCP"),
        (lambda s: s["overrides"].update(qc={"G": 3}), "overrides.qc.G is not an option of qc"),
    ],
)  # fmt: skip
def test_a_bad_study_edit_stops_at_the_check_with_one_line(ws: Path, change, message):
    sh(ws, "dvc", "repro", "studies/tiny/dvc.yaml")  # up to date first
    before = _outputs(ws)
    original = (ws / STUDY).read_text()
    doc = yaml.safe_load(original)
    change(doc["study"])
    (ws / STUDY).write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        res = subprocess.run(["dvc", "repro", "studies/tiny/dvc.yaml"], cwd=ws, capture_output=True, text=True,
                             env=_env(), timeout=300)  # fmt: skip
        text = res.stdout + res.stderr
        assert res.returncode != 0 and message in text and "Traceback" not in text, text[-3000:]
        assert [s.split(":")[-1] for s in ran_stages(res.stdout)] == ["check"], res.stdout
        assert {p: b for p, b in _outputs(ws).items() if "checked.ok" not in p} == {
            p: b for p, b in before.items() if "checked.ok" not in p
        }
    finally:
        (ws / STUDY).write_text(original)


def test_unknown_algorithm_and_zero_seeds_are_refused_before_any_file_is_written(tmp_path):
    for args, message in [
        (["--algos", "ogpo+ca,sac9"], "'sac9' not registered"),
        (["--seeds", ""], "seeds must list at least one seed"),
    ]:
        res = subprocess.run(["python", "-m", "stages.study", "new", "bad", "--task", "toy", *args], cwd=tmp_path,
                             capture_output=True, text=True, env=_env())  # fmt: skip
        assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "studies").exists()


def _env() -> dict[str, str]:
    from tests.stages.test_pipeline_tiny import _env as env

    return env()
