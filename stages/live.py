"""What DVC compares across runs, written with dvclive: ``dvclive/<stage>/metrics.json`` (the stage's summary
numbers) and ``dvclive/<stage>/plots/metrics/<name>.tsv`` (its curves, one file per metric, over ``step``).

``dvc.yaml`` declares these as each stage's ``metrics`` and ``plots``, so ``dvc metrics show``, ``dvc exp show``
and ``dvc plots diff`` compare runs on them; the stages' own JSON and CSV files (``metrics/``, ``plots/``) stay
the artifacts the report reads. Only numbers go in (no params, no strings: DVC shows params from params.yaml
itself), so ``dvc metrics show`` stays one readable table.

A stage writes its dvclive files from scratch each time (``write_live``): the curve so far plus the
summary. That makes it idempotent, so a resumed fine-tuning run (whose curve comes back from its saved state)
writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import numbers
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

LIVE_ROOT = Path("dvclive")


def live_dir(stage: str) -> Path:
    return LIVE_ROOT / stage


def _number(v: Any) -> float | int | None:
    """A finite int/float (bools and NaN/inf are dropped: DVC cannot compare them)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    if isinstance(v, numbers.Integral):
        return int(v)
    return float(v) if math.isfinite(float(v)) else None


def numbers_only(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric leaves of a (nested) mapping; anything else is left out."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, Mapping):
            sub = numbers_only(v)
            if sub:
                out[str(k)] = sub
        elif (x := _number(v)) is not None:
            out[str(k)] = x
    return out


def write_live(
    stage: str, rows: Iterable[Mapping[str, Any]] = (), step: str = "step", summary: Mapping[str, Any] | None = None
) -> Path:
    """Write ``dvclive/<stage>/`` afresh: each row logged at ``row[step]``, then ``summary`` (numbers only)."""
    from dvclive import Live

    logging.getLogger("dvclive").setLevel(logging.WARNING)  # it reports every file it writes at INFO
    directory = live_dir(stage)
    # what dvclive writes goes, nothing else: DVC keeps the .gitignore of the cached plots directory in plots/
    shutil.rmtree(directory / "plots" / "metrics", ignore_errors=True)
    (directory / "metrics.json").unlink(missing_ok=True)
    with Live(
        dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None, monitor_system=False, cache_images=False
    ) as live:
        for row in rows:
            live.step = int(row[step])
            for name, value in row.items():
                if name != step and (x := _number(value)) is not None:
                    live.log_metric(name, x, timestamp=False)
        live.summary = numbers_only(summary or {})
        live.make_summary()
    # dvc.yaml declares the plots directory as an output: a stage with no curve (the critic with ``mode: none``)
    # leaves it empty rather than missing, which DVC would refuse as a missing output
    (directory / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    return directory
