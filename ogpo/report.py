"""The pipeline's HTML report: one self-contained file a researcher can open, archive and trust.

Two steps, so each can be tested alone: ``load_report_inputs`` reads and checks the artifacts the other
stages wrote (a missing *required* file or any corrupt file is a ReportInputError naming it; a missing
*optional* one becomes a note shown at the top of the report), and ``build_report`` turns the checked
inputs into HTML. The report has no JavaScript and no external URL: plots are inline SVG, videos are
base64 data URIs. Success intervals are recomputed from the episode counts (95% Wilson), so the numbers
in the table are the ones this module can vouch for.
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
from html import escape
from pathlib import Path
from typing import Any

from ogpo.errors import OGPOError
from ogpo.stats import fisher_exact_less, steps_to_reach, wilson_interval
from ogpo.svgplot import PALETTE, HLine, Interval, Series, format_percent, interval_plot, line_plot

LEARNING_CURVE_REQUIRED = ("env_steps", "success")
# Diagnostics plotted when present: column -> (title, y label)
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
STAGES = ("ingest", "pretrain_bc", "fit_critic", "finetune", "evaluate")
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
BC_COLOR, FT_COLOR = PALETTE[1], PALETTE[0]


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
    learning_curve: Table  # at least env_steps and success (NaN where no evaluation ran)
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


@dataclass(frozen=True)
class ReportPaths:
    """Where each input lives; the stage fills these in from the pipeline's artifact layout."""

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
) -> ReportInputs:
    """Read and check every artifact. Required: learning curve, eval metrics, params file."""
    notes: list[str] = []
    curve = read_curve_csv(paths.learning_curve, LEARNING_CURVE_REQUIRED)
    _check_steps(paths.learning_curve, curve["env_steps"])
    if not any(math.isfinite(v) for v in curve["success"]):
        notes.append(f"{paths.learning_curve}: no periodic evaluation (success is empty in every row).")
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
    )


# ------------------------------------------------------------------------------------------ formatting


def fmt_pct(p: float, digits: int = 1) -> str:
    return f"{p * 100:.{digits}f}%"


def fmt_int(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{round(v):,}"


def fmt_float(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:,.{digits}f}"


def fmt_duration(seconds: float | None) -> str:
    """'4.2 s', '3 min 12 s', '1 h 02 min': precise enough to compare stages, short enough to scan."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML, header cells are escaped here."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _finite_pairs(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    keep = [i for i, v in enumerate(y) if math.isfinite(v)]
    return [x[i] for i in keep], [y[i] for i in keep]


# ------------------------------------------------------------------------------------------ sections


def _summary_section(inp: ReportInputs) -> str:
    bc, ft = inp.evals["bc"], inp.evals["finetuned"]
    steps = [s for s in inp.learning_curve["env_steps"] if math.isfinite(s)]
    total_wall = sum(s.wall_time_s for s in inp.stages)
    cards = [
        ("BC start", fmt_pct(bc.success), f"95% CI {fmt_pct(bc.ci[0])}–{fmt_pct(bc.ci[1])} · n = {bc.n}"),
        ("Fine-tuned", fmt_pct(ft.success), f"95% CI {fmt_pct(ft.ci[0])}–{fmt_pct(ft.ci[1])} · n = {ft.n}"),
        ("Online env steps", fmt_int(max(steps)) if steps else "—", "fine-tuning interaction budget used"),
        ("Pipeline wall time", fmt_duration(total_wall) if inp.stages else "—", f"{len(inp.stages)} stages timed"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="label">{escape(a)}</div><div class="value">{escape(b)}</div>'
        f'<div class="sub">{escape(c)}</div></div>'
        for a, b, c in cards
    )
    # Improvement test: H1 = the BC rate is lower than the fine-tuned one (one-sided Fisher exact).
    p_value = fisher_exact_less(ft.successes, ft.n, bc.successes, bc.n)
    overlap = not (bc.ci[1] < ft.ci[0] or ft.ci[1] < bc.ci[0])
    delta = (ft.success - bc.success) * 100
    verdict = (
        f"Fine-tuning changed success by <b>{delta:+.1f} percentage points</b> "
        f"({bc.successes}/{bc.n} → {ft.successes}/{ft.n}); one-sided Fisher exact test that fine-tuning "
        f"improved success: p = {p_value:.3g}. The 95% Wilson intervals "
        f"<b>{'overlap' if overlap else 'do not overlap'}</b>."
    )
    return f'<section><div class="cards">{card_html}</div><p class="verdict">{verdict}</p></section>'


def _notes_section(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return f'<section class="notes"><h2>Notes on missing or skipped inputs</h2><ul>{items}</ul></section>'


def _learning_section(inp: ReportInputs) -> str:
    lc = inp.learning_curve
    x, y = _finite_pairs(lc["env_steps"], lc["success"])
    bc, ft = inp.evals["bc"], inp.evals["finetuned"]
    plot = line_plot(
        [Series("evaluation success (fine-tuning)", x, y, FT_COLOR)],
        title="Success vs environment steps",
        x_label="online environment steps",
        y_label="success rate",
        hlines=[
            HLine(bc.success, f"BC start {fmt_pct(bc.success, 0)} (95% CI band, n={bc.n})", BC_COLOR, bc.ci),
            HLine(ft.success, f"final evaluation {fmt_pct(ft.success, 0)} (n={ft.n})", PALETTE[2]),
        ],
        y_range=(0.0, 1.0),
        y_format=format_percent,
        width=1100,
        height=400,
    )
    wall = lc.get("wall_time")
    rows = []
    for level in inp.levels:
        step = steps_to_reach(lc["env_steps"], lc["success"], level)
        if step is None:
            best = max(y) if y else math.nan
            rows.append([fmt_pct(level, 0), "not reached", f"best evaluation {fmt_pct(best) if y else '—'}", "—"])
            continue
        i = next(
            i for i, (s, v) in enumerate(zip(lc["env_steps"], lc["success"], strict=True)) if s == step and v >= level
        )
        wall_txt = fmt_duration(wall[i]) if wall else "—"
        rows.append([fmt_pct(level, 0), fmt_int(step), f"{fmt_pct(lc['success'][i])} at that evaluation", wall_txt])
    reach = _table(["success level", "env steps to reach", "evaluated success", "fine-tune wall time"], rows)
    n_evals = len(y)
    return (
        '<section id="learning"><h2>Fine-tuning learning curve</h2>'
        f'<div class="figure">{plot}</div>'
        f'<p class="caption">Periodic evaluation success ({n_evals} evaluations) against online environment '
        "steps. The dashed orange line is the BC start with its 95% Wilson interval shaded; the green line "
        "is the final evaluation on the fixed evaluation seeds.</p>"
        "<h3>Environment steps to reach a success level</h3>"
        f"{reach}"
        '<p class="caption">First periodic evaluation at or above the level; single evaluations are noisy, '
        "so treat these as indicative.</p></section>"
    )


def _comparison_section(inp: ReportInputs) -> str:
    rows, intervals = [], []
    for (key, label), color in zip(POLICIES, (BC_COLOR, FT_COLOR), strict=True):
        e = inp.evals[key]
        lo, hi = e.ci
        rows.append(
            [
                escape(label),
                f"<b>{fmt_pct(e.success)}</b>",
                f"{fmt_pct(lo)} – {fmt_pct(hi)}",
                f"{e.successes} / {e.n}",
                fmt_float(e.mean_return, 2),
                fmt_float(e.mean_length, 1),
            ]
        )
        intervals.append(Interval(label, e.success, lo, hi, color))
    table = _table(
        ["policy", "success", "95% Wilson interval", "successes / episodes", "mean return", "mean episode length"],
        rows,
        "numeric",
    )
    plot = interval_plot(intervals, title="Final success with 95% Wilson intervals", x_label="success rate", width=1100)
    return (
        '<section id="comparison"><h2>BC vs fine-tuned</h2>'
        f'{table}<div class="figure">{plot}</div>'
        '<p class="caption">Both policies evaluated on the same fixed seeds. Intervals are recomputed here '
        "from the episode counts.</p></section>"
    )


def _bc_section(inp: ReportInputs) -> str:
    if inp.bc_curve is None:
        return ""
    bc = inp.bc_curve
    x, y = _finite_pairs(bc["step"], bc["success"])
    plots = [
        line_plot(
            [Series("evaluation success", x, y, BC_COLOR)],
            title="BC pretraining: success vs gradient step",
            x_label="BC gradient steps",
            y_label="success rate",
            y_range=(0.0, 1.0),
            y_format=format_percent,
            width=560,
            height=280,
        )
    ]
    if "loss" in bc:
        lx, ly = _finite_pairs(bc["step"], bc["loss"])
        plots.append(
            line_plot(
                [Series("BC loss", lx, ly, PALETTE[4])],
                title="BC pretraining: loss",
                x_label="BC gradient steps",
                y_label="loss",
                width=560,
                height=280,
            )
        )
    figures = "".join(f'<div class="figure">{p}</div>' for p in plots)
    return (
        '<section id="bc"><h2>BC pretraining</h2>'
        f'<div class="grid2">{figures}</div>'
        '<p class="caption">BC stops at the target success (a deliberately weak start) or its step limit.</p>'
        "</section>"
    )


def _diagnostics_section(inp: ReportInputs) -> str:
    lc = inp.learning_curve
    plots = []
    for i, (col, (title, ylab)) in enumerate(DIAGNOSTICS.items()):
        if col not in lc or not any(math.isfinite(v) for v in lc[col]):
            continue
        x, y = _finite_pairs(lc["env_steps"], lc[col])
        color = PALETTE[i % (len(PALETTE) - 1)]
        plots.append(
            line_plot([Series(col, x, y, color)], title=title, x_label="env steps", y_label=ylab, width=440, height=250)
        )
    if not plots:
        return ""
    figures = "".join(f'<div class="figure">{p}</div>' for p in plots)
    return f'<section id="diagnostics"><h2>Training diagnostics</h2><div class="grid3">{figures}</div></section>'


def _timing_section(inp: ReportInputs) -> str:
    if not inp.stages:
        return ""
    rows = [
        [
            f"<code>{escape(s.stage)}</code>",
            fmt_duration(s.wall_time_s),
            fmt_int(s.env_steps),
            fmt_float(s.env_steps_per_s),
            fmt_int(s.updates),
            fmt_float(s.updates_per_s, 2),
        ]
        for s in inp.stages
    ]
    total = sum(s.wall_time_s for s in inp.stages)
    rows.append(["<b>total</b>", f"<b>{fmt_duration(total)}</b>", "", "", "", ""])
    table = _table(["stage", "wall time", "env steps", "env steps / s", "updates", "updates / s"], rows, "numeric")
    return f'<section id="timing"><h2>Stage timings and throughput</h2>{table}</section>'


def _media_section(inp: ReportInputs) -> str:
    if not inp.media:
        return (
            '<section id="videos"><h2>Rollouts</h2><p class="caption">No rollout videos were available '
            "(see the notes above).</p></section>"
        )
    items = []
    for m in inp.media:
        uri = f"data:{m.mime};base64,{base64.b64encode(m.data).decode('ascii')}"
        name = escape(m.name)
        if m.mime.startswith("video/"):
            tag = f'<video src="{uri}" controls loop muted playsinline></video>'
        else:
            tag = f'<img src="{uri}" alt="rollout {name}">'
        items.append(f"<figure>{tag}<figcaption>{name}</figcaption></figure>")
    return f'<section id="videos"><h2>Rollouts</h2><div class="media">{"".join(items)}</div></section>'


def _provenance_section(inp: ReportInputs) -> str:
    ds = inp.data_summary or {}
    params_hash = hashlib.sha256(inp.params_text.encode("utf-8")).hexdigest()
    rate = ds.get("success_rate")
    rows = [
        ["git revision", f"<code>{escape(inp.git_rev)}</code>"],
        [
            "data content hash",
            f"<code>{escape(str(ds.get('content_sha256', ds.get('content_hash', 'unknown'))))}</code>",
        ],
        ["demonstration episodes", escape(str(ds.get("episodes", "—")))],
        ["demonstration success rate", fmt_pct(rate) if isinstance(rate, int | float) else "—"],
        ["params.yaml sha256", f"<code>{params_hash}</code>"],
    ]
    table = _table(["item", "value"], rows, "kv")
    return (
        '<section id="provenance"><h2>Provenance and parameters</h2>'
        f'{table}<h3>params.yaml</h3><pre class="params"><code>{escape(inp.params_text)}</code></pre></section>'
    )


CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: #1d1d1f; background: #f6f7f9;
       margin: 0; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header .meta { color: #555; font-size: 13px; }
header code, td code { font-size: 12px; }
section { background: #fff; border: 1px solid #e1e4e8; border-radius: 8px; padding: 16px 20px; margin: 16px 0; }
h2 { font-size: 19px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 18px 0 8px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { border: 1px solid #e1e4e8; border-radius: 6px; padding: 10px 14px; background: #fbfcfd; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #666; }
.card .value { font-size: 28px; font-weight: 650; }
.card .sub { font-size: 12px; color: #555; }
.verdict { margin: 14px 0 0; }
.notes { background: #fff8e6; border-color: #f0d48a; }
.notes ul { margin: 0; padding-left: 20px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e6e8eb; }
th { background: #f0f2f5; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.numeric td:not(:first-child), table.numeric th:not(:first-child) { text-align: right;
  font-variant-numeric: tabular-nums; }
table.kv td:first-child { width: 240px; color: #444; }
.figure { margin: 10px 0; }
svg.plot { display: block; max-width: 100%; height: auto; border: 1px solid #eceef1; border-radius: 4px; }
.grid2 { display: grid; grid-template-columns: repeat(2, 1fr); gap: 12px; }
.grid3 { display: grid; grid-template-columns: repeat(3, 1fr); gap: 10px; }
.caption { color: #555; font-size: 13px; margin: 6px 0 0; }
.media { display: flex; flex-wrap: wrap; gap: 14px; }
.media figure { margin: 0; text-align: center; font-size: 12px; color: #555; }
.media img, .media video { width: 256px; border: 1px solid #ddd; border-radius: 4px; }
.media img { image-rendering: pixelated; }  /* renders are ~100 px: enlarge without blurring */
pre.params { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 12px; overflow-x: auto;
  font-size: 12.5px; max-height: 640px; }
@media (max-width: 900px) { .cards, .grid2, .grid3 { grid-template-columns: 1fr; } }
@media print { body { background: #fff; } section { break-inside: avoid; } }
"""


def build_report(inputs: ReportInputs) -> str:
    """Render the checked inputs as one self-contained HTML document (no scripts, no external resources)."""
    for key, _ in POLICIES:
        if key not in inputs.evals:
            raise ReportInputError(f"report inputs: missing evaluation '{key}'")
    for col in LEARNING_CURVE_REQUIRED:
        if col not in inputs.learning_curve:
            raise ReportInputError(f"report inputs: learning curve has no column '{col}'")
    generated = inputs.generated_at or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    data_hash = (inputs.data_summary or {}).get(
        "content_sha256", (inputs.data_summary or {}).get("content_hash", "unknown")
    )
    meta = (
        f"git <code>{escape(inputs.git_rev[:12])}</code> · data <code>{escape(str(data_hash)[:16])}</code> · "
        f"generated {escape(generated)}"
    )
    body = "".join(
        [
            f'<header><h1>{escape(inputs.title)}</h1><div class="meta">{meta}</div></header>',
            _summary_section(inputs),
            _notes_section(inputs.notes),
            _learning_section(inputs),
            _comparison_section(inputs),
            _bc_section(inputs),
            _diagnostics_section(inputs),
            _timing_section(inputs),
            _media_section(inputs),
            _provenance_section(inputs),
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(inputs.title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _data_hash(summary: dict[str, Any]) -> str:
    """The dataset's content hash from the ingest summary (``content_sha256``; ``content_hash`` also read)."""
    return str(summary.get("content_sha256", summary.get("content_hash", "unknown")))
