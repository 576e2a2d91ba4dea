"""The study report page: several algorithms x seeds on one task, as one self-contained HTML file.

Same machinery as the single-run page (``ogpo.report``): the jinja2 templates of ``ogpo/templates/``
(``study.html.j2`` extends the shared ``base.html.j2``) and the matplotlib figures of ``ogpo.plots``. Every
number comes from ``ogpo.study.aggregate`` (rliable's IQM, stratified-bootstrap CIs, performance profiles,
probability of improvement; Wilson intervals for single evaluations): this module computes no statistic of
its own, it only arranges them, so the page and ``summary.json`` cannot disagree.

The page shows: learning curves per method (IQM with its 95% CI band over seeds, and each seed as a thin
line), the env steps to 50/80/90% success (median over runs, censored runs counted as never reaching, with
CIs and the fraction of runs that reached), final IQM and mean success with CIs, performance profiles, the
probability of improving on a reference method, wall-clock per method, a per-run table and the provenance.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ogpo.plots import PALETTE, Interval, Series, interval_plot, line_plot
from ogpo.stats import wilson_interval
from ogpo.study.aggregate import (
    DEFAULT_LEVELS,
    DEFAULT_REFERENCE,
    DEFAULT_REPS,
    AlgoRuns,
    algo_runs,
    curve_table,
    level_label,
    summarize,
    validate_runs,
)
from ogpo.templating import markup, render


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _curves_plot(runs: Mapping[str, AlgoRuns], curves: pd.DataFrame, colors: Mapping[str, str]) -> str:
    series = []
    for algo, r in runs.items():
        for row in r.scores:  # one thin line per seed, under the aggregate
            series.append(
                Series(algo, r.env_steps.tolist(), row.tolist(), colors[algo], width=0.8, alpha=0.35, legend=False)
            )
    for algo, r in runs.items():
        c = curves[curves["algo"] == algo].sort_values("env_steps")
        series.append(
            Series(
                f"{algo} (IQM of {len(r.seeds)} seeds, 95% CI)",
                c["env_steps"].tolist(),
                c["iqm"].tolist(),
                colors[algo],
                band=(c["iqm_low"].tolist(), c["iqm_high"].tolist()),
                width=2.2,
            )
        )
    return line_plot(
        series,
        key="study-curves",
        title="Success vs environment steps (IQM over seeds; thin lines: single seeds)",
        x_label="online environment steps",
        y_label="success rate",
        y_range=(0.0, 1.0),
        percent=True,
        size=(11.0, 4.4),
    )


def _final_plot(summary: Mapping[str, Any], colors: Mapping[str, str]) -> str:
    panels: dict[str, list[Interval]] = {"IQM": [], "Mean": []}
    for algo, a in summary["algorithms"].items():
        f = a["final_success"]
        panels["IQM"].append(Interval(algo, f["iqm"], *f["iqm_ci"], colors[algo]))
        panels["Mean"].append(Interval(algo, f["mean"], *f["mean_ci"], colors[algo]))
    title = "Final success with 95% stratified-bootstrap CIs"
    return interval_plot(panels, key="study-final", title=title, x_label="success rate", width=11.0)


def _profile_plot(summary: Mapping[str, Any], colors: Mapping[str, str]) -> str:
    series = [
        Series(algo, p["tau"], p["fraction"], colors[algo], band=(p["ci_low"], p["ci_high"]))
        for algo, a in summary["algorithms"].items()
        for p in [a["performance_profile"]]
    ]
    return line_plot(
        series,
        key="study-profile",
        title="Performance profile of final success (95% CI bands)",
        x_label="success threshold τ",
        y_label="fraction of runs with final success > τ",
        y_range=(0.0, 1.0),
        percent=True,
        size=(7.0, 3.8),
    )


def _poi_plot(summary: Mapping[str, Any], reference: str, colors: Mapping[str, str]) -> str:
    rows = [
        Interval(algo, poi["value"], *poi["ci"], colors[algo])
        for algo, a in summary["algorithms"].items()
        if (poi := a["probability_of_improvement"]) is not None
    ]
    return interval_plot(
        {"": rows},
        key="study-poi",
        title=f"Probability of improvement over {reference} (95% CIs)",
        x_label=f"P(final success of method > {reference})",
        reference=0.5,
        width=7.0,
    )


def _steps_rows(summary: Mapping[str, Any], levels: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for algo, a in summary["algorithms"].items():
        cells = []
        for label in levels:
            s = a["steps_to"][label]
            cells.append(
                {
                    "median": s["median"],
                    "low": s["ci"][0],
                    "high": s["ci"][1],
                    "reached": s["reached"],
                    "runs": s["runs"],
                    "fraction": s["reached_fraction"],
                    "fraction_low": s["reached_fraction_ci"][0],
                    "fraction_high": s["reached_fraction_ci"][1],
                }
            )
        rows.append({"algo": algo, "cells": cells})
    return rows


def _wall_rows(
    runs: Mapping[str, AlgoRuns], wall_clock: Mapping[tuple[str, int], float] | None, notes: list[str]
) -> list[dict[str, Any]]:
    if wall_clock is None:
        notes.append("No wall-clock times were given: the wall-clock table is omitted.")
        return []
    rows, missing = [], []
    for algo, r in runs.items():
        seconds = [float(wall_clock[(algo, s)]) for s in r.seeds if (algo, s) in wall_clock]
        missing += [f"{algo} seed {s}" for s in r.seeds if (algo, s) not in wall_clock]
        seconds = [x for x in seconds if math.isfinite(x)]
        rows.append(
            {
                "algo": algo,
                "timed": len(seconds),
                "runs": len(r.seeds),
                "total": sum(seconds) if seconds else None,
                "mean": statistics.fmean(seconds) if seconds else None,
                "min": min(seconds) if seconds else None,
                "max": max(seconds) if seconds else None,
            }
        )
    if missing:
        notes.append(f"No wall-clock time for {len(missing)} run(s): {', '.join(missing)}.")
    return rows


def _run_rows(
    runs: Mapping[str, AlgoRuns],
    summary: Mapping[str, Any],
    levels: Sequence[str],
    wall_clock: Mapping[tuple[str, int], float] | None,
) -> list[dict[str, Any]]:
    rows = []
    for algo, r in runs.items():
        steps = summary["algorithms"][algo]["steps_to"]
        for i, seed in enumerate(r.seeds):
            k, n = int(r.successes[i, -1]), int(r.episodes[i, -1])
            lo, hi = wilson_interval(k, n)
            rows.append(
                {
                    "algo": algo,
                    "seed": seed,
                    "successes": k,
                    "episodes": n,
                    "success": k / n,
                    "low": lo,
                    "high": hi,
                    "env_steps": int(r.env_steps[-1]),
                    "steps": [steps[label]["per_seed"][i] for label in levels],  # None: never reached
                    "wall": None if wall_clock is None else wall_clock.get((algo, seed)),
                }
            )
    return rows


def build_study_report(
    runs: pd.DataFrame | list[dict[str, Any]],
    *,
    title: str,
    provenance: Mapping[str, str],
    wall_clock: Mapping[tuple[str, int], float] | None = None,
    reference: str | None = DEFAULT_REFERENCE,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    generated_at: str | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> str:
    """Render a one-task study's runs table (``ogpo.study.aggregate.COLUMNS``) as a self-contained HTML page.

    ``provenance`` (git rev, study spec text, data hash, CPU/GPU model, ...) is shown as given, in order;
    multi-line values as preformatted blocks. ``wall_clock`` maps (algo, seed) to the run's seconds. When
    ``reference`` has no runs in the table (or is None), the probability-of-improvement plot is skipped with a
    note. ``reps`` and ``seed`` are the bootstrap's (see ``ogpo.study.aggregate``); ``generated_at`` fixes the
    timestamp for byte-reproducible output. Raises ConfigError for an invalid table (from ``validate_runs``).
    """
    df = validate_runs(runs)
    by_algo = algo_runs(df)
    notes: list[str] = []
    ref = reference if reference in by_algo else None
    if reference is not None and ref is None:
        notes.append(
            f"The reference method {reference!r} has no runs in this study (methods: {', '.join(by_algo)}): "
            "the probability-of-improvement plot is skipped."
        )
    elif ref is not None and len(by_algo) == 1:
        notes.append(f"Only the reference method {ref!r} ran: there is nothing to compare it with.")
    summary = summarize(df, ref, reps, seed, levels=levels)
    curves = curve_table(df, reps, seed)
    labels = [level_label(x) for x in summary["levels"]]
    colors = {algo: _color(i) for i, algo in enumerate(by_algo)}
    has_poi = ref is not None and len(by_algo) > 1
    finals = [
        {
            "algo": algo,
            "seeds": a["n_seeds"],
            "env_steps": a["final_env_steps"],
            **a["final_success"],
            "poi": a["probability_of_improvement"],
        }
        for algo, a in summary["algorithms"].items()
    ]
    context = {
        "title": title,
        "generated_at": generated_at or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "task": summary["task"],
        "reference": ref,
        "levels": labels,
        "cards": [
            ("Task", summary["task"], "one task per study"),
            ("Methods", str(len(by_algo)), ", ".join(by_algo)),
            ("Runs", str(sum(len(r.seeds) for r in by_algo.values())), "method × seed"),
            ("Budget", f"{max(int(r.env_steps[-1]) for r in by_algo.values()):,}", "env steps at the final evaluation"),
        ],
        "curves_svg": markup(_curves_plot(by_algo, curves, colors)),
        "steps": _steps_rows(summary, labels),
        "finals": finals,
        "final_svg": markup(_final_plot(summary, colors)),
        "profile_svg": markup(_profile_plot(summary, colors)),
        "poi_svg": markup(_poi_plot(summary, ref, colors)) if has_poi else None,
        "wall": _wall_rows(by_algo, wall_clock, notes),
        "per_run": _run_rows(by_algo, summary, labels, wall_clock),
        "has_wall": wall_clock is not None,
        "bootstrap": summary["bootstrap"],
        "provenance": [(str(k), "—" if v is None or str(v) == "" else str(v), False) for k, v in provenance.items()],
        "notes": notes,
    }
    return render("study.html.j2", **context)
