"""Stage `report`: the pipeline's artifacts -> one self-contained ``reports/report.html``.

Run as ``python -m stages.report`` from the repository root (what ``dvc.yaml`` does). Reads params section
``report``; the artifact layout below (which stages exist, where each writes, what the params file is called
and where the periodic evaluation's episode count lives in it) is the contract with the other stages, kept
here so that the library (``ogpo.report``) knows only the artifacts' formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ogpo.report import ReportPaths, build_report, load_report_inputs
from stages.common import git_revision, load_params, param, stage_main, write_text_atomic

OUTPUT = Path("reports/report.html")
PARAMS = Path("params.yaml")
# The stages whose metrics/<stage>.json timings the report shows, in pipeline order.
STAGES = ("ingest", "pretrain_bc", "fit_critic", "finetune", "evaluate")
# Where the fine-tuning loop's periodic evaluation sets its number of episodes (the learning curve's n).
EVAL_EPISODES_KEY = ("finetune", "online", "eval_episodes")


@dataclass
class ReportParams:
    """Params section ``report``."""

    title: str = "OGPO fine-tuning report"
    max_videos: int = param(4, ge=0)  # rollout videos inlined (each adds its size to the HTML)
    max_video_mb: float = param(8.0, gt=0)  # larger files are skipped with a note


def artifact_paths(root: Path = Path(".")) -> ReportPaths:
    """Where the other stages write what the report reads (relative to the repository root)."""
    return ReportPaths(
        learning_curve=root / "plots/learning_curve.csv",
        eval_json=root / "metrics/eval.json",
        params=root / PARAMS,
        bc_curve=root / "plots/bc_curve.csv",
        stage_metrics={stage: root / f"metrics/{stage}.json" for stage in STAGES},
        data_summary=root / "data/summary.json",
        videos_dir=root / "eval/videos",
    )


def eval_episodes(params_path: Path) -> int | None:
    """``finetune.online.eval_episodes`` of the params file, or None when absent or not a positive integer.

    Tolerant on purpose: the report only uses it for the learning curve's Wilson bands, and the finetune
    stage validates its own section; a missing value means "no bands, and a note", not a failed report.
    """
    try:
        node: Any = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    for key in EVAL_EPISODES_KEY:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, int) and not isinstance(node, bool) and node >= 1 else None


def run(root: Path = Path(".")) -> Path:
    """Build the report of the pipeline checked out at ``root``; returns the written path."""
    paths = artifact_paths(root)
    params = load_params("report", ReportParams, paths.params)  # before any work: bad params fail fast
    inputs = load_report_inputs(
        paths,
        title=params.title,
        git_rev=git_revision(root),
        max_videos=params.max_videos,
        max_video_bytes=int(params.max_video_mb * 2**20),
        eval_episodes=eval_episodes(paths.params),
        eval_episodes_source=f"{PARAMS} {'.'.join(EVAL_EPISODES_KEY)}",
    )
    return write_text_atomic(root / OUTPUT, build_report(inputs))


def main() -> None:
    print(run())


if __name__ == "__main__":
    stage_main(main)
