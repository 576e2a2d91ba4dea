"""One finished study run as a file, and the study's runs table built from those files.

A run writes ``results/<study>/runs/<algo>/seed<N>.json`` once it has finished (atomically, so an interrupted
study loses no finished run and never sees a half-written one). The record holds the evaluations the runs
table needs (env steps, episodes, successes), the trainer's full curve rows, the wall-clock time and
provenance. :func:`runs_rows` turns records into rows of ``ogpo.study.aggregate.COLUMNS``:

- env step 0 is the shared BC start's evaluation (the same for every algorithm of the study);
- every curve evaluation before the budget (the trainer's ``eval_episodes`` per point);
- at the budget, the final evaluation (``final_episodes`` fixed-seed episodes, ``final`` = 1), which stands in
  for the trainer's smaller evaluation at the same step (one row per (task, algo, seed, env_steps)).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ogpo.errors import ConfigError

RECORD_SCHEMA = "ogpo.study.run/1"


def record_path(results: Path, algo: str, seed: int) -> Path:
    return Path(results) / "runs" / algo / f"seed{seed}.json"


def evaluation(env_steps: int, episodes: int, successes: int) -> dict[str, int]:
    if not 0 <= successes <= episodes or episodes < 1:
        raise ValueError(f"evaluation at {env_steps} env steps: {successes} successes of {episodes} episodes")
    return {"env_steps": int(env_steps), "episodes": int(episodes), "successes": int(successes)}


def curve_evaluations(curve: Iterable[dict], episodes: int) -> list[dict[str, int]]:
    """The trainer's curve rows as evaluations (``success`` is a rate over ``episodes`` episodes)."""
    return [evaluation(r["env_steps"], episodes, round(float(r["success"]) * episodes)) for r in curve]


def make_record(
    *,
    study: str,
    task: str,
    algo: str,
    seed: int,
    gcp_kind: str,
    budget: int,
    start: dict[str, int],
    curve_evals: list[dict[str, int]],
    final: dict[str, int],
    wall_time_s: float,
    curve: list[dict] | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if final["env_steps"] != budget:
        raise ValueError(
            f"{algo} seed {seed}: the final evaluation is at {final['env_steps']}, not the budget {budget}"
        )
    return {
        "schema": RECORD_SCHEMA,
        "study": study,
        "task": task,
        "algo": algo,
        "seed": int(seed),
        "gcp_kind": gcp_kind,
        "budget": int(budget),
        "start": start,
        "evaluations": [e for e in curve_evals if e["env_steps"] < budget],
        "final": final,
        "wall_time_s": round(float(wall_time_s), 2),
        "curve": [{k: _finite(v) for k, v in row.items()} for row in curve or []],
        "provenance": provenance or {},
    }


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write a record atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, allow_nan=False, default=_finite_or_null)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _finite(v: Any) -> Any:
    """A curve value as JSON: NaN (no update yet, no episode ended) becomes null."""
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _finite_or_null(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_record(path: Path) -> dict[str, Any]:
    """A run record, checked; ConfigError names the file and what is wrong."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
        raise ConfigError(f"{path}: not a run record (schema {RECORD_SCHEMA!r} expected)")
    for key in ("task", "algo", "seed", "start", "evaluations", "final", "wall_time_s"):
        if key not in rec:
            raise ConfigError(f"{path}: run record has no {key!r}")
    return rec


def runs_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the study's runs table (``aggregate.COLUMNS``), a run's evaluations in env-step order."""
    rows = []
    for rec in records:
        evals = [rec["start"], *rec["evaluations"], rec["final"]]
        for i, e in enumerate(evals):
            rows.append(
                {
                    "task": rec["task"],
                    "algo": rec["algo"],
                    "seed": rec["seed"],
                    "env_steps": e["env_steps"],
                    "episodes": e["episodes"],
                    "successes": e["successes"],
                    "success_rate": e["successes"] / e["episodes"],
                    "final": int(i == len(evals) - 1),
                }
            )
    return rows
