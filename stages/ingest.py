"""Stage `ingest`: a demo source -> a validated robomimic-layout dataset + a JSON summary.

Sources: a local HDF5 path, ``s3://bucket/key`` (fetched by pipeline/sources.py, below), or
``scripted:<task>`` (the project's scripted experts, ``count`` episodes with ``seed`` and ``noise``). A file may
be a robomimic dataset, a robomimic file without observations (as robomimic's ``convert_robosuite.py`` leaves
it) or a raw robosuite file (``gather_demonstrations_as_hdf5``); the last two are replayed from their states.
Actions of a file are clipped to [-1, 1] as robosuite's controller does; ``data/summary.json`` counts them
(``actions_clipped``). ``filter_key`` selects a subset by a mask in the file (e.g. a few demos for a weak BC
policy). A bad file is one error line naming file, demo and key (exit 1), and the previous outputs stay.

An ``s3://`` source is fetched by the layer that owns the object store: dvc.yaml runs this stage through
``python -m pipeline.sources``, which calls :func:`run` with a fetch function (pipeline/storage.py's endpoint and
credential rules, the same as the DVC remote's). ``python -m stages.ingest`` alone reads local sources only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ogpo.data.ingest import SCRIPTED_PREFIX, Fetch, ingest, is_remote
from ogpo.envs.robosuite import TASKS
from ogpo.errors import ConfigError
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

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(sorted(TASKS))}, got {self.task!r}")
        if not self.source:
            raise ConfigError("source must be a file path, s3://bucket/key or scripted:<task>, got ''")
        if self.source.startswith(SCRIPTED_PREFIX):
            if self.source != SCRIPTED_PREFIX + self.task:
                raise ConfigError(f"source {self.source!r} does not make demos for task {self.task!r}")
            if self.count is None:
                raise ConfigError(f"count is required with source {self.source!r} (how many demos to make)")
            if self.filter_key is not None:
                raise ConfigError(f"filter_key applies to file sources, not to {self.source!r}")


def run(fetch: Fetch | None = None) -> None:
    """The stage; ``fetch(uri, dest)`` copies a remote source to a local file (given by pipeline/sources.py)."""
    p = load_params("ingest", IngestParams)
    if is_remote(p.source) and fetch is None:
        raise ConfigError(
            f"ingest.source {p.source!r} is a remote object: run this stage as dvc.yaml does, through "
            "`python -m pipeline.sources`, which fetches it from the object store"
        )
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
            fetch=fetch,
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
