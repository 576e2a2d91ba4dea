"""dvclive output: numbers only, the curve as given, idempotent (a resumed run writes what a whole one does)."""

from __future__ import annotations

import json
import math

from stages.live import numbers_only, write_live


def test_numbers_only_keeps_finite_numeric_leaves():
    got = numbers_only({"algo": "qc", "n": 4, "ok": True, "x": math.nan, "bc": {"success": 0.5, "videos": ["a"]}})
    assert got == {"n": 4, "bc": {"success": 0.5}}


def test_write_live_is_the_curve_and_summary_and_rewrites_from_scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"env_steps": 100, "success": 0.25, "critic_loss": math.nan}, {"env_steps": 200, "success": 0.5,
                                                                          "critic_loss": 2.0}]  # fmt: skip
    write_live("finetune", rows[:1], "env_steps")
    d = write_live("finetune", rows, "env_steps", {"final_success": 0.5, "device": "cpu", "updates": 9})
    assert json.loads((d / "metrics.json").read_text()) == {"final_success": 0.5, "updates": 9, "step": 200}
    assert (d / "plots/metrics/success.tsv").read_text().splitlines() == ["step\tsuccess", "100\t0.25", "200\t0.5"]
    assert (d / "plots/metrics/critic_loss.tsv").read_text().splitlines() == ["step\tcritic_loss", "200\t2.0"]
    (d / "plots/.gitignore").write_text("/metrics\n")  # what DVC writes for the cached plots directory
    once = {p.name: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    write_live("finetune", rows[:1], "env_steps")
    write_live("finetune", rows, "env_steps", {"final_success": 0.5, "device": "cpu", "updates": 9})
    assert {p.name: p.read_bytes() for p in d.rglob("*") if p.is_file()} == once  # .gitignore kept
    assert not (tmp_path / "dvc.yaml").exists() and not list(tmp_path.glob("*.html"))  # no dvc.yaml, no report


def test_write_live_without_a_curve_leaves_the_declared_plots_directory(tmp_path, monkeypatch):
    """The CPU profile's critic (``mode: none``) logs no curve; dvc.yaml still declares its plots directory."""
    monkeypatch.chdir(tmp_path)
    d = write_live("fit_critic", [], "step", {"updates": 0})
    assert (d / "plots/metrics").is_dir() and not list((d / "plots/metrics").iterdir())
    assert json.loads((d / "metrics.json").read_text()) == {"updates": 0}
