"""Small, exact statistics for success rates: Wilson intervals, a one-sided Fisher exact test, thresholds.

Success over evaluation episodes is a binomial count, and the numbers of episodes we can afford (tens to a
few hundred) are small enough that normal approximations mislead near 0% and 100%. Everything here is
pure Python (``math.comb``/``math.sqrt``) so that the report and the nightly regression check do not depend
on SciPy, and so that the numbers are exact rather than approximated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ogpo.errors import ConfigError

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def _check_counts(name: str, successes: int, n: int) -> None:
    """Raise ConfigError unless 0 <= successes <= n are integers (bools are not counts)."""
    for label, value in ((f"{name} successes", successes), (f"{name} n", n)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{label} must be an integer >= 0, got {value!r}")
    if successes > n:
        raise ConfigError(f"{name}: successes ({successes}) exceed the number of episodes n ({n})")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for the default ``z``).

    Unlike the normal (Wald) interval it never leaves [0, 1] and does not collapse to a point at 0/n or
    n/n, which is exactly where a BC start (few successes) or a converged policy (all successes) lands.
    With no episodes (n = 0) nothing is known and the interval is the whole [0, 1].
    """
    _check_counts("wilson_interval", successes, n)
    if not (isinstance(z, int | float) and math.isfinite(z) and z > 0):
        raise ConfigError(f"wilson_interval z must be a finite number > 0, got {z!r}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # The formula gives exactly 0 (1) at 0/n (n/n) in exact arithmetic; pin it against rounding.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def fisher_exact_less(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value for H1: success rate of B < success rate of A.

    Conditioning on the total number of successes K = k_a + k_b, the successes of B follow a
    hypergeometric distribution (N = n_a + n_b items, K marked, n_b drawn) under H0 (equal rates); the
    p-value is P(X <= k_b). Computed with exact integer arithmetic, so it is correct even for thousands of
    episodes (the final division of two big integers is correctly rounded).
    """
    _check_counts("A", k_a, n_a)
    _check_counts("B", k_b, n_b)
    N, K = n_a + n_b, k_a + k_b
    if N == 0:
        return 1.0
    lo = max(0, K - n_a)  # B must hold at least the successes that do not fit into A
    numerator = sum(math.comb(K, x) * math.comb(N - K, n_b - x) for x in range(lo, k_b + 1))
    return min(1.0, numerator / math.comb(N, n_b))


@dataclass(frozen=True)
class SuccessComparison:
    """Outcome of a one-sided regression test of a new success rate against a reference one."""

    k_ref: int
    n_ref: int
    k_new: int
    n_new: int
    p_ref: float
    p_new: float
    ci_ref: tuple[float, float]  # 95% Wilson
    ci_new: tuple[float, float]
    p_value: float  # one-sided Fisher exact, H1: p_new < p_ref
    alpha: float
    regressed: bool  # p_value < alpha
    method: str = "one-sided Fisher exact test (H1: new success rate < reference)"

    @property
    def difference(self) -> float:
        """p_new - p_ref (negative when the new checkpoint is worse)."""
        return self.p_new - self.p_ref

    def summary(self) -> str:
        """One line a human can act on, e.g. in a nightly regression report or a failed flow run."""
        verdict = "REGRESSION" if self.regressed else "no significant regression"
        return (
            f"{verdict}: new {self.k_new}/{self.n_new} = {self.p_new:.1%} "
            f"[{self.ci_new[0]:.1%}, {self.ci_new[1]:.1%}] vs reference {self.k_ref}/{self.n_ref} = "
            f"{self.p_ref:.1%} [{self.ci_ref[0]:.1%}, {self.ci_ref[1]:.1%}]; "
            f"{self.method}: p = {self.p_value:.4g} (alpha = {self.alpha:g})"
        )


def compare_success(k_ref: int, n_ref: int, k_new: int, n_new: int, alpha: float = 0.05) -> SuccessComparison:
    """Test whether the new success rate is significantly lower than the reference one.

    Why a test and not a threshold: with ~100 episodes a 5-point drop is well within noise, while a fixed
    threshold would either fire on noise or miss real regressions; the test's false-alarm rate is ``alpha``
    by construction. Fisher's test is exact and conservative (its real false-alarm rate is <= alpha).
    """
    _check_counts("reference", k_ref, n_ref)
    _check_counts("new", k_new, n_new)
    if n_ref == 0 or n_new == 0:
        raise ConfigError(f"compare_success needs episodes on both sides, got n_ref={n_ref}, n_new={n_new}")
    if not (isinstance(alpha, float | int) and 0 < alpha < 1):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    p_value = fisher_exact_less(k_ref, n_ref, k_new, n_new)
    return SuccessComparison(
        k_ref=k_ref,
        n_ref=n_ref,
        k_new=k_new,
        n_new=n_new,
        p_ref=k_ref / n_ref,
        p_new=k_new / n_new,
        ci_ref=wilson_interval(k_ref, n_ref),
        ci_new=wilson_interval(k_new, n_new),
        p_value=p_value,
        alpha=float(alpha),
        regressed=p_value < alpha,
    )


def steps_to_reach(env_steps: Sequence[float], success: Sequence[float], level: float) -> int | None:
    """First env step at which the evaluated success rate is >= ``level``; None if it never is.

    NaN success values (rows of a learning curve without an evaluation) are skipped. ``env_steps`` must be
    non-decreasing: an out-of-order curve (e.g. a botched resume) would make "first" meaningless.
    """
    if len(env_steps) != len(success):
        raise ConfigError(f"steps_to_reach: {len(env_steps)} env_steps but {len(success)} success values")
    if not (isinstance(level, float | int) and 0 <= level <= 1):
        raise ConfigError(f"steps_to_reach: level must be in [0, 1], got {level!r}")
    for i in range(1, len(env_steps)):
        if env_steps[i] < env_steps[i - 1]:
            raise ConfigError(
                f"steps_to_reach: env_steps must be non-decreasing, row {i} has {env_steps[i]} after {env_steps[i - 1]}"
            )
    for step, s in zip(env_steps, success, strict=True):
        if not math.isnan(s) and s >= level:
            return int(step)
    return None
