"""The study report page: content from ogpo.study.aggregate, laid out in the shared templates, rendered by Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ogpo.errors import ConfigError
from ogpo.stats import wilson_interval
from ogpo.study import aggregate as ag
from ogpo.study.report import build_study_report
from ogpo.templating import fmt_pct, fmt_step
from tests.browser import Dom, assert_screenshot_shows_plots, needs_chromium, rendered_dom
from tests.ogpo.study.test_aggregate import EPISODES, make_rows

STEPS = (0, 1000, 2000, 3000)
# successes out of 20 at each evaluation: ogpo+ca reaches every level; qc seeds 0 and 2 never reach 50%
SPEC = {
    "ogpo+ca": {0: [4, 12, 17, 19], 1: [5, 11, 16, 20], 2: [3, 14, 18, 18]},
    "dsrl": {0: [4, 8, 11, 13], 1: [5, 9, 12, 17], 2: [3, 6, 8, 9]},
    "qc": {0: [4, 5, 6, 7], 1: [4, 6, 10, 11], 2: [3, 4, 5, 6]},
}
REPS = 200
WALL = {(a, s): 100.0 * (3 - i) + s for i, a in enumerate(SPEC) for s in SPEC[a]}
PROVENANCE = {
    "git rev": "0123abcd" * 5,
    "study file": "name: toy-study\nalgorithms: [ogpo+ca, dsrl, qc]\nseeds: 3\n",
    "data hash": "feedface" * 8,
    "CPU": "Toy CPU @ 1 GHz",
    "GPU": "",
}


def _build(spec=SPEC, **kw) -> str:
    kw = {"title": "Study toy", "provenance": PROVENANCE, "wall_clock": WALL, "reps": REPS, **kw}
    return build_study_report(make_rows(spec, steps=STEPS), generated_at="2024-05-06T07:08:09+00:00", **kw)


@pytest.fixture(scope="module")
def html() -> str:
    return _build(wall_clock={k: v for k, v in WALL.items() if k != ("qc", 2)})


def _dom(html: str) -> Dom:
    dom = Dom()
    dom.feed(html)
    return dom


def _rows(html: str, section: str) -> list[str]:
    """The text of each body row of the (first) table in the section with id ``section``."""
    start = html.index(f'<section id="{section}">')
    part = html[start : html.index("</section>", start)]
    body = part[part.index("<tbody>") :]
    return [" ".join(re.sub(r"<[^>]+>", " ", r).split()) for r in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)]


def test_study_report_content(html: str) -> None:
    dom = _dom(html)
    # curves, final IQM/mean intervals, performance profile, probability of improvement
    assert dom.counts["svg"] == 4 and html.count('<svg class="plot"') == 4
    assert dom.counts["table"] == 5  # steps-to, final, wall-clock, runs, provenance
    assert "<script" not in html and "http://" not in html and "https://" not in html
    text = dom.joined
    for algo in SPEC:
        assert text.count(algo) >= 5  # legend, tables
    summary = ag.summarize(make_rows(SPEC, steps=STEPS), "ogpo+ca", REPS, 0)

    steps = _rows(html, "steps-to")
    assert [r.split()[0] for r in steps] == list(SPEC)
    for row, (algo, a) in zip(steps, summary["algorithms"].items(), strict=True):
        for label in ("50%", "80%", "90%"):
            s = a["steps_to"][label]
            lo, hi = wilson_interval(s["reached"], 3)
            reached = f"{s['reached']}/3 ({fmt_pct(lo, 0)} – {fmt_pct(hi, 0)})"
            assert reached in row, (algo, label, row)
            if s["median"] is not None or s["ci"][0] is not None:
                assert f"{fmt_step(s['median'])} [{fmt_step(s['ci'][0])} – {fmt_step(s['ci'][1])}]" in row
    assert steps[0].startswith("ogpo+ca 1,000 [1,000 – 1,000] 3/3")  # every seed at 60%+ by step 1000
    # qc: one seed of three reached 50% (at 2000): fewer than half, so the estimate is "not reached"
    assert steps[2].startswith("qc not reached [2,000 – not reached] 1/3") and "0/3" in steps[2]

    runs = _rows(html, "runs")
    assert len(runs) == 9
    assert runs[6] == f"qc 0 3,000 35.0% (7/20) {_wilson(7)} never never never 1 min 40 s"
    assert runs[7].startswith("qc 1 3,000 55.0% (11/20)") and " 2,000 never never " in runs[7]
    assert runs[8].endswith("never never never —")  # no wall clock for qc seed 2
    assert runs[0] == f"ogpo+ca 0 3,000 95.0% (19/20) {_wilson(19)} 1,000 2,000 3,000 5 min 00 s"

    final = _rows(html, "final")
    ref = summary["algorithms"]["ogpo+ca"]["final_success"]
    assert final[0].startswith(f"ogpo+ca 3 3,000 {fmt_pct(ref['iqm'])} {fmt_pct(ref['iqm_ci'][0])} – ")
    assert final[0].endswith("reference")
    poi = summary["algorithms"]["dsrl"]["probability_of_improvement"]
    assert final[1].endswith(f"{poi['value']:.2f} [{poi['ci'][0]:.2f} – {poi['ci'][1]:.2f}]")

    wall = _rows(html, "wall-clock")
    assert wall[0] == "ogpo+ca 3/3 15 min 03 s 5 min 01 s 5 min 00 s 5 min 02 s"
    assert wall[2].startswith("qc 2/3 ")
    assert "No wall-clock time for 1 run(s): qc seed 2." in text

    assert "0123abcd" * 5 in text and "feedface" * 8 in text and "Toy CPU @ 1 GHz" in text
    assert "algorithms: [ogpo+ca, dsrl, qc]" in html and '<pre class="spec">' in html
    assert f"{REPS} resamples, seed 0" in text and "generated 2024-05-06T07:08:09+00:00" in text


def _wilson(k: int) -> str:
    lo, hi = wilson_interval(k, EPISODES)
    return f"{fmt_pct(lo)} – {fmt_pct(hi)}"


def test_study_report_is_byte_reproducible(html: str) -> None:
    again = _build(wall_clock={k: v for k, v in WALL.items() if k != ("qc", 2)})
    assert again == html
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids must be unique across the page's figures"


def test_missing_reference_skips_the_probability_of_improvement() -> None:
    spec = {a: SPEC[a] for a in ("dsrl", "qc")}
    html = _build(spec, wall_clock=None, reference="ogpo+ca")
    text = _dom(html).joined
    assert html.count('<svg class="plot"') == 3 and 'id="fig-study-poi"' not in html
    assert "The reference method 'ogpo+ca' has no runs in this study (methods: dsrl, qc)" in text
    assert "No wall-clock times were given" in text and 'id="wall-clock"' not in html
    assert "P(improvement" not in text


def test_invalid_runs_table_is_an_error() -> None:
    rows = make_rows(SPEC, steps=STEPS)
    rows[0]["successes"] = 99
    with pytest.raises(ConfigError, match="99 successes out of 20 episodes"):
        build_study_report(rows, title="t", provenance={}, reps=REPS)


@pytest.mark.slow
@needs_chromium
def test_study_report_renders_in_headless_chromium(html: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    # The first two methods' colours (Okabe-Ito blue and vermillion) are drawn
    colors = ((0x00, 0x72, 0xB2), (0xD5, 0x5E, 0x00))
    assert_screenshot_shows_plots(page, tmp_path / "shot.png", tmp_path / "profile1", colors, size=(1280, 3000))
    dom = rendered_dom(page, tmp_path / "profile2")
    assert dom.counts.get("svg", 0) == 4 and dom.counts.get("table", 0) == 5
    text = dom.joined
    for heading in (
        "Learning curves",
        "Environment steps to reach a success level",
        "Final success",
        "Performance profiles and probability of improvement",
        "Wall-clock per method",
        "Runs",
        "Provenance",
    ):
        assert heading in text
    assert "never" in text and "qc" in text
