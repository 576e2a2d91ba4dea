"""Nightly regression: evaluate the pinned revision and the current one, test, report, fail on regression.

Both revisions go through the same DVC pipeline up to the evaluation stage (whose params fix the seeds),
so the pinned side is normally a run-cache restore and costs seconds. Success counts are compared with a
one-sided Fisher exact test (``ogpo.stats.compare_success``; H1: the current success rate is lower) at
the significance level ``alpha`` (default 0.05): a raw threshold would fire on noise with tens of episodes.
The report is a Prefect markdown artifact (key ``nightly-regression``) and a JSON object in the bucket;
on a regression the flow run ends Failed with the one-line summary, for a Prefect automation to notify.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from ogpo.errors import ConfigError, OGPOError
from ogpo.stats import SuccessComparison, compare_success
from pipeline import storage

DEFAULT_ALPHA = 0.05
REPORT_KEY = "nightly-regression"


class RegressionDetected(OGPOError):
    """The current revision's success rate is significantly lower than the pinned revision's."""


def success_counts(metrics: dict[str, Any], policy: str, source: str) -> tuple[int, int]:
    """(successes, n) of ``policy`` in an eval metrics JSON (``{"<policy>": {"successes": k, "n": n}}``)."""
    entry = metrics.get(policy)
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: no entry {policy!r} (has: {', '.join(metrics) or 'nothing'})")
    try:
        k, n = entry["successes"], entry["n"]
    except KeyError as e:
        raise ConfigError(f"{source}: {policy}.{e.args[0]} is missing") from e
    if not (isinstance(k, int) and isinstance(n, int)):
        raise ConfigError(f"{source}: {policy}.successes and .n must be integers, got {k!r}, {n!r}")
    return k, n


def report_markdown(
    cmp: SuccessComparison, baseline: tuple[str, str], current: tuple[str, str], policy: str, metrics_path: str
) -> str:
    verdict = "**REGRESSION**" if cmp.regressed else "no significant regression"
    ref = f"{cmp.k_ref}/{cmp.n_ref} | {cmp.p_ref:.1%} | [{cmp.ci_ref[0]:.1%}, {cmp.ci_ref[1]:.1%}]"
    new = f"{cmp.k_new}/{cmp.n_new} | {cmp.p_new:.1%} | [{cmp.ci_new[0]:.1%}, {cmp.ci_new[1]:.1%}]"
    return f"""# Nightly regression: {verdict}

{cmp.summary()}

| | revision | commit | successes / episodes | success | 95% Wilson interval |
|---|---|---|---|---|---|
| pinned (reference) | `{baseline[0]}` | `{baseline[1][:12]}` | {ref} |
| current | `{current[0]}` | `{current[1][:12]}` | {new} |

Test: {cmp.method}; p-value {cmp.p_value:.4g}; significance level alpha = {cmp.alpha:g}.
A regression is declared when p < alpha. Policy compared: `{policy}` from `{metrics_path}` (fixed evaluation
seeds from the evaluate stage's params).
"""


def run_regression(
    repo_url: str,
    baseline_rev: str,
    rev: str,
    profile: str | None,
    overrides: dict[str, Any],
    finetune_pool: str,
    run_key: str,
    alpha: float,
    stage: str,
    metrics_path: str,
    policy: str,
) -> dict[str, Any]:
    """Run both revisions up to ``stage``, compare ``policy`` success, write the report; raise on regression."""
    from pipeline.flows import run_pipeline

    logger = get_run_logger()
    collect = {stage: [metrics_path]}
    sides = {}
    for label, r in (("baseline", baseline_rev), ("current", rev)):
        try:
            sha, results = run_pipeline(
                repo_url, r, profile, overrides, [stage], finetune_pool, f"{run_key}-{label}", collect
            )
        except ConfigError as exc:
            if label == "baseline" and str(exc).startswith("unknown git revision"):
                raise ConfigError(
                    f"the regression baseline {baseline_rev!r} is not a revision of {repo_url}: pin one with "
                    f"`git tag -f {baseline_rev} <rev>` in that repository (and push the tag); `ogpo serve` "
                    "creates it at HEAD when it is missing"
                ) from None
            raise
        metrics = results[stage].files[metrics_path]
        sides[label] = (r, sha, success_counts(metrics, policy, f"{metrics_path} at {r} ({sha[:12]})"))
        logger.info("%s %s (%s): %s successes %d/%d", label, r, sha[:12], policy, *sides[label][2])
    (k_ref, n_ref), (k_new, n_new) = sides["baseline"][2], sides["current"][2]
    cmp = compare_success(k_ref, n_ref, k_new, n_new, alpha)
    md = report_markdown(cmp, sides["baseline"][:2], sides["current"][:2], policy, metrics_path)
    create_markdown_artifact(md, key=REPORT_KEY, description=cmp.summary())
    report = {
        "regressed": cmp.regressed,
        "summary": cmp.summary(),
        "baseline": {"rev": baseline_rev, "sha": sides["baseline"][1], "successes": k_ref, "n": n_ref},
        "current": {"rev": rev, "sha": sides["current"][1], "successes": k_new, "n": n_new},
        "p_value": cmp.p_value,
        "alpha": cmp.alpha,
        "method": cmp.method,
        "policy": policy,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    settings = storage.settings_from_env()
    key = f"reports/regression/{report['time']}-{sides['current'][1][:12]}.json"
    client = storage.s3_client(settings)
    storage.guarded("writing the regression report", client.put_object, Bucket=settings.bucket, Key=key,
                    Body=json.dumps(report, indent=2))  # fmt: skip
    logger.info("regression report: s3://%s/%s", settings.bucket, key)
    if cmp.regressed:
        raise RegressionDetected(cmp.summary())
    return report
