"""Study aggregation (ogpo.study.aggregate) against values computed independently on small fixed tables.

Point estimates are checked by hand (IQM: sort, drop the bottom and top 25%, mean). Bootstrap CI bounds are
checked against the *exact* bootstrap distribution, enumerated here over all n^n equally likely resamples of
n seeds (no rliable, no random numbers). Tolerance: rliable's percentile bound at level p is an interpolated
order statistic of R Monte Carlo replicates near rank p*R; the number of replicates below the exact quantile
Q(p - d) is Binomial(R, <= p - d), so the bound falls below Q(p - d) (or, symmetrically, above Q(p + d)) only
when that count strays by more than d*R from its mean. With d = 4 * sqrt(p (1 - p) / R) that is a 4-sigma event
(probability < 1e-4 per bound, for any seed): we assert Q(p - d) <= bound <= Q(p + d).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from ogpo.errors import ConfigError
from ogpo.stats import wilson_interval
from ogpo.study import aggregate as ag

EPISODES = 20
STEPS = (0, 1000, 2000, 3000, 4000)


def make_rows(spec: dict[str, dict[int, list[int]]], steps=STEPS, task: str = "toy") -> list[dict]:
    """spec: algo -> seed -> successes (out of EPISODES) at each of ``steps``."""
    rows = []
    for algo, seeds in spec.items():
        for seed, successes in seeds.items():
            assert len(successes) == len(steps)
            for j, (step, k) in enumerate(zip(steps, successes, strict=True)):
                rows.append(
                    {
                        "task": task,
                        "algo": algo,
                        "seed": seed,
                        "env_steps": step,
                        "episodes": EPISODES,
                        "successes": k,
                        "success_rate": k / EPISODES,
                        "final": int(j == len(steps) - 1),
                    }
                )
    return rows


def final_rows(finals: dict[str, list[float]]) -> list[dict]:
    """One evaluation per run (at env step 1000) with the given final success rates (multiples of 1/20)."""
    spec = {a: {s: [round(v * EPISODES)] for s, v in enumerate(vals)} for a, vals in finals.items()}
    return make_rows(spec, steps=(1000,))


def iqm_by_hand(values) -> float:
    s = sorted(values)
    k = len(s) // 4  # drop the bottom and top 25% (scipy's trim_mean cuts floor(0.25 n) on each side)
    kept = s[k : len(s) - k]
    return sum(kept) / len(kept)


def exact_bootstrap(values, stat) -> np.ndarray:
    """Sorted values of ``stat`` over all n^n equally likely resamples (with replacement) of ``values``."""
    values = list(values)
    n = len(values)
    return np.sort([stat([values[i] for i in idx]) for idx in itertools.product(range(n), repeat=n)])


def exact_quantile(dist: np.ndarray, p: float) -> float:
    """Inverse CDF of the discrete distribution given by the sorted sample ``dist`` (all points equally likely)."""
    p = min(max(p, 0.0), 1.0)
    return float(dist[max(math.ceil(p * len(dist)) - 1, 0)])


def assert_ci_matches_exact(ci, dist: np.ndarray, reps: int, size: float = 0.95) -> None:
    for bound, p in zip(ci, ((1 - size) / 2, (1 + size) / 2), strict=True):
        d = 4 * math.sqrt(p * (1 - p) / reps)
        lo, hi = exact_quantile(dist, p - d), exact_quantile(dist, p + d)
        assert lo - 1e-12 <= bound <= hi + 1e-12, f"bound {bound} at p={p} outside exact [{lo}, {hi}]"


# --------------------------------------------------------------------------------------------- IQM and mean
def test_iqm_and_mean_of_final_success_by_hand() -> None:
    finals = [0.1, 0.9, 0.3, 0.5, 0.7, 0.2, 1.0, 0.6]
    runs = ag.algo_runs(final_rows({"a": finals}))["a"]
    out = ag.final_success(runs, reps=200, seed=0)
    # sorted: 0.1 0.2 | 0.3 0.5 0.6 0.7 | 0.9 1.0 -> (0.3 + 0.5 + 0.6 + 0.7) / 4
    assert iqm_by_hand(finals) == pytest.approx(0.525)
    assert out["iqm"] == pytest.approx(0.525)
    assert out["mean"] == pytest.approx(sum(finals) / 8)
    assert out["iqm_ci"][0] <= out["iqm"] <= out["iqm_ci"][1]
    assert out["mean_ci"][0] <= out["mean"] <= out["mean_ci"][1]


def test_bootstrap_ci_bounds_match_the_exact_bootstrap_distribution() -> None:
    finals = [0.2, 0.45, 0.5, 0.7, 0.95]  # 5 seeds: 5^5 = 3125 resamples, enumerated exactly
    runs = ag.algo_runs(final_rows({"a": finals}))["a"]
    reps = 1000
    out = ag.final_success(runs, reps=reps, seed=123)
    assert out["iqm"] == pytest.approx(iqm_by_hand(finals))  # mean of 0.45, 0.5, 0.7
    assert_ci_matches_exact(out["iqm_ci"], exact_bootstrap(finals, iqm_by_hand), reps)
    assert_ci_matches_exact(out["mean_ci"], exact_bootstrap(finals, lambda x: sum(x) / len(x)), reps)


def test_bootstrap_is_reproducible_and_restores_the_global_rng() -> None:
    rows = final_rows({"a": [0.2, 0.45, 0.5, 0.7, 0.95]})
    runs = ag.algo_runs(rows)["a"]
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = ag.final_success(runs, reps=200, seed=1)
    assert np.array_equal(np.random.get_state()[1], before), "the caller's global RNG state must be restored"
    assert ag.final_success(runs, reps=200, seed=1) == first
    assert ag.final_success(runs, reps=200, seed=2) != first


def test_curve_table_iqm_per_evaluation_point_by_hand() -> None:
    spec = {
        "a": {0: [0, 4, 8, 12, 16], 1: [2, 6, 10, 14, 18], 2: [0, 2, 4, 6, 8], 3: [4, 8, 12, 16, 20]},
        "b": {0: [0, 0, 20, 20, 20], 5: [0, 20, 20, 20, 20]},
    }
    table = ag.curve_table(make_rows(spec), reps=200, seed=0)
    assert list(table.columns) == [
        "task",
        "algo",
        "env_steps",
        "n_seeds",
        "iqm",
        "iqm_low",
        "iqm_high",
        "mean",
        "mean_low",
        "mean_high",
    ]
    assert len(table) == 10
    for algo, seeds in spec.items():
        for j, step in enumerate(STEPS):
            row = table[(table.algo == algo) & (table.env_steps == step)].iloc[0]
            values = [s[j] / EPISODES for s in seeds.values()]
            assert row.n_seeds == len(seeds)
            assert row.iqm == pytest.approx(iqm_by_hand(values))
            assert row["mean"] == pytest.approx(sum(values) / len(values))
            assert row.iqm_low <= row.iqm <= row.iqm_high
            assert min(values) <= row.mean_low <= row["mean"] <= row.mean_high <= max(values)


def test_point_intervals_are_wilson_per_run_and_point() -> None:
    df = ag.point_intervals(make_rows({"a": {0: [0, 5, 10, 15, 20]}}))
    for r in df.itertuples():
        assert (r.wilson_low, r.wilson_high) == wilson_interval(r.successes, r.episodes)
    assert df.wilson_low.iloc[0] == 0.0 and df.wilson_high.iloc[-1] == 1.0


# --------------------------------------------------------------------------------------------- steps to X
CENSORED_SPEC = {
    "a": {
        # successes out of 20 at 0, 1000, ..., 4000 -> first step reaching 50% / 80% / 90%
        0: [0, 10, 16, 16, 18],  # 1000 / 2000 / 4000
        1: [0, 4, 10, 16, 17],  # 2000 / 3000 / never
        2: [0, 2, 6, 12, 14],  # 3000 / never / never
        3: [0, 2, 4, 6, 8],  # never / never / never
    }
}


def lower_median(values) -> float:
    """First value by which at least half of the runs are done (+inf when fewer than half ever are)."""
    s = sorted(values)
    return s[math.ceil(len(s) / 2) - 1]


def test_steps_to_x_counts_censored_runs() -> None:
    runs = ag.algo_runs(make_rows(CENSORED_SPEC))["a"]
    reps = 1000
    out = ag.steps_to(runs, reps=reps, seed=0)
    assert list(out) == ["50%", "80%", "90%"]
    inf = math.inf
    per_seed = {"50%": [1000, 2000, 3000, inf], "80%": [2000, 3000, inf, inf], "90%": [4000, inf, inf, inf]}
    expected_median = {"50%": 2000, "80%": 3000, "90%": inf}  # 80%: exactly half reached -> finite
    for label, steps in per_seed.items():
        got = out[label]
        assert got["per_seed"] == steps
        assert got["median"] == expected_median[label] == lower_median(steps)
        reached = sum(math.isfinite(s) for s in steps)
        assert (got["reached"], got["runs"], got["reached_fraction"]) == (reached, 4, reached / 4)
        assert tuple(got["reached_fraction_ci"]) == wilson_interval(reached, 4)
        assert_ci_matches_exact(got["ci"], exact_bootstrap(steps, lower_median), reps)
    # 90%: a resample has a finite median only if >= 2 of its 4 draws are seed 0: P = 1 - 0.75^4 - 4 * 0.25 * 0.75^3
    # = 0.262 > 2.5%, so the CI runs from 4000 to "not reached".
    assert out["90%"]["ci"] == [4000.0, inf]
    # Every reported step is an evaluated step (or +inf): no averaging across runs.
    for got in out.values():
        for x in [got["median"], *got["ci"]]:
            assert x == inf or x in (1000, 2000, 3000, 4000)


def test_steps_to_x_at_step_zero_and_never() -> None:
    runs = ag.algo_runs(make_rows({"a": {0: [12, 12, 12, 12, 12], 1: [10, 10, 10, 10, 10]}}))["a"]
    out = ag.steps_to(runs, levels=(0.5, 1.0), reps=200, seed=0)
    assert out["50%"]["median"] == 0 and out["50%"]["ci"] == [0.0, 0.0]
    assert out["100%"]["median"] == math.inf and out["100%"]["ci"] == [math.inf, math.inf]
    assert out["100%"]["reached_fraction"] == 0.0


# ------------------------------------------------------------------------------------- probability of improvement
def poi_by_hand(x, y) -> float:
    return sum((a > b) + 0.5 * (a == b) for a in x for b in y) / (len(x) * len(y))


def test_probability_of_improvement_dominant_and_equal() -> None:
    rows = final_rows({"best": [0.9, 1.0, 0.95], "worst": [0.1, 0.2, 0.3], "same": [0.1, 0.2, 0.3]})
    runs = ag.algo_runs(rows)
    best = ag.probability_of_improvement(runs["best"], runs["worst"], reps=200, seed=0)
    assert best == {"over": "worst", "value": 1.0, "ci": [1.0, 1.0]}
    worst = ag.probability_of_improvement(runs["worst"], runs["best"], reps=200, seed=0)
    assert worst["value"] == 0.0 and worst["ci"] == [0.0, 0.0]
    same = ag.probability_of_improvement(runs["same"], runs["worst"], reps=200, seed=0)
    assert same["value"] == 0.5
    assert same["ci"][0] < 0.5 < same["ci"][1]


def test_probability_of_improvement_ci_matches_the_exact_bootstrap() -> None:
    x, y = [0.2, 0.5, 0.8], [0.1, 0.5, 0.6]
    runs = ag.algo_runs(final_rows({"x": x, "y": y}))
    reps = 500
    out = ag.probability_of_improvement(runs["x"], runs["y"], reps=reps, seed=0)
    assert out["value"] == pytest.approx(poi_by_hand(x, y))  # 0.2: 1, 0.5: 1 + tie 0.5, 0.8: 3 -> 5.5 / 9
    assert out["value"] == pytest.approx(5.5 / 9)
    # The seeds of x and y are resampled independently: 27 x 27 equally likely pairs of resamples.
    resamples = lambda v: [[v[i] for i in idx] for idx in itertools.product(range(3), repeat=3)]  # noqa: E731
    dist = np.sort([poi_by_hand(a, b) for a in resamples(x) for b in resamples(y)])
    assert_ci_matches_exact(out["ci"], dist, reps)


def test_constant_equal_algorithms_give_one_half_exactly() -> None:
    runs = ag.algo_runs(final_rows({"a": [0.5, 0.5, 0.5], "b": [0.5, 0.5]}))
    assert ag.probability_of_improvement(runs["a"], runs["b"], reps=200, seed=0)["ci"] == [0.5, 0.5]


# --------------------------------------------------------------------------------------------- profiles
def test_performance_profile_is_the_fraction_of_runs_above_tau() -> None:
    runs = ag.algo_runs(final_rows({"a": [0.1, 0.5, 0.5, 0.9]}))["a"]
    prof = ag.performance_profile(runs, taus=[0.0, 0.1, 0.5, 0.9], reps=200, seed=0)
    assert prof["tau"] == [0.0, 0.1, 0.5, 0.9]
    assert prof["fraction"] == [1.0, 0.75, 0.25, 0.0]  # strictly above tau
    for lo, p, hi in zip(prof["ci_low"], prof["fraction"], prof["ci_high"], strict=True):
        assert 0 <= lo <= p <= hi <= 1
    assert prof["ci_low"][0] == prof["ci_high"][0] == 1.0


# --------------------------------------------------------------------------------------------- summary
def study_rows() -> list[dict]:
    spec = dict(CENSORED_SPEC)
    spec["ogpo+ca"] = {0: [0, 12, 18, 20, 20], 1: [0, 10, 16, 19, 20], 2: [0, 8, 14, 18, 19]}
    return make_rows(spec)


def test_summarize_gives_strict_json_per_algorithm(tmp_path) -> None:
    s = ag.summarize(study_rows(), reps=200, seed=0)
    assert s["schema"] == ag.SUMMARY_SCHEMA and s["task"] == "toy" and s["reference"] == "ogpo+ca"
    assert s["bootstrap"]["reps"] == 200 and s["bootstrap"]["rliable"] == "1.2.0"
    assert list(s["algorithms"]) == ["a", "ogpo+ca"]
    a, ref = s["algorithms"]["a"], s["algorithms"]["ogpo+ca"]
    assert a["seeds"] == [0, 1, 2, 3] and a["final_env_steps"] == 4000
    assert a["final_success_per_seed"] == [0.9, 0.85, 0.7, 0.4]
    assert a["final_success"]["iqm"] == pytest.approx((0.7 + 0.85) / 2)
    assert a["steps_to"]["90%"]["median"] is None  # +inf -> null
    assert a["steps_to"]["90%"]["ci"] == [4000.0, None]
    assert a["steps_to"]["50%"]["per_seed"] == [1000.0, 2000.0, 3000.0, None]
    assert a["probability_of_improvement"]["over"] == "ogpo+ca"
    assert a["probability_of_improvement"]["value"] == pytest.approx(poi_by_hand([18, 17, 14, 8], [20, 20, 19]))
    assert ref["probability_of_improvement"] is None
    assert ref["steps_to"]["50%"]["median"] == 1000
    text = json.dumps(s, allow_nan=False)  # strict JSON
    path = ag.write_summary_json(s, tmp_path / "results" / "toy" / "summary.json")
    assert json.loads(path.read_text()) == json.loads(text)
    # Same inputs, same numbers; adding an algorithm does not move the others' intervals.
    assert ag.summarize(study_rows(), reps=200, seed=0) == s
    fewer = ag.summarize(study_rows(), reps=200, seed=0, algos=["ogpo+ca"])
    assert fewer["algorithms"]["ogpo+ca"] == ref


def test_summarize_without_reference() -> None:
    s = ag.summarize(final_rows({"x": [0.5, 0.6]}), reference=None, reps=50, seed=0, levels=[0.5])
    assert s["algorithms"]["x"]["probability_of_improvement"] is None
    assert list(s["algorithms"]["x"]["steps_to"]) == ["50%"]


# --------------------------------------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path) -> None:
    rows = study_rows()
    path = ag.write_runs_csv(rows, tmp_path / "results" / "toy" / "runs.csv")
    assert path.read_text().splitlines()[0] == ",".join(ag.COLUMNS)
    df = ag.read_runs_csv(path)
    assert list(df.columns) == list(ag.COLUMNS) and len(df) == len(rows)
    assert df.dtypes["seed"] == np.int64 and df.dtypes["success_rate"] == np.float64
    expected = ag.validate_runs(rows).sort_values(["task", "algo", "seed", "env_steps"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(df, expected)
    # A DataFrame is accepted as input too and gives the same summary.
    assert ag.summarize(df, reps=50, seed=0) == ag.summarize(rows, reps=50, seed=0)


# --------------------------------------------------------------------------------------------- bad input
def test_unknown_and_missing_columns() -> None:
    rows = make_rows({"a": {0: [1, 2, 3, 4, 5]}})
    with pytest.raises(ConfigError, match=r"row 0: missing columns \['final'\]"):
        ag.validate_runs([{k: v for k, v in r.items() if k != "final"} for r in rows])
    with pytest.raises(ConfigError, match=r"unknown columns \['reward'\]"):
        ag.summarize(pd.DataFrame(rows).assign(reward=1.0))
    with pytest.raises(ConfigError, match="use read_runs_csv"):
        ag.summarize("results/toy/runs.csv")


def test_csv_errors_name_file_line_and_column(tmp_path) -> None:
    path = tmp_path / "runs.csv"
    header = ",".join(ag.COLUMNS)
    path.write_text(header + "\ntoy,a,0,0,10,3,0.3,0\ntoy,a,0,1000,10,12,1.2,1\n")
    with pytest.raises(ConfigError, match=rf"{path}: line 3, column 'successes': 12 successes out of 10 episodes"):
        ag.read_runs_csv(path)
    path.write_text(header + "\ntoy,a,zero,0,10,3,0.3,1\n")
    with pytest.raises(ConfigError, match=r"line 2, column 'seed': expected an integer, got 'zero'"):
        ag.read_runs_csv(path)
    path.write_text(header.replace("final", "last") + "\n")
    with pytest.raises(ConfigError, match=r"header: missing columns \['final'\]; unknown columns \['last'\]"):
        ag.read_runs_csv(path)
    path.write_text(header + "\ntoy,a,0,0,10,3,0.5,1\n")
    with pytest.raises(ConfigError, match=r"column 'success_rate': 0.5 disagrees with successes / episodes"):
        ag.read_runs_csv(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="empty file"):
        ag.read_runs_csv(path)
    path.write_text(header + "\n")
    with pytest.raises(ConfigError, match="zero runs"):
        ag.read_runs_csv(path)
    with pytest.raises(ConfigError, match="cannot read the runs table"):
        ag.read_runs_csv(tmp_path / "missing.csv")


def test_successes_above_episodes_in_memory() -> None:
    rows = make_rows({"a": {0: [1, 2, 3, 4, 5]}})
    rows[2] = rows[2] | {"successes": 21, "success_rate": 1.05}
    with pytest.raises(ConfigError, match=r"runs table row 2, column 'successes': 21 successes out of 20"):
        ag.summarize(rows)
    with pytest.raises(ConfigError, match="row 2"):
        ag.write_runs_csv(rows, "/nonexistent/never/written.csv")


def test_zero_seeds_for_an_algorithm() -> None:
    rows = make_rows({"ogpo+ca": {0: [1, 2, 3, 4, 5]}})
    with pytest.raises(ConfigError, match=r"algorithms \['dppo'\] have no runs \(zero seeds\)"):
        ag.summarize(rows, algos=["ogpo+ca", "dppo"])
    with pytest.raises(ConfigError, match="zero runs"):
        ag.summarize([])
    with pytest.raises(ConfigError, match=r"reference algorithm 'ogpo\+ca' has no runs"):
        ag.summarize(make_rows({"ogpo": {0: [1, 2, 3, 4, 5]}}))


def test_mismatched_evaluation_points_name_algorithm_and_seeds() -> None:
    rows = make_rows({"a": {0: [1, 2, 3, 4, 5], 1: [1, 2, 3, 4, 5]}, "ogpo+ca": {0: [1, 2, 3, 4, 5]}})
    rows = [r for r in rows if not (r["seed"] == 1 and r["env_steps"] == 2000)]
    with pytest.raises(ConfigError, match=r"algorithm 'a': seed 1 .* seed 0 \(seed 1 lacks \[2000\], has extra \[\]\)"):
        ag.curve_table(rows, reps=10)


def test_final_flag_duplicates_and_tasks() -> None:
    rows = make_rows({"a": {0: [1, 2, 3, 4, 5]}})
    rows[4]["final"] = 0
    with pytest.raises(ConfigError, match=r"row 4, column 'final': .* found final=1 at env_steps \[\]"):
        ag.validate_runs(rows)
    rows[4]["final"], rows[1]["final"] = 1, 1
    with pytest.raises(ConfigError, match=r"row 1, column 'final'"):
        ag.validate_runs(rows)
    rows[1]["final"] = 0
    with pytest.raises(ConfigError, match=r"row 5: duplicate evaluation .* already at runs table row 0"):
        ag.validate_runs([*rows, rows[0]])
    other = make_rows({"a": {0: [1, 2, 3, 4, 5]}}, task="lift")
    with pytest.raises(ConfigError, match=r"aggregation is per task .* \['toy', 'lift'\]"):
        ag.summarize(rows + other)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reps": 0}, "reps must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"levels": [0.5, 1.5]}, r"levels must be success rates in \(0, 1\]"),
        ({"levels": []}, "non-empty"),
        ({"algos": "ogpo+ca"}, "list of algorithm names"),
    ],
)
def test_bad_parameters(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        ag.summarize(study_rows(), **kwargs)
