"""Stage `report`: the pipeline's artifacts -> one self-contained ``reports/report.html``.

Run as ``python -m stages.report`` from the repository root (what ``dvc.yaml`` does). Reads params section
``report``; the artifact layout below is the contract with the other stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ogpo.report import STAGES, ReportPaths, build_report, load_report_inputs
from stages.common import git_revision, load_params, param, stage_main, write_text_atomic

OUTPUT = Path("reports/report.html")


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
        params=root / "params.yaml",
        bc_curve=root / "plots/bc_curve.csv",
        stage_metrics={stage: root / f"metrics/{stage}.json" for stage in STAGES},
        data_summary=root / "data/summary.json",
        videos_dir=root / "eval/videos",
    )


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
    )
    return write_text_atomic(root / OUTPUT, build_report(inputs))


def main() -> None:
    print(run())


if __name__ == "__main__":
    stage_main(main)
