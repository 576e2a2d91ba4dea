"""Statistics used by the report and the nightly regression check, against hand-checked values."""

import math

import pytest

from ogpo.errors import ConfigError
from ogpo.stats import compare_success, fisher_exact_less, steps_to_reach, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # z = 1.96: 0/10 -> high = (z^2/n) / (1 + z^2/n); 5/10 -> 0.5 -/+ z/(1+z^2/n)*sqrt(0.025+z^2/400)
        (0, 10, 0.0, 0.27753),
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
        # 81/263: center (p + z^2/2n)/(1 + z^2/n) = 0.31075, half-width 1.93175 * sqrt(8.2427e-4) = 0.05546
        (81, 263, 0.25529, 0.36621),
    ],
)
def test_wilson_hand_checked(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-5)
    assert hi == pytest.approx(high, abs=1e-5)


def test_wilson_properties() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no data: nothing known
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi < 1.0  # exact 0 at 0/n, not -1e-17
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo > 0.0
    # More episodes -> narrower interval around the same rate; the interval always contains k/n.
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0] for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    for k, n in [(1, 7), (3, 3), (50, 100), (99, 100)]:
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    # Wider for a larger z (99% vs 95%).
    assert wilson_interval(5, 10, z=2.5758)[0] < wilson_interval(5, 10)[0]


@pytest.mark.parametrize(("k", "n"), [(-1, 10), (11, 10), (1.5, 10), (True, 10), (0, -1)])
def test_wilson_rejects_bad_counts(k: object, n: object) -> None:
    with pytest.raises(ConfigError):
        wilson_interval(k, n)  # type: ignore[arg-type]


def test_fisher_lady_tasting_tea() -> None:
    # Fisher's own table [[3, 1], [1, 3]]: one-sided p = (1 + 16) / 70.
    assert fisher_exact_less(3, 4, 1, 4) == pytest.approx(17 / 70, rel=1e-12)


def test_fisher_hand_checked_tables() -> None:
    # 10/10 vs 5/10: only X = 5 is as extreme -> C(15,5) C(5,5) / C(20,10) = 3003 / 184756.
    assert fisher_exact_less(10, 10, 5, 10) == pytest.approx(3003 / 184756, rel=1e-12)
    # Identical outcomes are never significant; a better new rate has p close to 1.
    assert fisher_exact_less(7, 10, 7, 10) > 0.5
    assert fisher_exact_less(2, 10, 9, 10) > 0.99
    # Degenerate margins: all successes or all failures carry no evidence.
    assert fisher_exact_less(10, 10, 10, 10) == 1.0
    assert fisher_exact_less(0, 10, 0, 10) == 1.0


def test_fisher_large_counts_are_exact_and_finite() -> None:
    p = fisher_exact_less(900, 1000, 850, 1000)
    assert 0.0 < p < 1e-3 and math.isfinite(p)


def test_fisher_matches_scipy_when_available() -> None:
    stats = pytest.importorskip("scipy.stats")  # cross-check only; the module itself never uses SciPy
    for k_a, n_a, k_b, n_b in [(45, 50, 38, 50), (3, 20, 1, 25), (80, 100, 79, 100), (0, 5, 0, 9)]:
        table = [[k_a, n_a - k_a], [k_b, n_b - k_b]]
        # alternative="greater": odds ratio of row A over row B > 1, i.e. B's rate is lower.
        _, expected = stats.fisher_exact(table, alternative="greater")
        assert fisher_exact_less(k_a, n_a, k_b, n_b) == pytest.approx(expected, rel=1e-9)


def _binom_pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


def test_compare_success_false_alarm_rate_is_at_most_alpha() -> None:
    # Exact size of the test under H0 (both rates 0.7, 40 episodes each): sum the probability of every
    # outcome that the test flags. Fisher is conservative, so this must be <= alpha.
    n, p, alpha = 40, 0.7, 0.05
    size = sum(
        _binom_pmf(a, n, p) * _binom_pmf(b, n, p)
        for a in range(n + 1)
        for b in range(n + 1)
        if compare_success(a, n, b, n, alpha).regressed
    )
    assert 0.01 < size <= alpha


def test_compare_success_detects_a_real_drop() -> None:
    # Exact power for 0.9 -> 0.7 with 100 episodes each: a drop of this size must almost always be caught.
    n = 100
    flagged = {(a, b) for a in range(n + 1) for b in range(a) if fisher_exact_less(a, n, b, n) < 0.05}
    power = sum(_binom_pmf(a, n, 0.9) * _binom_pmf(b, n, 0.7) for a, b in flagged)
    assert power > 0.95


def test_compare_success_result() -> None:
    r = compare_success(90, 100, 70, 100)
    assert r.regressed and r.p_value < 1e-3
    assert r.p_ref == 0.9 and r.p_new == 0.7 and r.difference == pytest.approx(-0.2)
    assert r.ci_new == wilson_interval(70, 100)
    assert "REGRESSION" in r.summary() and "70/100" in r.summary()
    same = compare_success(90, 100, 88, 100)
    assert not same.regressed and "no significant regression" in same.summary()


@pytest.mark.parametrize(
    "args", [(5, 0, 5, 10), (5, 10, 5, 0), (5, 10, 5, 10, 0.0), (5, 10, 5, 10, 1.0), (11, 10, 5, 10)]
)
def test_compare_success_rejects_bad_input(args: tuple) -> None:
    with pytest.raises(ConfigError):
        compare_success(*args)


def test_steps_to_reach() -> None:
    steps = [0, 1000, 2000, 3000, 4000]
    success = [0.3, float("nan"), 0.55, 0.8, 0.79]
    assert steps_to_reach(steps, success, 0.5) == 2000
    assert steps_to_reach(steps, success, 0.8) == 3000  # >=, and the first crossing counts
    assert steps_to_reach(steps, success, 0.9) is None
    assert steps_to_reach(steps, success, 0.0) == 0
    assert steps_to_reach([], [], 0.5) is None


def test_steps_to_reach_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="non-decreasing"):
        steps_to_reach([0, 2000, 1000], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(ConfigError, match="level"):
        steps_to_reach([0], [0.1], 1.5)
    with pytest.raises(ConfigError, match="2 env_steps"):
        steps_to_reach([0, 1], [0.1], 0.5)
