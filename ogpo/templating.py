"""The HTML report templates (``ogpo/templates/``) and the number formats they share.

One jinja2 environment for every report page (single run, study): templates extend ``base.html.j2`` (page
frame, CSS, header, notes), so the pages look alike and a style change is made once. Autoescape is on, so
every string from an input file (titles, notes, params text, algorithm names) is escaped; only the SVG from
``ogpo.plots`` and data URIs are passed through as ``Markup``. ``StrictUndefined`` turns a misspelt template
variable into an error instead of an empty cell.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup


def fmt_pct(p: float | None, digits: int = 1) -> str:
    return "—" if p is None or not math.isfinite(p) else f"{p * 100:.{digits}f}%"


def fmt_int(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{round(v):,}"


def fmt_float(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:,.{digits}f}"


def fmt_step(v: float | None) -> str:
    """An env-step count, or "not reached" for +inf / None (a censored run or estimate)."""
    return "not reached" if v is None or math.isinf(v) else fmt_int(v)


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


FILTERS = {
    "pct": fmt_pct,
    "int": fmt_int,
    "float": fmt_float,
    "step": fmt_step,
    "duration": fmt_duration,
}


@cache
def environment() -> jinja2.Environment:
    """The shared environment (built once; templates are compiled on first use and cached by jinja2)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ogpo", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def render(template: str, **context: Any) -> str:
    """Render ``ogpo/templates/<template>`` with ``context``."""
    return environment().get_template(template).render(**context)


def markup(html: str) -> Markup:
    """Mark trusted HTML (an SVG from ``ogpo.plots``) so that autoescape leaves it as is."""
    return Markup(html)
