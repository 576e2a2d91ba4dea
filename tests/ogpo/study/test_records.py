"""Run records -> the study's runs table: step 0 is the shared start, the final evaluation stands at the budget."""

from __future__ import annotations

import json
import math

import pytest

from ogpo.errors import ConfigError
from ogpo.study import records
from ogpo.study.aggregate import validate_runs


def record(algo: str, seed: int, successes: list[int]) -> dict:
    curve = [{"env_steps": 1000 * (i + 1), "success": s / 64, "critic_loss": math.nan} for i, s in enumerate(successes)]
    return records.make_record(
        study="s", task="toy", algo=algo, seed=seed, gcp_kind="flow", budget=3000,
        start=records.evaluation(0, 200, 70), curve_evals=records.curve_evaluations(curve, 64),
        final=records.evaluation(3000, 200, 180), wall_time_s=12.5, curve=curve,
    )  # fmt: skip


def test_rows_start_at_the_bc_evaluation_and_end_at_the_final_one():
    rows = records.runs_rows([record("qc", 0, [20, 40, 60]), record("qc", 1, [10, 30, 50])])
    df = validate_runs(rows)  # the aggregation's own checks: unique points, final exactly on the last
    run0 = df[df.seed == 0]
    assert run0.env_steps.tolist() == [0, 1000, 2000, 3000]
    assert run0.episodes.tolist() == [200, 64, 64, 200]  # the trainer's 64-episode point at 3000 is replaced
    assert run0.successes.tolist() == [70, 20, 40, 180]
    assert run0.final.tolist() == [0, 0, 0, 1]


def test_records_round_trip_as_strict_json(tmp_path):
    path = records.write_record(records.record_path(tmp_path, "ogpo+ca", 2), record("ogpo+ca", 2, [1, 2, 3]))
    assert path == tmp_path / "runs" / "ogpo+ca" / "seed2.json"
    rec = records.read_record(path)
    assert rec["curve"][0]["critic_loss"] is None  # NaN (no update yet) is stored as null
    assert json.loads(path.read_text())["final"] == {"env_steps": 3000, "episodes": 200, "successes": 180}
    assert not list(path.parent.glob(".*"))  # no temp file left behind


def test_a_final_evaluation_off_the_budget_and_bad_files_are_errors(tmp_path):
    with pytest.raises(ValueError, match="not the budget"):
        records.make_record(study="s", task="toy", algo="qc", seed=0, gcp_kind="flow", budget=3000,
                            start=records.evaluation(0, 10, 1), curve_evals=[],
                            final=records.evaluation(2000, 10, 1), wall_time_s=1.0)  # fmt: skip
    with pytest.raises(ValueError):
        records.evaluation(1000, 10, 11)
    bad = tmp_path / "seed0.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a run record"):
        records.read_record(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not a readable run record"):
        records.read_record(bad)
