"""Nightly regression verdicts and report text (the statistics themselves live in ogpo.stats)."""

import pytest

from ogpo.errors import ConfigError
from ogpo.stats import compare_success
from pipeline.regression import report_markdown, success_counts

METRICS = {"bc": {"successes": 5, "n": 20}, "finetuned": {"successes": 18, "n": 20, "success": 0.9}}


def test_success_counts_reads_the_eval_metrics():
    assert success_counts(METRICS, "finetuned", "metrics/eval.json") == (18, 20)


@pytest.mark.parametrize(
    ("metrics", "needle"),
    [({}, "no entry 'finetuned'"), ({"finetuned": {"n": 3}}, "finetuned.successes"),
     ({"finetuned": {"successes": 1.5, "n": 3}}, "integers")],
)  # fmt: skip
def test_bad_metrics_name_the_key(metrics, needle):
    with pytest.raises(ConfigError, match=needle):
        success_counts(metrics, "finetuned", "metrics/eval.json")


def test_report_says_why():
    bad = compare_success(18, 20, 3, 20, 0.05)
    md = report_markdown(bad, ("regression-baseline", "a" * 40), ("main", "b" * 40), "finetuned", "metrics/eval.json")
    assert bad.regressed and "**REGRESSION**" in md and "3/20" in md and "18/20" in md and "alpha = 0.05" in md
    same = compare_success(18, 20, 17, 20, 0.05)
    assert not same.regressed
    assert "no significant regression" in report_markdown(same, ("r", "a" * 40), ("m", "b" * 40), "p", "x.json")
