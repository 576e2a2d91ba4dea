"""The DAGs keep every stage shareable through DVC's run-cache, which is how workers reuse each other's results:

- an uncached (``cache: false``) output is declared under ``metrics:`` or ``plots:``: DVC saves no run-cache entry
  for a stage with any other uncached output (``Stage.run``: ``no_cache_outs``), so every worker would re-run it;
- an uncached output is a file: the run-cache commits an uncached directory's tree but not its files, so a hit on
  another worker could not restore it (pipeline/dvcx.py refuses one).

The one exception is a study's aggregate (runs.csv and report.html are committed files that are neither metrics nor
plots): the cheap last step, re-run wherever its result is needed from runs that all come from the run-cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DAGS = [ROOT / "dvc.yaml", *sorted((ROOT / "studies/templates").glob("*.dvc.yaml"))]
NOT_RUN_CACHED = {"aggregate"}  # study templates only


def _uncached(dag: Path) -> dict[str, list[tuple[str, str]]]:
    """stage -> [(section, path)] of its cache: false outputs."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name, stage in yaml.safe_load(dag.read_text())["stages"].items():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                if isinstance(entry, dict):
                    for path, opts in entry.items():
                        if isinstance(opts, dict) and opts.get("cache") is False:
                            found.setdefault(name, []).append((section, path))
    return found


@pytest.mark.parametrize("dag", DAGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_uncached_outputs_are_metric_or_plot_files(dag):
    uncached = _uncached(dag)
    assert uncached, "expected some uncached metrics or records"
    allowed = NOT_RUN_CACHED if dag.name != "dvc.yaml" else set()
    in_outs = {s: [p for sec, p in v if sec == "outs"] for s, v in uncached.items() if s not in allowed}
    assert not any(in_outs.values()), f"{dag.name}: uncached outs (no run-cache entry for their stage): {in_outs}"
    dirs = [p for v in uncached.values() for _, p in v if not Path(p.replace("${item.seed}", "0")).suffix]
    assert not dirs, f"{dag.name}: uncached directory outputs {dirs}"


def test_study_copies_match_their_template():
    """A committed study's dvc.yaml is its template's copy (stages/study.py new), so fixes reach every study."""
    for dag in sorted((ROOT / "studies").glob("*/dvc.yaml")):
        if dag.parent.name == "templates":
            continue
        body = dag.read_text().split("\nvars:", 1)[1]
        templates = {t.name: t.read_text().split("\nvars:", 1)[1] for t in (ROOT / "studies/templates").glob("*.yaml")}
        assert body in templates.values(), f"{dag} differs from every studies/templates/*.dvc.yaml below its header"
