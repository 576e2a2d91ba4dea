"""Stage `ingest`: a demo source -> a validated robomimic-layout dataset + a JSON summary.

Sources: a local robomimic or raw-robosuite HDF5 path, ``s3://bucket/key`` (endpoint and credentials from the
environment), or ``scripted:<task>`` (the project's scripted experts, ``count`` episodes with ``seed`` and
``noise``). ``filter_key`` selects a subset by a mask in the file (e.g. a few demos for a weak BC policy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ogpo.data.ingest import ingest
from stages.common import Timer, load_params, param, stage_main, write_json_atomic

log = logging.getLogger("stages.ingest")

DATA = Path("data/demos.hdf5")
SUMMARY = Path("data/summary.json")
METRICS = Path("metrics/ingest.json")


@dataclass
class IngestParams:
    """Params section ``ingest``."""

    source: str = "scripted:lift"
    task: str = "lift"
    count: int | None = param(50, ge=1)  # episodes for scripted sources; a cap for files (None = all)
    seed: int = param(0, ge=0)
    noise: float = param(0.3, ge=0.0)
    filter_key: str | None = None


def run() -> None:
    p = load_params("ingest", IngestParams)
    with Timer() as timer:
        summary = ingest(
            p.source,
            DATA,
            task=p.task,
            count=p.count,
            seed=p.seed,
            noise=p.noise,
            filter_key=p.filter_key,
            summary_path=SUMMARY,
        )
    steps = int(sum(summary.get("lengths", []) or [0]))
    write_json_atomic(
        METRICS,
        {
            "wall_time_s": round(timer.wall_time_s, 2),
            "episodes": summary.get("episodes"),
            "env_steps": steps,
            "env_steps_per_s": round(steps / max(timer.wall_time_s, 1e-9), 2),
        },
    )
    log.info("ingested %s episodes from %s into %s", summary.get("episodes"), p.source, DATA)


if __name__ == "__main__":
    stage_main(run)
