"""Small inline-SVG charts for the HTML report: line plots and interval (dot-and-whisker) plots.

Why hand-written SVG: the report must be one self-contained file that renders anywhere (no JavaScript, no
CDN), and no plotting library is a dependency. These charts only need axes with readable ticks, a few
series with gaps for missing values, reference lines with shaded bands, and a legend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

# Okabe-Ito: distinguishable with the common forms of colour blindness, and in greyscale print.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000")
_AXIS = "#444"
_GRID = "#e3e3e3"
_LEFT, _RIGHT = 62, 14  # plot-area margins (room for y tick labels)
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


@dataclass(frozen=True)
class Series:
    """One line: NaN y values break the line (e.g. rows without an evaluation)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = PALETTE[0]
    markers: bool | None = None  # None: draw markers when there are few points


@dataclass(frozen=True)
class HLine:
    """A horizontal reference level, optionally with a shaded band (a confidence interval)."""

    y: float
    label: str
    color: str = PALETTE[1]
    band: tuple[float, float] | None = None


def nice_step(lo: float, hi: float, target: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``target`` intervals on [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"nice_step needs finite lo < hi, got {lo}, {hi}")
    span = hi - lo
    power = 10 ** math.floor(math.log10(span / max(1, target)))
    # The candidate whose number of intervals is closest to the target (ties: the larger step).
    return min((m * power for m in (10, 5, 2.5, 2, 1, 0.5)), key=lambda st: abs(span / st - target))


def nice_ticks(lo: float, hi: float, target: int = 5, step: float | None = None) -> list[float]:
    """Round tick values inside [lo, hi], ``step`` apart (default: ``nice_step``)."""
    if hi == lo and math.isfinite(lo):
        return [lo]
    step = step or nice_step(lo, hi, target)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def format_number(v: float) -> str:
    """Compact tick label: 0, 0.25, 1.5k, 2M, 1e-05."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def format_percent(v: float) -> str:
    return f"{v * 100:.0f}%"


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _domain(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float, list[float]]:
    """Axis range and ticks: ``fixed`` if given, else the data range widened to the enclosing round ticks."""
    if fixed is not None:
        lo, hi = fixed
        return lo, hi, nice_ticks(lo, hi)
    if not values:
        return 0.0, 1.0, nice_ticks(0.0, 1.0)
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(lo, hi)
    lo = round(math.floor(lo / step + 1e-9) * step, 12)
    hi = round(math.ceil(hi / step - 1e-9) * step, 12)
    return lo, hi, nice_ticks(lo, hi, step=step)


class _Frame:
    """Maps data coordinates to pixels inside the plot area and draws axes, grid and labels."""

    def __init__(self, width: int, height: int, legend_rows: int) -> None:
        self.width, self.height = width, height
        self.left, self.right = _LEFT, _RIGHT
        self.top = 30 + 18 * legend_rows
        self.bottom = 46

    def setup(self, x_dom: tuple[float, float], y_dom: tuple[float, float]) -> None:
        self.x0, self.x1 = x_dom
        self.y0, self.y1 = y_dom

    def px(self, x: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (x - self.x0) / span * (self.width - self.left - self.right)

    def py(self, y: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - self.bottom - (y - self.y0) / span * (self.height - self.top - self.bottom)

    def clamp_y(self, y: float) -> float:
        return min(max(y, self.y0), self.y1)


def _open_svg(width: int, height: int, title: str) -> list[str]:
    t = escape(title)
    return [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{t}" style="{_FONT}">',
        f"<title>{t}</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="14" font-weight="600" '
        f'fill="#222">{t}</text>',
    ]


def _axes(
    f: _Frame,
    x_ticks: list[float],
    y_ticks: list[float],
    x_label: str,
    y_label: str,
    x_fmt: Callable[[float], str],
    y_fmt: Callable[[float], str],
) -> list[str]:
    out = []
    bottom, right = f.height - f.bottom, f.width - f.right
    for t in y_ticks:
        y = f.py(t)
        out.append(f'<line x1="{f.left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_GRID}"/>')
        out.append(
            f'<text x="{f.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{_AXIS}">'
            f"{escape(y_fmt(t))}</text>"
        )
    for t in x_ticks:
        x = f.px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{f.top}" y2="{bottom}" stroke="{_GRID}"/>')
        out.append(
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11" fill="{_AXIS}">'
            f"{escape(x_fmt(t))}</text>"
        )
    out.append(
        f'<rect x="{f.left}" y="{f.top}" width="{right - f.left}" height="{bottom - f.top}" fill="none" '
        f'stroke="{_AXIS}"/>'
    )
    out.append(
        f'<text x="{(f.left + right) / 2:.1f}" y="{f.height - 8}" text-anchor="middle" font-size="12" '
        f'fill="#222">{escape(x_label)}</text>'
    )
    cy = (f.top + bottom) / 2
    out.append(
        f'<text x="14" y="{cy:.1f}" text-anchor="middle" font-size="12" fill="#222" '
        f'transform="rotate(-90 14 {cy:.1f})">{escape(y_label)}</text>'
    )
    return out


_CHAR_W = 6.7  # approximate advance of a 12 px sans-serif character


def _legend_layout(items: list[tuple[str, str, bool]], width: int, left: int, right: int) -> list[tuple[float, int]]:
    """(x, row) for each legend entry, wrapping to a new row instead of running off the plot."""
    positions, x, row = [], float(left), 0
    for label, _, _ in items:
        w = 28 + _CHAR_W * len(label)
        if x > left and x + w > width - right:
            x, row = float(left), row + 1
        positions.append((x, row))
        x += w + 18
    return positions


def _legend(items: list[tuple[str, str, bool]], positions: list[tuple[float, int]]) -> list[str]:
    """Legend entries under the title: a line sample (dashed for reference levels) and the label."""
    out = []
    for (label, color, dashed), (x, row) in zip(items, positions, strict=True):
        y = 38.0 + 18 * row
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(
            f'<line x1="{x:.1f}" x2="{x + 22:.1f}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" '
            f'stroke-width="2.5"{dash}/>'
        )
        out.append(f'<text x="{x + 28:.1f}" y="{y}" font-size="12" fill="#222">{escape(label)}</text>')
    return out


def line_plot(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    hlines: Sequence[HLine] = (),
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    x_format: Callable[[float], str] = format_number,
    y_format: Callable[[float], str] = format_number,
    width: int = 720,
    height: int = 320,
) -> str:
    """An inline ``<svg>`` line chart. Series with no finite point are listed as "(no data)"."""
    xs = [v for s in series for v in _finite(s.x)]
    ys = [v for s in series for v in _finite(s.y)]
    for h in hlines:
        ys.extend(_finite([h.y, *(h.band or ())]))
    legend = [(s.label + ("" if _finite(s.y) else " (no data)"), s.color, False) for s in series]
    legend += [(h.label, h.color, True) for h in hlines]
    layout = _legend_layout(legend, width, _LEFT, _RIGHT)
    f = _Frame(width, height, 1 + max((row for _, row in layout), default=-1))
    x_lo, x_hi, x_ticks = _domain(xs, x_range)
    y_lo, y_hi, y_ticks = _domain(ys, y_range)
    f.setup((x_lo, x_hi), (y_lo, y_hi))

    out = _open_svg(width, height, title)
    out += _axes(f, x_ticks, y_ticks, x_label, y_label, x_format, y_format)
    for h in hlines:
        if h.band is not None and all(map(math.isfinite, h.band)):
            top, bot = f.py(f.clamp_y(max(h.band))), f.py(f.clamp_y(min(h.band)))
            out.append(
                f'<rect x="{f.left}" y="{top:.1f}" width="{width - f.left - f.right}" '
                f'height="{max(bot - top, 0.5):.1f}" fill="{h.color}" fill-opacity="0.12"/>'
            )
        if math.isfinite(h.y):
            y = f.py(f.clamp_y(h.y))
            out.append(
                f'<line class="hline" x1="{f.left}" x2="{width - f.right}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{h.color}" stroke-width="2" stroke-dasharray="6 4"/>'
            )
    for s in series:
        out += _draw_series(f, s)
    if not xs:
        out.append(
            f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" font-size="13" '
            f'fill="#888">no data</text>'
        )
    out += _legend(legend, layout)
    out.append("</svg>")
    return "\n".join(out)


def _draw_series(f: _Frame, s: Series) -> list[str]:
    """A polyline per run of finite points (NaN breaks the line) plus optional point markers."""
    if len(s.x) != len(s.y):
        raise ValueError(f"series {s.label!r}: {len(s.x)} x values but {len(s.y)} y values")
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(s.x, s.y, strict=True):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append((f.px(x), f.py(y)))
    points = [p for seg in segments for p in seg]
    out = []
    for seg in segments:
        if len(seg) >= 2:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            out.append(
                f'<polyline class="series" points="{coords}" fill="none" stroke="{s.color}" stroke-width="2" '
                f'stroke-linejoin="round"/>'
            )
    markers = s.markers if s.markers is not None else len(points) <= 60
    if markers or len(points) == 1:
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"/>' for x, y in points]
    return out


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval, drawn as a dot with whiskers (e.g. success with 95% Wilson)."""

    label: str
    value: float
    low: float
    high: float
    color: str = PALETTE[0]


def interval_plot(
    rows: Sequence[Interval],
    *,
    title: str,
    x_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    x_format: Callable[[float], str] = format_percent,
    width: int = 720,
) -> str:
    """Horizontal dot-and-whisker chart: one row per estimate, so overlap of intervals is visible at once."""
    row_h = 34
    height = 30 + 46 + row_h * max(1, len(rows)) + 8
    f = _Frame(width, height, 0)
    f.left = 130
    f.setup(x_range, (0.0, float(max(1, len(rows)))))
    out = _open_svg(width, height, title)
    out += _axes(f, nice_ticks(*x_range), [], x_label, "", x_format, format_number)
    for i, r in enumerate(rows):
        y = f.py(len(rows) - i - 0.5)
        lo, hi, v = f.px(r.low), f.px(r.high), f.px(r.value)
        out.append(
            f'<text x="{f.left - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="#222">'
            f"{escape(r.label)}</text>"
        )
        out.append(f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{r.color}" stroke-width="3"/>')
        for end in (lo, hi):
            out.append(
                f'<line x1="{end:.1f}" x2="{end:.1f}" y1="{y - 7:.1f}" y2="{y + 7:.1f}" stroke="{r.color}" '
                f'stroke-width="2"/>'
            )
        out.append(f'<circle cx="{v:.1f}" cy="{y:.1f}" r="5.5" fill="{r.color}" stroke="#fff" stroke-width="1.5"/>')
    out.append("</svg>")
    return "\n".join(out)
