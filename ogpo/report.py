"""The pipeline's HTML report for one run: one self-contained file a researcher can open, archive and trust.

Two steps, so each can be tested alone: ``load_report_inputs`` reads and checks the artifacts the other
stages wrote (a missing *required* file or any corrupt file is a ReportInputError naming it; a missing
*optional* one becomes a note shown at the top of the report), and ``build_report`` turns the checked
inputs into HTML through the jinja2 template ``ogpo/templates/run.html.j2`` with matplotlib figures
(``ogpo.plots``) inlined as SVG. The report has no JavaScript and no external URL: videos are base64 data
URIs. Success intervals are recomputed from the episode counts (95% Wilson), so the numbers in the table
are the ones this module can vouch for.

This module knows the *formats* of the artifacts, not the pipeline: which stages exist, where their files
live and what the params file is called are the caller's (``stages/report.py``) to say, through
``ReportPaths`` and the arguments of ``load_report_inputs``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ogpo.errors import OGPOError
from ogpo.plots import PALETTE, HLine, Interval, Series, interval_plot, line_plot
from ogpo.stats import fisher_exact_less, steps_to_reach, wilson_interval
from ogpo.templating import fmt_duration, fmt_float, fmt_int, fmt_pct, markup, render

__all__ = [
    "Media",
    "PolicyEval",
    "ReportInputError",
    "ReportInputs",
    "ReportPaths",
    "StageMetrics",
    "build_report",
    "curve_intervals",
    "fmt_duration",
    "fmt_float",
    "fmt_int",
    "fmt_pct",
    "load_report_inputs",
]

LEARNING_CURVE_REQUIRED = ("env_steps", "success")
# Curve columns that are not per-algorithm diagnostics (plotted elsewhere or counters)
NOT_DIAGNOSTICS = ("env_steps", "success", "episodes", "rollout_success", "updates", "wall_time")
# Titles for known diagnostics: column -> (title, y label); any other numeric column an algorithm logs
# (its Agent.metric_names) is plotted under its own name
DIAGNOSTICS = {
    "return": ("Episode return", "return"),
    "episode_length": ("Episode length", "steps"),
    "critic_loss": ("Critic loss (TD)", "loss"),
    "actor_loss": ("Actor loss (PPO over chains)", "loss"),
    "bc_loss": ("Success-buffer BC loss", "loss"),
    "clip_frac": ("PPO clip fraction", "fraction"),
    "adv_mean": ("Mean advantage", "advantage"),
    "adv_abs": ("Mean |advantage|", "|advantage|"),
    "q_mean": ("Mean Q", "Q"),
}
POLICIES = (("bc", "BC (start)"), ("finetuned", "Fine-tuned"))
MEDIA_TYPES = {
    ".gif": "image/gif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
}
BC_COLOR, FT_COLOR, FINAL_COLOR = PALETTE[1], PALETTE[0], PALETTE[2]


class ReportInputError(OGPOError):
    """An input artifact of the report is missing (when required) or corrupt; the message names the file."""


Table = dict[str, list[float]]


@dataclass(frozen=True)
class PolicyEval:
    """Final evaluation of one policy over n episodes on fixed seeds."""

    successes: int
    n: int
    mean_return: float | None = None
    mean_length: float | None = None

    @property
    def success(self) -> float:
        return self.successes / self.n

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)


@dataclass(frozen=True)
class StageMetrics:
    """Timing and throughput of one pipeline stage (from ``metrics/<stage>.json``)."""

    stage: str
    wall_time_s: float
    env_steps: float | None = None
    env_steps_per_s: float | None = None
    updates: float | None = None
    updates_per_s: float | None = None


@dataclass(frozen=True)
class Media:
    """A rollout video (GIF/MP4) or frame image, inlined as a data URI."""

    name: str
    mime: str
    data: bytes


@dataclass
class ReportInputs:
    """Everything the report shows, already read and checked."""

    title: str
    learning_curve: Table  # at least env_steps and success (NaN where no evaluation ran); optional episodes
    evals: dict[str, PolicyEval]  # "bc" and "finetuned"
    params_text: str
    git_rev: str
    bc_curve: Table | None = None  # step, success, loss
    stages: list[StageMetrics] = field(default_factory=list)
    data_summary: dict[str, Any] | None = None  # content_hash, episodes, success_rate
    media: list[Media] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # missing optional inputs, skipped files
    generated_at: str | None = None  # ISO time; None = now (set it for byte-reproducible output)
    levels: tuple[float, ...] = (0.5, 0.8, 0.9)
    # Episodes per periodic evaluation, for the learning curve's Wilson bands when the curve has no
    # ``episodes`` column; None (and no column): no bands, and a note says so.
    eval_episodes: int | None = None
    params_label: str = "parameters"  # how the provenance section names the params file


@dataclass(frozen=True)
class ReportPaths:
    """Where each input lives; the stage fills these in from the pipeline's artifact layout.

    ``stage_metrics`` maps each stage to time (in the order shown) to its metrics JSON: the caller says which
    stages the pipeline has. ``params`` is the run's parameter file, shown verbatim and hashed.
    """

    learning_curve: Path
    eval_json: Path
    params: Path
    bc_curve: Path | None = None
    stage_metrics: dict[str, Path] = field(default_factory=dict)
    data_summary: Path | None = None
    videos_dir: Path | None = None


# ------------------------------------------------------------------------------------------ reading


def read_curve_csv(path: Path, required: Sequence[str]) -> Table:
    """Read a numeric CSV into columns; empty cells and 'nan' become NaN.

    Raises ReportInputError naming the file for: missing file, missing required columns, a non-numeric
    cell (with its row and column), no data rows.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise ReportInputError(
                    f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header) or 'empty'})"
                )
            table: Table = {c: [] for c in header}
            for row_no, row in enumerate(reader, start=2):  # line 1 is the header
                for c in header:
                    cell = (row.get(c) or "").strip()
                    try:
                        table[c].append(float(cell) if cell else math.nan)
                    except ValueError:
                        raise ReportInputError(f"{path}: line {row_no}, column {c}: {cell!r} is not a number") from None
    except FileNotFoundError:
        raise ReportInputError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportInputError(f"{path}: cannot read CSV: {exc}") from None
    if not table[required[0]]:
        raise ReportInputError(f"{path}: no data rows")
    return table


def _check_steps(path: Path, steps: list[float]) -> None:
    """Env steps must be finite and non-decreasing; anything else means a broken (e.g. resumed) log."""
    for i, s in enumerate(steps):
        if not math.isfinite(s):
            raise ReportInputError(f"{path}: line {i + 2}: step value is empty or not finite")
        if i and s < steps[i - 1]:
            raise ReportInputError(
                f"{path}: line {i + 2}: step {s:g} comes after {steps[i - 1]:g} (steps must not decrease)"
            )


def read_json(path: Path) -> Any:
    """Parse a JSON file; ReportInputError naming it when missing or corrupt."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportInputError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportInputError(f"{path}: not valid JSON: {exc}") from None


def _number(path: Path, obj: dict[str, Any], key: str, where: str, required: bool = True) -> float | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReportInputError(f"{path}: {where}{key} must be a finite number, got {value!r}")
    return float(value)


def parse_eval(path: Path, doc: Any) -> dict[str, PolicyEval]:
    """Check ``metrics/eval.json``: counts must be consistent with the reported success rate."""
    if not isinstance(doc, dict):
        raise ReportInputError(f"{path}: expected an object with keys 'bc' and 'finetuned'")
    evals = {}
    for key, _ in POLICIES:
        entry = doc.get(key)
        if not isinstance(entry, dict):
            raise ReportInputError(f"{path}: missing object '{key}'")
        counts = {}
        for name in ("successes", "n"):
            v = entry.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ReportInputError(f"{path}: {key}.{name} must be an integer >= 0, got {v!r}")
            counts[name] = v
        if counts["n"] == 0 or counts["successes"] > counts["n"]:
            raise ReportInputError(f"{path}: {key}: need 0 <= successes <= n and n > 0, got {counts}")
        success = _number(path, entry, "success", f"{key}.")
        if abs(success - counts["successes"] / counts["n"]) > 1e-6:
            raise ReportInputError(
                f"{path}: {key}.success = {success} disagrees with successes/n = {counts['successes']}/{counts['n']}"
            )
        evals[key] = PolicyEval(
            successes=counts["successes"],
            n=counts["n"],
            mean_return=_number(path, entry, "mean_return", f"{key}.", required=False),
            mean_length=_number(path, entry, "mean_length", f"{key}.", required=False),
        )
    return evals


def parse_stage_metrics(path: Path, stage: str, doc: Any) -> StageMetrics:
    if not isinstance(doc, dict):
        raise ReportInputError(f"{path}: expected a JSON object")
    get = {k: _number(path, doc, k, "", required=False) for k in ("env_steps", "env_steps_per_s", "updates")}
    wall = _number(path, doc, "wall_time_s", "")
    if wall < 0:
        raise ReportInputError(f"{path}: wall_time_s must be >= 0, got {wall}")
    return StageMetrics(stage, wall, updates_per_s=_number(path, doc, "updates_per_s", "", required=False), **get)


def read_media(directory: Path, max_items: int, max_bytes: int, notes: list[str]) -> list[Media]:
    """Up to ``max_items`` videos/frames in name order; oversized files are skipped with a note."""
    if not directory.is_dir():
        notes.append(f"{directory}/ not found: no rollout videos in this report.")
        return []
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_TYPES)
    if not files:
        notes.append(f"{directory}/ holds no videos or frames ({', '.join(MEDIA_TYPES)}).")
        return []
    media = []
    for p in files:
        if len(media) >= max_items:
            notes.append(f"Showing {max_items} of {len(files)} videos in {directory}/ (report.max_videos).")
            break
        size = p.stat().st_size
        if size > max_bytes:
            notes.append(
                f"{p}: {size / 2**20:.1f} MiB exceeds the inline limit of {max_bytes / 2**20:.1f} MiB; skipped."
            )
            continue
        media.append(Media(p.name, MEDIA_TYPES[p.suffix.lower()], p.read_bytes()))
    return media


def load_report_inputs(
    paths: ReportPaths,
    *,
    title: str,
    git_rev: str,
    max_videos: int = 4,
    max_video_bytes: int = 8 * 2**20,
    eval_episodes: int | None = None,
    eval_episodes_source: str = "the evaluation episode count",
) -> ReportInputs:
    """Read and check every artifact. Required: learning curve, eval metrics, params file.

    ``eval_episodes`` is the number of episodes of each periodic evaluation (the caller reads it from its
    config; ``eval_episodes_source`` names where, for the note when it is unknown). A curve ``episodes``
    column, where present, wins.
    """
    notes: list[str] = []
    curve = read_curve_csv(paths.learning_curve, LEARNING_CURVE_REQUIRED)
    _check_steps(paths.learning_curve, curve["env_steps"])
    if not any(math.isfinite(v) for v in curve["success"]):
        notes.append(f"{paths.learning_curve}: no periodic evaluation (success is empty in every row).")
    elif "episodes" not in curve and eval_episodes is None:
        notes.append(
            f"{paths.learning_curve} has no 'episodes' column and {eval_episodes_source} is unknown: "
            "the learning curve is drawn without Wilson intervals."
        )
    evals = parse_eval(paths.eval_json, read_json(paths.eval_json))
    try:
        params_text = paths.params.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportInputError(f"{paths.params}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportInputError(f"{paths.params}: cannot read: {exc}") from None

    bc_curve = None
    if paths.bc_curve is not None:
        if paths.bc_curve.exists():
            bc_curve = read_curve_csv(paths.bc_curve, ("step", "success"))
            _check_steps(paths.bc_curve, bc_curve["step"])
        else:
            notes.append(f"{paths.bc_curve} not found: the BC pretraining curve is omitted.")

    stages = []
    for stage, path in paths.stage_metrics.items():
        if path.exists():
            stages.append(parse_stage_metrics(path, stage, read_json(path)))
        else:
            notes.append(f"{path} not found: no timing for stage {stage}.")

    summary = None
    if paths.data_summary is not None:
        if paths.data_summary.exists():
            summary = read_json(paths.data_summary)
            if not isinstance(summary, dict):
                raise ReportInputError(f"{paths.data_summary}: expected a JSON object")
        else:
            notes.append(f"{paths.data_summary} not found: the data hash is unknown.")

    media = read_media(paths.videos_dir, max_videos, max_video_bytes, notes) if paths.videos_dir else []
    return ReportInputs(
        title=title,
        learning_curve=curve,
        evals=evals,
        params_text=params_text,
        git_rev=git_rev,
        bc_curve=bc_curve,
        stages=stages,
        data_summary=summary,
        media=media,
        notes=notes,
        eval_episodes=eval_episodes,
        params_label=paths.params.name,
    )


# ------------------------------------------------------------------------------------------ figures


def _finite_pairs(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    keep = [i for i, v in enumerate(y) if math.isfinite(v)]
    return [x[i] for i in keep], [y[i] for i in keep]


def curve_intervals(inp: ReportInputs) -> tuple[list[float], list[float], list[float], list[float], list[str]]:
    """(steps, success, wilson low, wilson high, notes) of the evaluated rows of the learning curve.

    The episode count of each evaluation is the curve's ``episodes`` column where it has one, else
    ``inputs.eval_episodes``; without either, the bounds are NaN (no bands). A success that is not a whole
    number of successes over that count (beyond the CSV's rounding) is a note: the interval then uses the
    nearest count, and says so.
    """
    lc = inp.learning_curve
    episodes = lc.get("episodes")
    steps, success, low, high, notes = [], [], [], [], []
    off = 0
    for i, (step, s) in enumerate(zip(lc["env_steps"], lc["success"], strict=True)):
        if not math.isfinite(s):
            continue
        n_raw = episodes[i] if episodes is not None and math.isfinite(episodes[i]) else inp.eval_episodes
        steps.append(step)
        success.append(s)
        if n_raw is None or n_raw < 1 or not 0 <= s <= 1:
            low.append(math.nan)
            high.append(math.nan)
            continue
        n = round(n_raw)
        k = round(s * n)
        off += abs(k / n - s) > 1e-5
        lo, hi = wilson_interval(k, n)
        low.append(lo)
        high.append(hi)
    if off:
        notes.append(
            f"{off} learning-curve success value(s) are not a whole number of successes over the evaluation "
            "episodes; their Wilson intervals use the nearest count."
        )
    return steps, success, low, high, notes


def _learning_plot(
    inp: ReportInputs, steps: list[float], success: list[float], low: list[float], high: list[float]
) -> str:
    bc, ft = inp.evals["bc"], inp.evals["finetuned"]
    bands = any(math.isfinite(v) for v in low)
    series = [
        Series(
            "evaluation success (fine-tuning)" + (", 95% Wilson band" if bands else ""),
            steps,
            success,
            FT_COLOR,
            band=(low, high) if bands else None,
        ),
        Series(
            f"BC policy at step 0 ({bc.successes}/{bc.n})",
            [0.0],
            [bc.success],
            BC_COLOR,
            errors=([bc.ci[0]], [bc.ci[1]]),
            marker="D",
        ),
    ]
    return line_plot(
        series,
        key="learning-curve",
        title="Success vs environment steps",
        x_label="online environment steps",
        y_label="success rate",
        hlines=[
            HLine(bc.success, f"BC start {fmt_pct(bc.success, 0)} (95% CI band, n={bc.n})", BC_COLOR, bc.ci),
            HLine(ft.success, f"final evaluation {fmt_pct(ft.success, 0)} (n={ft.n})", FINAL_COLOR),
        ],
        y_range=(0.0, 1.0),
        percent=True,
        size=(11.0, 4.0),
    )


def _reach_rows(inp: ReportInputs) -> list[list[str]]:
    lc = inp.learning_curve
    _, y = _finite_pairs(lc["env_steps"], lc["success"])
    wall = lc.get("wall_time")
    rows = []
    for level in inp.levels:
        step = steps_to_reach(lc["env_steps"], lc["success"], level)
        if step is None:
            rows.append([fmt_pct(level, 0), "not reached", f"best evaluation {fmt_pct(max(y)) if y else '—'}", "—"])
            continue
        i = next(
            i for i, (s, v) in enumerate(zip(lc["env_steps"], lc["success"], strict=True)) if s == step and v >= level
        )
        wall_txt = fmt_duration(wall[i]) if wall else "—"
        rows.append([fmt_pct(level, 0), fmt_int(step), f"{fmt_pct(lc['success'][i])} at that evaluation", wall_txt])
    return rows


def _bc_plots(inp: ReportInputs) -> list[str]:
    if inp.bc_curve is None:
        return []
    bc = inp.bc_curve
    x, y = _finite_pairs(bc["step"], bc["success"])
    plots = [
        line_plot(
            [Series("evaluation success", x, y, BC_COLOR)],
            key="bc-success",
            title="BC pretraining: success vs gradient step",
            x_label="BC gradient steps",
            y_label="success rate",
            y_range=(0.0, 1.0),
            percent=True,
            size=(5.6, 2.9),
        )
    ]
    if "loss" in bc:
        lx, ly = _finite_pairs(bc["step"], bc["loss"])
        plots.append(
            line_plot(
                [Series("BC loss", lx, ly, PALETTE[4])],
                key="bc-loss",
                title="BC pretraining: loss",
                x_label="BC gradient steps",
                y_label="loss",
                size=(5.6, 2.9),
            )
        )
    return plots


def _diagnostic_plots(inp: ReportInputs) -> list[str]:
    lc = inp.learning_curve
    plots = []
    columns = [c for c in DIAGNOSTICS if c in lc] + [c for c in lc if c not in DIAGNOSTICS and c not in NOT_DIAGNOSTICS]
    for i, col in enumerate(columns):
        title, ylab = DIAGNOSTICS.get(col, (col.replace("_", " ").capitalize(), col))
        if not any(math.isfinite(v) for v in lc[col]):
            continue
        x, y = _finite_pairs(lc["env_steps"], lc[col])
        plots.append(
            line_plot(
                [Series(col, x, y, PALETTE[i % (len(PALETTE) - 1)], legend=False)],
                key=f"diag-{i}",
                title=title,
                x_label="env steps",
                y_label=ylab,
                size=(4.4, 2.6),
            )
        )
    return plots


# ------------------------------------------------------------------------------------------ page


def _data_hash(summary: dict[str, Any] | None) -> str:
    """The dataset's content hash from the ingest summary (``content_sha256``; ``content_hash`` also read)."""
    summary = summary or {}
    return str(summary.get("content_sha256", summary.get("content_hash", "unknown")))


def _context(inp: ReportInputs) -> dict[str, Any]:
    """Everything ``run.html.j2`` shows, computed and formatted here (the template only lays it out)."""
    bc, ft = inp.evals["bc"], inp.evals["finetuned"]
    steps = [s for s in inp.learning_curve["env_steps"] if math.isfinite(s)]
    total_wall = sum(s.wall_time_s for s in inp.stages)
    cards = [
        ("BC start", fmt_pct(bc.success), f"95% CI {fmt_pct(bc.ci[0])}–{fmt_pct(bc.ci[1])} · n = {bc.n}"),
        ("Fine-tuned", fmt_pct(ft.success), f"95% CI {fmt_pct(ft.ci[0])}–{fmt_pct(ft.ci[1])} · n = {ft.n}"),
        ("Online env steps", fmt_int(max(steps)) if steps else "—", "fine-tuning interaction budget used"),
        ("Pipeline wall time", fmt_duration(total_wall) if inp.stages else "—", f"{len(inp.stages)} stages timed"),
    ]
    # Improvement test: H1 = the BC rate is lower than the fine-tuned one (one-sided Fisher exact).
    verdict = {
        "delta": (ft.success - bc.success) * 100,
        "p_value": fisher_exact_less(ft.successes, ft.n, bc.successes, bc.n),
        "overlap": not (bc.ci[1] < ft.ci[0] or ft.ci[1] < bc.ci[0]),
    }
    c_steps, c_success, c_low, c_high, curve_notes = curve_intervals(inp)
    episodes = sorted({round(v) for v in inp.learning_curve.get("episodes", []) if math.isfinite(v)})
    if episodes:
        episodes_text = f"{', '.join(map(str, episodes))} episodes (curve column 'episodes')"
    else:
        episodes_text = f"{inp.eval_episodes} evaluation episodes"
    learning = {
        "svg": markup(_learning_plot(inp, c_steps, c_success, c_low, c_high)),
        "n_evals": len(c_steps),
        "bands": any(math.isfinite(v) for v in c_low),
        "episodes_text": episodes_text,
        "reach": _reach_rows(inp),
    }
    rows, intervals = [], []
    for (key, label), color in zip(POLICIES, (BC_COLOR, FT_COLOR), strict=True):
        e = inp.evals[key]
        lo, hi = e.ci
        rows.append(
            {
                "label": label,
                "success": e.success,
                "low": lo,
                "high": hi,
                "successes": e.successes,
                "n": e.n,
                "mean_return": e.mean_return,
                "mean_length": e.mean_length,
            }
        )
        intervals.append(Interval(label, e.success, lo, hi, color))
    comparison = {
        "rows": rows,
        "svg": markup(
            interval_plot(
                {"": intervals},
                key="bc-vs-finetuned",
                title="Final success with 95% Wilson intervals",
                x_label="success rate",
                width=11.0,
            )
        ),
    }
    media = [
        {
            "name": m.name,
            "uri": f"data:{m.mime};base64,{base64.b64encode(m.data).decode('ascii')}",
            "video": m.mime.startswith("video/"),
        }
        for m in inp.media
    ]
    ds = inp.data_summary or {}
    rate = ds.get("success_rate")
    provenance = [
        ("git revision", inp.git_rev, True),
        ("data content hash", _data_hash(inp.data_summary), True),
        ("demonstration episodes", str(ds.get("episodes", "—")), False),
        ("demonstration success rate", fmt_pct(rate) if isinstance(rate, int | float) else "—", False),
        (f"{inp.params_label} sha256", hashlib.sha256(inp.params_text.encode("utf-8")).hexdigest(), True),
    ]
    return {
        "title": inp.title,
        "generated_at": inp.generated_at or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "notes": [*inp.notes, *curve_notes],
        "git_rev": inp.git_rev,
        "data_hash": _data_hash(inp.data_summary),
        "cards": cards,
        "bc": bc,
        "ft": ft,
        "verdict": verdict,
        "learning": learning,
        "comparison": comparison,
        "bc_plots": [markup(s) for s in _bc_plots(inp)],
        "diagnostics": [markup(s) for s in _diagnostic_plots(inp)],
        "stages": inp.stages,
        "total_wall": total_wall,
        "media": media,
        "provenance": provenance,
        "params_label": inp.params_label,
        "params_text": inp.params_text,
    }


def build_report(inputs: ReportInputs) -> str:
    """Render the checked inputs as one self-contained HTML document (no scripts, no external resources)."""
    for key, _ in POLICIES:
        if key not in inputs.evals:
            raise ReportInputError(f"report inputs: missing evaluation '{key}'")
    for col in LEARNING_CURVE_REQUIRED:
        if col not in inputs.learning_curve:
            raise ReportInputError(f"report inputs: learning curve has no column '{col}'")
    return render("run.html.j2", **_context(inputs))
