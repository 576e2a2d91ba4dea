"""Aggregate a study's runs table with ``rliable``: IQM/mean with stratified-bootstrap CIs, steps-to-X, profiles.

Input is the runs table of ``results/<study>/runs.csv``: one row per (task, algo, seed, env_steps) evaluation
with the columns :data:`COLUMNS` (``final`` is 1 on a run's last evaluation, 0 otherwise), as a pandas
DataFrame or a list of dicts. Everything here is a pure function of that table (plus ``reps`` and ``seed``).

Statistics (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"), all from ``rliable``:

- IQM and mean success over seeds, with 95% percentile stratified-bootstrap CIs
  (``library.get_interval_estimates`` with ``metrics.aggregate_iqm`` / ``metrics.aggregate_mean``), at each
  evaluation point (:func:`curve_table`) and for the final evaluation (:func:`summarize`).
- Performance profiles of final success (``library.create_performance_profile``): the fraction of runs whose
  final success is *strictly above* each threshold tau, with CIs.
- Probability of improvement of each algorithm over a reference one (``metrics.probability_of_improvement``
  through ``get_interval_estimates`` on the paired score list ``[scores_algo, scores_reference]``, which
  resamples the two algorithms' seeds independently): P(final success of algo > reference), ties count 1/2.
- Steps to X% success (:func:`steps_to`): for each run, the first evaluated env step whose success rate is
  >= X (``ogpo.stats.steps_to_reach``); a run that never gets there is censored at +inf. The estimator is
  the *first env step by which at least half of the runs reached X* (the lower median of the per-run
  steps, ``sorted[ceil(n/2) - 1]``, with +inf for censored runs). All runs share one censoring point (the
  budget), so this is the Kaplan-Meier median; it is +inf when fewer than half the runs reached X, and it
  is always one of the evaluated steps (no averaging of steps across runs). Its 95% CI is the percentile
  stratified bootstrap over seeds of the same statistic; a bound of +inf means "not reached within the
  budget". The fraction of runs that reached X is reported with its Wilson interval.
- Wilson intervals for every evaluation point of every run (:func:`point_intervals`,
  ``ogpo.stats.wilson_interval``): the binomial uncertainty of one evaluation over its episodes.

Reproducibility: rliable 1.2.0 draws its bootstrap resamples from numpy's *global* RNG (``np.random.choice``;
its ``random_state`` argument only reaches ``arch`` and does not affect the resamples). Every bootstrap here
therefore seeds the global RNG with a seed derived from ``seed`` and the statistic's name and algorithm
(so adding an algorithm to a study does not change the others' intervals), and restores the caller's global
RNG state afterwards. Not thread-safe: do not run two aggregations concurrently in one process.

One task per aggregation: a study is one task; pass the rows of one task at a time. ``summary.json`` is strict
JSON: +inf (not reached) is written as ``null``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import numbers
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rliable import library as rly
from rliable import metrics as rlm

from ogpo.errors import ConfigError
from ogpo.stats import steps_to_reach, wilson_interval

COLUMNS: tuple[str, ...] = ("task", "algo", "seed", "env_steps", "episodes", "successes", "success_rate", "final")
DEFAULT_REFERENCE = "ogpo+ca"
DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9)
# 2,000 resamples: the Monte Carlo error of a 2.5%/97.5% percentile bound is then a few tenths of a percentile
# point (sd of the empirical quantile's rank ~ sqrt(0.025 * 0.975 / 2000) = 0.35%), far below the seed noise of
# 3-5 seeds. rliable's own default (50,000) costs minutes per study here for no visible change.
DEFAULT_REPS = 2000
CONFIDENCE = 0.95
DEFAULT_TAUS: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 21), 10))
# success_rate must equal successes / episodes within this (absolute): write_runs_csv writes repr(float).
SUCCESS_RATE_TOL = 1e-6
SUMMARY_SCHEMA = "ogpo.study.summary/1"
# Stand-in for +inf (a censored run) inside the bootstrap: numpy's percentile interpolation turns inf into nan.
_CENSORED = 1e300

_INT_COLUMNS = ("seed", "env_steps", "episodes", "successes", "final")


# --------------------------------------------------------------------------------------------- validation
def _fail(where: str, column: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}, column {column!r}: {problem}")


def _to_int(value: Any, where: str, column: str) -> int:
    if isinstance(value, bool | np.bool_):
        raise _fail(where, column, f"expected an integer, got the boolean {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise _fail(where, column, f"expected an integer, got {value!r}") from None
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise _fail(where, column, f"expected an integer, got {value!r}")


def _to_float(value: Any, where: str, column: str) -> float:
    if isinstance(value, bool | np.bool_):
        raise _fail(where, column, f"expected a number, got the boolean {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(where, column, f"expected a number, got {value!r}") from None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(where, column, f"expected a finite number, got {value!r}")
    return float(value)


def _to_name(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, column, f"expected a non-empty name, got {value!r}")
    if value != value.strip():
        raise _fail(where, column, f"name {value!r} has leading or trailing whitespace")
    return value


def _check_columns(columns: Iterable[str], where: str) -> None:
    columns = list(columns)
    missing = [c for c in COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in COLUMNS]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if unknown:
        problems.append(f"unknown columns {unknown}")
    if duplicated:
        problems.append(f"duplicated columns {duplicated}")
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)} (a runs table has exactly the columns {list(COLUMNS)})")


def _parse_row(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"task": _to_name(row["task"], where, "task"), "algo": _to_name(row["algo"], where, "algo")}
    for column in _INT_COLUMNS:
        out[column] = _to_int(row[column], where, column)
    out["success_rate"] = _to_float(row["success_rate"], where, "success_rate")
    if out["seed"] < 0:
        raise _fail(where, "seed", f"must be >= 0, got {out['seed']}")
    if out["env_steps"] < 0:
        raise _fail(where, "env_steps", f"must be >= 0, got {out['env_steps']}")
    if out["episodes"] < 1:
        raise _fail(where, "episodes", f"an evaluation needs at least one episode, got {out['episodes']}")
    if not 0 <= out["successes"] <= out["episodes"]:
        raise _fail(where, "successes", f"{out['successes']} successes out of {out['episodes']} episodes")
    if out["final"] not in (0, 1):
        raise _fail(where, "final", f"must be 0 or 1, got {out['final']}")
    rate = out["successes"] / out["episodes"]
    if abs(out["success_rate"] - rate) > SUCCESS_RATE_TOL:
        raise _fail(
            where,
            "success_rate",
            f"{out['success_rate']!r} disagrees with successes / episodes = "
            f"{out['successes']}/{out['episodes']} = {rate!r}",
        )
    return out


def _check_table(records: list[dict[str, Any]], wheres: list[str], source: str) -> None:
    """Table-level checks: no duplicate evaluation, and ``final`` = 1 exactly on each run's last evaluation."""
    if not records:
        raise ConfigError(f"{source}: the runs table has no rows (zero runs)")
    seen: dict[tuple, str] = {}
    runs: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        key = (r["task"], r["algo"], r["seed"], r["env_steps"])
        if key in seen:
            raise ConfigError(
                f"{wheres[i]}: duplicate evaluation (task={key[0]!r}, algo={key[1]!r}, seed={key[2]}, "
                f"env_steps={key[3]}), already at {seen[key]}"
            )
        seen[key] = wheres[i]
        runs.setdefault(key[:3], []).append(i)
    for (task, algo, seed), idx in runs.items():
        last = max(idx, key=lambda i: records[i]["env_steps"])
        finals = [i for i in idx if records[i]["final"] == 1]
        run = f"run (task={task!r}, algo={algo!r}, seed={seed})"
        if finals != [last]:
            where = wheres[finals[0]] if finals and finals[0] != last else wheres[last]
            raise _fail(
                where,
                "final",
                f"{run}: final must be 1 exactly on its last evaluation (env_steps="
                f"{records[last]['env_steps']}), found final=1 at env_steps "
                f"{sorted(records[i]['env_steps'] for i in finals)}",
            )


def _records(rows: Any, source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(parsed records, a location per record) from a DataFrame or an iterable of mappings."""
    if isinstance(rows, pd.DataFrame):
        _check_columns(rows.columns, source)
        raw = rows.to_dict("records")
    elif isinstance(rows, str | bytes | os.PathLike):
        raise ConfigError(f"{source}: expected a DataFrame or a list of dicts, got a path; use read_runs_csv")
    elif isinstance(rows, Iterable):
        raw = list(rows)
        for i, row in enumerate(raw):
            if not isinstance(row, Mapping):
                raise ConfigError(f"{source} row {i}: expected a mapping of column -> value, got {type(row).__name__}")
            _check_columns(row.keys(), f"{source} row {i}")
    else:
        raise ConfigError(f"{source}: expected a DataFrame or a list of dicts, got {type(rows).__name__}")
    wheres = [f"{source} row {i}" for i in range(len(raw))]
    return [_parse_row(r, w) for r, w in zip(raw, wheres, strict=True)], wheres


def _frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return df.astype({c: "int64" for c in _INT_COLUMNS} | {"success_rate": "float64"})


def validate_runs(rows: Any, source: str = "runs table") -> pd.DataFrame:
    """Check a runs table (DataFrame or list of dicts) and return it as a DataFrame with canonical types.

    Raises ConfigError naming the row and column for: missing/unknown columns, values of the wrong type or
    out of range (successes > episodes, episodes < 1, success_rate != successes / episodes, ...), duplicate
    evaluations, and ``final`` not set exactly on each run's last evaluation.
    """
    records, wheres = _records(rows, source)
    _check_table(records, wheres, source)
    return _frame(records)


def read_runs_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate ``results/<study>/runs.csv``; errors name the file, line and column."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}: empty file (expected a header with the columns {list(COLUMNS)})")
            header = [h.strip() for h in header]
            _check_columns(header, f"{path}: header")
            records, wheres = [], []
            for fields in reader:
                if not fields or all(not x.strip() for x in fields):
                    continue
                where = f"{path}: line {reader.line_num}"
                if len(fields) != len(header):
                    raise ConfigError(f"{where}: {len(fields)} fields, the header has {len(header)}")
                records.append(_parse_row(dict(zip(header, fields, strict=True)), where))
                wheres.append(where)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the runs table: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable CSV file: {exc}") from exc
    _check_table(records, wheres, str(path))
    return _frame(records)


def write_runs_csv(rows: Any, path: str | os.PathLike[str]) -> Path:
    """Validate a runs table and write it as CSV (sorted by task, algo, seed, env_steps), atomically.

    success_rate is written with ``repr`` so that reading it back gives the same float.
    """
    path = Path(path)
    df = validate_runs(rows, source=f"runs table for {path}")
    df = df.sort_values(["task", "algo", "seed", "env_steps"], kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in df.itertuples(index=False):
            writer.writerow(
                [r.task, r.algo, r.seed, r.env_steps, r.episodes, r.successes, repr(float(r.success_rate)), r.final]
            )
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------- per-algorithm data
@dataclass(frozen=True)
class AlgoRuns:
    """One algorithm's runs on one task, as dense arrays (seeds x evaluation points)."""

    algo: str
    seeds: tuple[int, ...]
    env_steps: np.ndarray  # (points,), increasing, shared by all seeds
    successes: np.ndarray  # (seeds, points) int
    episodes: np.ndarray  # (seeds, points) int
    scores: np.ndarray  # (seeds, points) success rate = successes / episodes

    @property
    def final_scores(self) -> np.ndarray:
        """(seeds,) success at each run's last evaluation (``final`` = 1)."""
        return self.scores[:, -1]


@dataclass(frozen=True)
class _Table:
    task: str
    algos: dict[str, AlgoRuns]


def _table(rows: Any, algos: Sequence[str] | None) -> _Table:
    df = validate_runs(rows)
    tasks = list(dict.fromkeys(df["task"]))
    if len(tasks) != 1:
        raise ConfigError(f"aggregation is per task (a study has one task), but the runs table has tasks {tasks}")
    present = list(dict.fromkeys(df["algo"]))
    if algos is None:
        algos = present
    else:
        if isinstance(algos, str):
            raise ConfigError(f"algos must be a list of algorithm names, got the string {algos!r}")
        algos = list(algos)
        if not algos:
            raise ConfigError("algos is empty: name at least one algorithm")
        absent = [a for a in algos if a not in present]
        if absent:
            raise ConfigError(f"algorithms {absent} have no runs (zero seeds) in the table; it has {present}")
    out = {}
    for algo in algos:
        sub = df[df["algo"] == algo]
        by_seed = {int(s): g.sort_values("env_steps") for s, g in sub.groupby("seed", sort=True)}
        seeds = tuple(by_seed)
        points = {s: tuple(int(x) for x in g["env_steps"]) for s, g in by_seed.items()}
        first = seeds[0]
        for s in seeds[1:]:
            if points[s] != points[first]:
                missing = sorted(set(points[first]) - set(points[s]))
                extra = sorted(set(points[s]) - set(points[first]))
                raise ConfigError(
                    f"algorithm {algo!r}: seed {s} is evaluated at different env_steps than seed {first} "
                    f"(seed {s} lacks {missing}, has extra {extra}); every seed of an algorithm needs the same "
                    f"evaluation points"
                )
        succ = np.array([g["successes"].to_numpy() for g in by_seed.values()], dtype=np.int64)
        eps = np.array([g["episodes"].to_numpy() for g in by_seed.values()], dtype=np.int64)
        out[algo] = AlgoRuns(
            algo=algo,
            seeds=seeds,
            env_steps=np.array(points[first], dtype=np.int64),
            successes=succ,
            episodes=eps,
            scores=succ / eps,
        )
    return _Table(task=tasks[0], algos=out)


def algo_runs(rows: Any, algos: Sequence[str] | None = None) -> dict[str, AlgoRuns]:
    """Validate a one-task runs table and return each algorithm's runs as arrays (seeds x evaluation points)."""
    return _table(rows, algos).algos


# --------------------------------------------------------------------------------------------- bootstrap plumbing
def _check_params(reps: int, seed: int) -> None:
    if not isinstance(reps, numbers.Integral) or isinstance(reps, bool) or reps < 1:
        raise ConfigError(f"reps must be an integer >= 1, got {reps!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def derived_seed(seed: int, label: str) -> int:
    """The global-RNG seed used for one statistic (``label``, e.g. ``"final/ogpo"``) of an aggregation."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(label.encode())]).generate_state(1)[0])


@contextlib.contextmanager
def _global_rng(seed: int, label: str) -> Iterator[None]:
    """Seed numpy's global RNG (rliable resamples with np.random.choice) and restore the caller's state after."""
    state = np.random.get_state()
    np.random.seed(derived_seed(seed, label))
    try:
        yield
    finally:
        np.random.set_state(state)


def _interval(scores: Any, func: Any, reps: int, seed: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """rliable's percentile stratified bootstrap for one algorithm: (point estimate, (2, ...) CI array)."""
    with _global_rng(seed, label):
        point, ci = rly.get_interval_estimates(
            {"x": scores}, func, method="percentile", reps=reps, confidence_interval_size=CONFIDENCE
        )
    return np.asarray(point["x"], dtype=float), np.asarray(ci["x"], dtype=float)


def _iqm_mean_per_point(scores: np.ndarray) -> np.ndarray:
    """[IQM at each point..., mean at each point...] for scores of shape (runs, tasks, points)."""
    n = scores.shape[-1]
    iqm = [rlm.aggregate_iqm(scores[..., j]) for j in range(n)]
    mean = [rlm.aggregate_mean(scores[..., j]) for j in range(n)]
    return np.array(iqm + mean, dtype=float)


def _iqm_mean(scores: np.ndarray) -> np.ndarray:
    """[IQM, mean] of scores of shape (runs, tasks)."""
    return np.array([rlm.aggregate_iqm(scores), rlm.aggregate_mean(scores)], dtype=float)


# --------------------------------------------------------------------------------------------- statistics
def point_intervals(rows: Any) -> pd.DataFrame:
    """The runs table with a 95% Wilson interval per evaluation (columns ``wilson_low``, ``wilson_high``)."""
    df = validate_runs(rows)
    bounds = [wilson_interval(int(k), int(n)) for k, n in zip(df["successes"], df["episodes"], strict=True)]
    df["wilson_low"] = [b[0] for b in bounds]
    df["wilson_high"] = [b[1] for b in bounds]
    return df


def curve_table(
    rows: Any, reps: int = DEFAULT_REPS, seed: int = 0, *, algos: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per (algo, env_steps): IQM and mean success over seeds with 95% stratified-bootstrap CIs, for plotting.

    Columns: task, algo, env_steps, n_seeds, iqm, iqm_low, iqm_high, mean, mean_low, mean_high. One bootstrap
    per algorithm over its (seeds, 1, points) scores; each point's CI is that point's marginal bootstrap CI.
    Cost ~ reps x points x 0.3 ms per algorithm (scipy's trim_mean dominates).
    """
    _check_params(reps, seed)
    table = _table(rows, algos)
    out = []
    for algo, runs in table.algos.items():
        n = len(runs.env_steps)
        point, ci = _interval(runs.scores[:, None, :], _iqm_mean_per_point, reps, seed, f"curve/{algo}")
        for j, step in enumerate(runs.env_steps):
            out.append(
                {
                    "task": table.task,
                    "algo": algo,
                    "env_steps": int(step),
                    "n_seeds": len(runs.seeds),
                    "iqm": point[j],
                    "iqm_low": ci[0, j],
                    "iqm_high": ci[1, j],
                    "mean": point[n + j],
                    "mean_low": ci[0, n + j],
                    "mean_high": ci[1, n + j],
                }
            )
    return pd.DataFrame(out)


def final_success(runs: AlgoRuns, reps: int = DEFAULT_REPS, seed: int = 0) -> dict[str, Any]:
    """IQM and mean of final success over seeds, each with its 95% stratified-bootstrap CI."""
    _check_params(reps, seed)
    point, ci = _interval(runs.final_scores[:, None], _iqm_mean, reps, seed, f"final/{runs.algo}")
    return {
        "iqm": float(point[0]),
        "iqm_ci": [float(ci[0, 0]), float(ci[1, 0])],
        "mean": float(point[1]),
        "mean_ci": [float(ci[0, 1]), float(ci[1, 1])],
    }


def first_steps(runs: AlgoRuns, level: float) -> np.ndarray:
    """(seeds,) first evaluated env step with success >= level for each run; +inf when it never gets there."""
    out = []
    for row in runs.scores:
        step = steps_to_reach(runs.env_steps.tolist(), row.tolist(), level)
        out.append(math.inf if step is None else float(step))
    return np.array(out, dtype=float)


def _lower_median(steps: np.ndarray) -> np.ndarray:
    """First value by which at least half of the runs are done: sorted[ceil(n/2) - 1] along axis 0."""
    n = steps.shape[0]
    return np.sort(steps, axis=0)[(n + 1) // 2 - 1].reshape(-1)


def steps_to(
    runs: AlgoRuns, levels: Sequence[float] = DEFAULT_LEVELS, reps: int = DEFAULT_REPS, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Steps to each success level: median (lower median, +inf censored) with bootstrap CI, and reached fraction.

    Keys are level labels ("50%", ...). Values use +inf (math.inf) for "not reached"; see the module docstring
    for the estimator. One bootstrap over seeds for all levels (each level's CI is its marginal CI).
    """
    _check_params(reps, seed)
    levels = _check_levels(levels)
    steps = np.stack([first_steps(runs, level) for level in levels], axis=-1)  # (seeds, levels)
    coded = np.where(np.isfinite(steps), steps, _CENSORED)[:, None, :]  # (seeds, 1, levels)
    point, ci = _interval(coded, _lower_median, reps, seed, f"steps/{runs.algo}")
    last = float(runs.env_steps[-1])

    def decode(x: float) -> float:
        # Bootstrap percentiles interpolate between neighbouring replicates; anything past the last evaluated
        # step involves a censored run, i.e. "not reached within the budget".
        return math.inf if x > last else float(x)

    out = {}
    n = len(runs.seeds)
    for j, level in enumerate(levels):
        reached = int(np.isfinite(steps[:, j]).sum())
        out[level_label(level)] = {
            "level": level,
            "median": decode(point[j]),
            "ci": [decode(ci[0, j]), decode(ci[1, j])],
            "reached": reached,
            "runs": n,
            "reached_fraction": reached / n,
            "reached_fraction_ci": list(wilson_interval(reached, n)),
            "per_seed": [float(x) for x in steps[:, j]],
        }
    return out


def probability_of_improvement(
    runs: AlgoRuns, reference: AlgoRuns, reps: int = DEFAULT_REPS, seed: int = 0
) -> dict[str, Any]:
    """P(final success of ``runs`` > that of ``reference``) over seeds (ties count 1/2) with its 95% CI."""
    _check_params(reps, seed)
    scores = [runs.final_scores[:, None], reference.final_scores[:, None]]
    point, ci = _interval(scores, rlm.probability_of_improvement, reps, seed, f"poi/{runs.algo}/{reference.algo}")
    lo, hi = ci.reshape(2)  # (2, 1): one aggregate over the single task
    return {"over": reference.algo, "value": float(point.reshape(())), "ci": [float(lo), float(hi)]}


def performance_profile(
    runs: AlgoRuns, taus: Sequence[float] = DEFAULT_TAUS, reps: int = DEFAULT_REPS, seed: int = 0
) -> dict[str, list[float]]:
    """rliable score distribution of final success: fraction of runs with final success > tau, with 95% CIs."""
    _check_params(reps, seed)
    tau = np.asarray(list(taus), dtype=float)
    if tau.ndim != 1 or tau.size == 0 or not np.all(np.isfinite(tau)):
        raise ConfigError(f"taus must be a non-empty list of finite thresholds, got {list(taus)!r}")
    with _global_rng(seed, f"profile/{runs.algo}"):
        profile, ci = rly.create_performance_profile(
            {"x": runs.final_scores[:, None]}, tau, reps=reps, confidence_interval_size=CONFIDENCE
        )
    return {
        "tau": [float(t) for t in tau],
        "fraction": [float(x) for x in profile["x"]],
        "ci_low": [float(x) for x in ci["x"][0]],
        "ci_high": [float(x) for x in ci["x"][1]],
    }


def performance_profiles(
    rows: Any,
    taus: Sequence[float] = DEFAULT_TAUS,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    *,
    algos: Sequence[str] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Performance profile of final success for each algorithm of a runs table."""
    return {a: performance_profile(r, taus, reps, seed) for a, r in _table(rows, algos).algos.items()}


def level_label(level: float) -> str:
    """0.5 -> "50%", 0.333 -> "33.3%"."""
    return f"{level * 100:g}%"


def _check_levels(levels: Sequence[float]) -> list[float]:
    if isinstance(levels, str) or not isinstance(levels, Iterable):
        raise ConfigError(f"levels must be a list of success rates in (0, 1], got {levels!r}")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level <= 1:
            raise ConfigError(f"levels must be success rates in (0, 1], got {level!r}")
        out.append(float(level))
    if not out or len({level_label(x) for x in out}) != len(out):
        raise ConfigError(f"levels must be a non-empty list of distinct success rates, got {list(levels)!r}")
    return out


# --------------------------------------------------------------------------------------------- summary
def summarize(
    rows: Any,
    reference: str | None = DEFAULT_REFERENCE,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    taus: Sequence[float] = DEFAULT_TAUS,
    algos: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The content of ``summary.json`` for a one-task runs table (strict JSON: +inf is written as null).

    Per algorithm (in ``algos`` order, else in order of first appearance): seeds, final env step, per-seed
    final success, IQM and mean of final success with 95% CIs, steps to each level with CIs and the fraction
    of runs that reached it, the probability of improving on ``reference`` with its CI (null for the
    reference itself, or everywhere when ``reference`` is None), and the performance profile.
    """
    _check_params(reps, seed)
    levels = _check_levels(levels)
    table = _table(rows, algos)
    if reference is not None and reference not in table.algos:
        raise ConfigError(
            f"reference algorithm {reference!r} has no runs in the table (algorithms: {list(table.algos)}); "
            f"pass another reference, or reference=None to skip the probability of improvement"
        )
    out_algos = {}
    for algo, runs in table.algos.items():
        poi = None
        if reference is not None and algo != reference:
            poi = probability_of_improvement(runs, table.algos[reference], reps, seed)
        out_algos[algo] = {
            "n_seeds": len(runs.seeds),
            "seeds": list(runs.seeds),
            "final_env_steps": int(runs.env_steps[-1]),
            "evaluation_points": len(runs.env_steps),
            "final_success_per_seed": [float(x) for x in runs.final_scores],
            "final_success": final_success(runs, reps, seed),
            "steps_to": steps_to(runs, levels, reps, seed),
            "probability_of_improvement": poi,
            "performance_profile": performance_profile(runs, taus, reps, seed),
        }
    summary = {
        "schema": SUMMARY_SCHEMA,
        "task": table.task,
        "reference": reference,
        "levels": levels,
        "confidence": CONFIDENCE,
        "bootstrap": {
            "method": "percentile, stratified over seeds (rliable.library.get_interval_estimates)",
            "reps": int(reps),
            "seed": int(seed),
            "rng": "numpy global RNG seeded per statistic and algorithm from `seed`, caller's state restored",
            "rliable": metadata.version("rliable"),
        },
        "estimators": {
            "final_success": "IQM (rliable.metrics.aggregate_iqm) and mean over seeds of the final evaluation",
            "steps_to": "first env step by which at least half of the runs reached the level (lower median of "
            "per-run first steps, censored runs = +inf = null); fraction reached with a 95% Wilson interval",
            "probability_of_improvement": "P(final success of algo > reference), ties 1/2 "
            "(rliable.metrics.probability_of_improvement, seeds of both resampled independently)",
            "performance_profile": "fraction of runs with final success > tau (rliable score distribution)",
        },
        "algorithms": out_algos,
    }
    return _jsonable(summary)


def _jsonable(x: Any) -> Any:
    """Python scalars only, +inf -> None; raises on NaN (a bug, never a result)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        x = float(x)
        if math.isnan(x):
            raise ConfigError("summary: a statistic is NaN")
        return None if math.isinf(x) else x
    return x


def write_summary_json(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``summarize``'s result as strict JSON (no NaN/Infinity), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(dict(summary)), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
