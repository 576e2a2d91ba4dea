"""DVC operations the CLI lacks, run as ``python -P -m pipeline.dvcx <command>`` inside a workspace.

``push-uncached STAGE``: DVC commits a stage's ``cache: false`` outputs (metrics, plots) into the local
cache when it records the run-cache entry, but ``dvc push --run-cache`` uploads only the entry, not those
objects. Another worker then finds the entry, misses the objects and re-runs the stage. This pushes them,
so a run-cache hit restores the whole stage on any worker.

``probe TARGET...``: ``dvc repro --pull`` that restores but never runs: every stage must come from the
run-cache. Prints one JSON line ``{"complete": true, "lock": {...}}`` when the targets and all their
upstream stages were restored (a re-run with nothing changed then needs no stage task at all), or
``{"complete": false, "first_miss": STAGE}`` at the first stage that would have to run.

Run as a separate process (not in the flow's threads) because the DVC API is not thread-safe.
"""

from __future__ import annotations

import json
import sys


def push_uncached(stage_name: str, remote: str | None = None) -> int:
    """Push the cache objects of ``stage_name``'s uncached outputs; returns how many were transferred."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        stages = repo.stage.collect(stage_name)
        objs = set()
        for stage in stages:
            for out in stage.outs:
                if not out.use_cache and out.hash_info and out.hash_info.value:
                    out.hash_info.name = out.hash_info.name or "md5"
                    objs.add(out.hash_info)
                    if out.hash_info.isdir:
                        # DVC's run-cache commits an uncached directory's tree object (into the legacy cache)
                        # but not its files, so no worker could restore it from a run-cache hit: refuse it.
                        raise RuntimeError(
                            f"{stage_name}: output {out.def_path} is a directory with cache: false; the run-cache "
                            "cannot restore it on another worker. Declare it cached in dvc.yaml."
                        )
        if not objs:
            return 0
        result = repo.cloud.push(objs, remote=remote)
        if result.failed:
            raise RuntimeError(f"failed to push {len(result.failed)} uncached output objects of {stage_name}")
        return len(result.transferred)


class WouldRun(Exception):
    """Raised instead of executing a stage command during a probe."""


def probe(targets: list[str]) -> dict:
    """Restore ``targets`` (and upstream) from the run-cache only; report whether everything was restored."""
    import dvc.stage.run as stage_run
    import yaml
    from dvc.repo import Repo

    def refuse(stage, *args, **kwargs):
        raise WouldRun(stage.addressing)

    stage_run.cmd_run = refuse
    with Repo(".") as repo:
        try:
            repo.reproduce(targets, pull=True)
        except WouldRun as e:
            return {"complete": False, "first_miss": e.args[0]}
        except Exception as e:  # DVC may wrap our exception; anything else (storage errors) propagates
            cause = e.__cause__ or e.__context__
            if isinstance(cause, WouldRun):
                return {"complete": False, "first_miss": cause.args[0]}
            raise
    with open("dvc.lock") as f:
        lock = yaml.safe_load(f) or {}
    return {"complete": True, "lock": lock.get("stages", {})}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "push-uncached":
        n = push_uncached(argv[1])
        print(f"{n} uncached output objects pushed")
        return 0
    if len(argv) >= 2 and argv[0] == "probe":
        print("PROBE " + json.dumps(probe(argv[1:])))
        return 0
    print("usage: python -m pipeline.dvcx push-uncached STAGE | probe TARGET...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
