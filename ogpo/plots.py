"""Matplotlib figures for the HTML reports, serialized as inline SVG that is byte-reproducible.

Why this shape: the reports (``ogpo.report`` for one run, ``ogpo.study.report`` for a study) must be one
self-contained HTML file, identical for identical inputs so that DVC sees no change when nothing changed.
So every figure here is

- drawn on a ``matplotlib.figure.Figure`` with the **Agg** canvas attached explicitly: no pyplot, no global
  figure registry, no display, no dependence on the caller's backend (``matplotlib.use`` is never called, so a
  notebook that imports this keeps its own backend);
- styled and saved inside one ``rc_context`` that pins fonts (DejaVu Sans, which ships with matplotlib, so
  tick layout does not depend on the fonts of the machine), ``svg.fonttype: none`` (text stays text, no glyph
  paths) and ``svg.hashsalt`` = the figure's ``key`` (the ids of clip paths and markers are hashes of that
  salt: deterministic, and distinct between the figures of one page as long as their keys differ);
- stripped of the XML prolog, the DOCTYPE, the RDF metadata and the namespace declarations (HTML5 parses
  inline SVG without them), so the page holds no URL at all;
- given ids prefixed with the key (matplotlib numbers its groups ``figure_1``, ``axes_1``, ... afresh in
  every file), so the ids of a page with many figures stay unique.

Colours are the Okabe-Ito palette: distinguishable with the common forms of colour blindness and in greyscale.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000")
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.0,
    "axes.edgecolor": "#444444",
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "svg.fonttype": "none",
    "svg.image_inline": True,
    "path.simplify": False,  # exact data points, not a resampled line
}
_SVG_START = re.compile(r"<svg\b")
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.DOTALL)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_SIZE = re.compile(r'\s+(?:width|height)="[\d.]+pt"')
_KEY = re.compile(r"[A-Za-z][\w-]*")


@dataclass(frozen=True)
class Series:
    """One line. NaN y values break the line (rows without an evaluation); ``band`` shades (low, high) per x."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = PALETTE[0]
    band: tuple[Sequence[float], Sequence[float]] | None = None  # e.g. a CI at each point
    errors: tuple[Sequence[float], Sequence[float]] | None = None  # (low, high) drawn as error bars
    markers: bool | None = None  # None: draw markers when there are few points
    width: float = 1.8
    alpha: float = 1.0
    legend: bool = True  # False for the thin per-seed lines under an aggregate
    marker: str = "o"


@dataclass(frozen=True)
class HLine:
    """A horizontal reference level, optionally with a shaded band (a confidence interval)."""

    y: float
    label: str
    color: str = PALETTE[1]
    band: tuple[float, float] | None = None


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval, drawn as a dot and a whisker on one row."""

    label: str
    value: float
    low: float
    high: float
    color: str = PALETTE[0]


def format_number(v: float, _pos: object = None) -> str:
    """Compact tick label: 0, 0.25, 1.5k, 20k, 2M, 1e-05 (wide env-step axes stay readable)."""
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


@contextmanager
def _style(key: str) -> Iterator[None]:
    if not _KEY.fullmatch(key):
        raise ValueError(f"figure key must be a name like 'learning-curve' (it salts the SVG ids), got {key!r}")
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": f"ogpo-{key}"}):
        yield


def new_figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure (inches) on an explicit Agg canvas with ``ncols`` axes side by side. Call inside ``_style``."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def figure_svg(fig: Figure, key: str, title: str) -> str:
    """Serialize ``fig`` as an inline ``<svg class="plot">`` element (no prolog, metadata or URLs)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    start = _SVG_START.search(text)
    if start is None:  # pragma: no cover - matplotlib always writes an <svg> root
        raise RuntimeError("matplotlib wrote no <svg> element")
    svg = _METADATA.sub("", text[start.start() :])
    head_end = svg.index(">")
    head = _SIZE.sub("", _XMLNS.sub("", svg[:head_end]))  # CSS sizes the plot; the viewBox keeps its aspect
    label = html.escape(title, quote=True)
    head = head.replace("<svg", f'<svg class="plot" id="fig-{key}" role="img" aria-label="{label}"', 1)
    body = svg[head_end:].replace(' id="', f' id="{key}-').replace("url(#", f"url(#{key}-")
    body = body.replace('href="#', f'href="#{key}-')
    return head + body.rstrip() + "\n"


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#888888")


def _draw_series(ax: Axes, s: Series, gid: str) -> bool:
    """Draw one series (SVG group ids ``<key>-<gid>`` and ``<key>-<gid>-band``); returns whether it had data."""
    x = [float(v) for v in s.x]
    y = [math.nan if v is None else float(v) for v in s.y]
    if not any(math.isfinite(v) for v in y):
        return False
    n_points = sum(math.isfinite(v) for v in y)
    markers = s.markers if s.markers is not None else n_points <= 30
    label = s.label if s.legend else "_nolegend_"
    if s.band is not None:
        lo, hi = ([math.nan if v is None else float(v) for v in b] for b in s.band)
        keep = [i for i in range(len(x)) if math.isfinite(lo[i]) and math.isfinite(hi[i])]
        if keep:
            band = ax.fill_between(
                [x[i] for i in keep],
                [lo[i] for i in keep],
                [hi[i] for i in keep],
                color=s.color,
                alpha=0.18 * s.alpha,
                linewidth=0,
            )
            band.set_gid(f"{gid}-band")
    if s.errors is not None:
        lo, hi = (list(map(float, b)) for b in s.errors)
        yerr = [
            [max(0.0, v - a) for v, a in zip(y, lo, strict=True)],
            [max(0.0, b - v) for v, b in zip(y, hi, strict=True)],
        ]
        bars = ax.errorbar(x, y, yerr=yerr, fmt=s.marker, color=s.color, capsize=4, markersize=6, label=label, zorder=4)
        bars.lines[0].set_gid(gid)
        return True
    # Keep NaN in the data: matplotlib breaks the line there, which is what a missing evaluation means
    (line,) = ax.plot(
        x,
        y,
        color=s.color,
        linewidth=s.width,
        alpha=s.alpha,
        marker=s.marker if markers else None,
        markersize=3.5,
        label=label,
    )
    line.set_gid(gid)
    return True


def line_plot(
    series: Sequence[Series],
    *,
    key: str,
    title: str,
    x_label: str,
    y_label: str,
    hlines: Sequence[HLine] = (),
    y_range: tuple[float, float] | None = None,
    percent: bool = False,
    size: tuple[float, float] = (6.0, 3.2),
) -> str:
    """Lines (with optional CI bands and error bars) and reference levels, as inline SVG."""
    with _style(key):
        fig, (ax,) = new_figure(*size)
        drawn = [_draw_series(ax, s, f"series-{i}") for i, s in enumerate(series)]
        for j, h in enumerate(hlines):
            if h.band is not None:
                ax.axhspan(h.band[0], h.band[1], color=h.color, alpha=0.12, linewidth=0)
            line = ax.axhline(h.y, color=h.color, linestyle="--", linewidth=1.4, label=h.label)
            line.set_gid(f"hline-{j}")  # the SVG id is "<key>-hline-<j>"
        if not any(drawn):
            _no_data(ax)
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.xaxis.set_major_formatter(FuncFormatter(format_number))
        if percent:
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(format_number))
        if y_range is not None:
            pad = 0.03 * (y_range[1] - y_range[0])
            ax.set_ylim(y_range[0] - pad, y_range[1] + pad)
        if any(drawn) and (any(s.legend for s in series) or hlines):
            ax.legend(loc="best")
        return figure_svg(fig, key, title)


def interval_plot(
    panels: Mapping[str, Sequence[Interval]],
    *,
    key: str,
    title: str,
    x_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    percent: bool = True,
    reference: float | None = None,
    width: float = 6.0,
) -> str:
    """Dot-and-whisker rows, one panel per entry of ``panels`` (e.g. "IQM" and "Mean"), as inline SVG.

    ``reference`` draws a vertical dotted line (e.g. 0.5 for a probability of improvement).
    """
    rows = max((len(v) for v in panels.values()), default=0)
    with _style(key):
        fig, axes = new_figure(width, 0.9 + 0.42 * max(rows, 1), ncols=max(len(panels), 1))
        for ax, (name, intervals) in zip(axes, panels.items(), strict=False):
            labels = [iv.label for iv in intervals]
            for i, iv in enumerate(intervals):
                y = len(intervals) - 1 - i  # first interval on top
                ax.hlines(y, iv.low, iv.high, color=iv.color, linewidth=5, alpha=0.45)
                ax.plot([iv.value], [y], marker="|", markersize=16, markeredgewidth=2.5, color=iv.color)
            if not intervals:
                _no_data(ax)
            ax.set_yticks(range(len(intervals)), labels[::-1])
            ax.set_ylim(-0.6, max(len(intervals), 1) - 0.4)
            ax.set_xlim(*x_range)
            ax.grid(axis="y", visible=False)
            if reference is not None:
                ax.axvline(reference, color="#666666", linestyle=":", linewidth=1.2)
            if percent:
                ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            ax.set_xlabel(x_label)
            if name:
                ax.set_title(name)
            if ax is not axes[0]:
                ax.tick_params(labelleft=False)
        fig.suptitle(title, fontweight="bold", fontsize=10.5)
        return figure_svg(fig, key, title)
