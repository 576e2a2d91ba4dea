"""The HTML report: inputs are checked (required vs optional), numbers are right, output is self-contained."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from ogpo.errors import ConfigError, OGPOError
from ogpo.plots import HLine, Interval, Series, format_number, interval_plot, line_plot
from ogpo.report import ReportInputError, build_report, curve_intervals, load_report_inputs
from ogpo.stats import wilson_interval
from ogpo.templating import fmt_duration
from stages.report import artifact_paths, eval_episodes, run

CURVE_COLUMNS = [
    "env_steps",
    "success",
    "return",
    "episode_length",
    "actor_loss",
    "critic_loss",
    "bc_loss",
    "adv_mean",
    "adv_abs",
    "clip_frac",
    "q_mean",
    "wall_time",
]
# Evaluated every 5k steps; success crosses 50% at 10k, 80% at 20k and never reaches 90%.
SUCCESS = {0: 0.4, 5000: 0.45, 10000: 0.55, 15000: 0.7, 20000: 0.82, 25000: 0.79, 30000: 0.88}


def _gif(color: tuple[int, int, int]) -> bytes:
    frames = [Image.new("RGB", (32, 32), tuple(min(255, c + 20 * i) for c in color)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def write_artifacts(root: Path, *, optional: bool = True, n_videos: int = 2) -> None:
    """A small but complete set of pipeline artifacts in the documented formats."""
    (root / "plots").mkdir(parents=True)
    (root / "metrics").mkdir()
    with open(root / "plots/learning_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_COLUMNS)
        for step in range(0, 30001, 2500):
            s = SUCCESS.get(step)
            w.writerow(
                [step, "" if s is None else s, 0.5 + step / 6e4, 120 - step / 500, -0.01, 0.2 / (1 + step / 1e4)]
                + [0.05, 0.0, 0.01, 0.1, 0.3 + step / 1e5, step / 50]
            )
    (root / "params.yaml").write_text(
        "report:\n  title: Lift test report\n  max_videos: 3\nfinetune:\n  G: 32\n  online:\n    eval_episodes: 100\n"
    )
    ev = {
        "bc": {"success": 0.42, "successes": 42, "n": 100, "mean_return": 0.42, "mean_length": 151.3},
        "finetuned": {"success": 0.89, "successes": 89, "n": 100, "mean_return": 0.89, "mean_length": 64.2},
    }
    (root / "metrics/eval.json").write_text(json.dumps(ev))
    if not optional:
        return
    with open(root / "plots/bc_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "success", "loss"])
        for step in range(0, 2001, 250):
            w.writerow([step, min(0.45, step / 4000) if step % 500 == 0 else "", 1.0 / (1 + step / 300)])
    timings = {
        "ingest": {"wall_time_s": 12.5},
        "pretrain_bc": {"wall_time_s": 95.0, "updates": 2000, "updates_per_s": 21.05},
        "fit_critic": {"wall_time_s": 0.4},
        "finetune": {"wall_time_s": 1210.0, "env_steps": 30000, "env_steps_per_s": 24.8, "updates": 600},
        "evaluate": {"wall_time_s": 140.0, "env_steps": 30000, "env_steps_per_s": 214.3},
    }
    for stage, m in timings.items():
        (root / f"metrics/{stage}.json").write_text(json.dumps(m))
    (root / "data").mkdir()
    summary = {"content_hash": "ab12cd34" * 8, "episodes": 50, "success_rate": 1.0}
    (root / "data/summary.json").write_text(json.dumps(summary))
    (root / "eval/videos").mkdir(parents=True)
    for i in range(n_videos):
        (root / f"eval/videos/episode_{i}.gif").write_bytes(_gif((40 * i, 90, 160)))


def _load(root: Path, **kw: object):
    paths = artifact_paths(root)
    kw.setdefault("eval_episodes", eval_episodes(paths.params))  # what the stage passes
    kw.setdefault("eval_episodes_source", "params.yaml finetune.online.eval_episodes")
    return load_report_inputs(paths, title="Lift test report", git_rev="deadbeef" * 5, **kw)


class _Tags(HTMLParser):
    """Counts start tags and collects resource URLs (src/href) to prove the file is self-contained."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href")]


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_full_report(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    inputs = _load(tmp_path)
    assert inputs.notes == []
    html = build_report(inputs)
    tags = _parse(html)
    # learning curve + interval plot + 2 BC plots + 9 diagnostics
    assert tags.counts["svg"] == 13
    assert tags.counts["table"] == 4  # steps-to-reach, BC vs fine-tuned, timings, provenance
    assert tags.counts["img"] == 2
    external = [u for u in tags.urls if not u.startswith("#")]  # "#id": an SVG marker or clip path of the page
    assert len(external) == 2 and all(u.startswith("data:image/gif;base64,") for u in external)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    text = _text(html)
    # BC vs fine-tuned with Wilson intervals recomputed from the counts
    lo, hi = wilson_interval(89, 100)
    assert f"89.0% {lo * 100:.1f}% – {hi * 100:.1f}% 89 / 100 0.89 64.2" in text
    assert "42.0% 32.8% – 51.8% 42 / 100" in text
    assert "intervals do not overlap" in text
    # steps to reach: first evaluation >= level; 90% never reached (best 88%)
    assert "50% 10,000 55.0% at that evaluation" in text
    assert "80% 20,000 82.0% at that evaluation 6 min 40 s" in text
    assert "90% not reached best evaluation 88.0%" in text
    # timings, provenance, params
    assert "finetune 20 min 10 s 30,000 24.8 600" in text
    assert "total 24 min 18 s" in text
    assert "ab12cd34" * 8 in text and "deadbeef" * 5 in text
    assert "max_videos: 3" in text
    # the BC level and the final evaluation are dashed horizontal lines on the learning curve; the curve has
    # its Wilson band and starts with the BC policy's point at step 0 (with its error bar)
    learning = html[html.index('id="learning"') : html.index('id="comparison"')]
    assert len(re.findall(r'id="learning-curve-hline-\d+"', learning)) == 2 and "BC start 42%" in learning
    assert 'id="learning-curve-series-0-band"' in learning and 'id="learning-curve-series-1"' in learning
    assert "BC policy at step 0 (42/100)" in learning and "over its 100 evaluation episodes" in _text(learning)
    # params file named by the caller, not by the library
    assert "params.yaml sha256" in text


def test_report_is_byte_reproducible(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    inputs = _load(tmp_path)
    inputs.generated_at = "2024-01-02T03:04:05+00:00"
    html = build_report(inputs)
    assert build_report(inputs) == html  # SVG ids are salted per figure, no dates in the SVG metadata
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "element ids must be unique across the page's figures"
    assert "generated 2024-01-02T03:04:05+00:00" in _text(html)


def test_learning_curve_wilson_intervals(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    steps, success, low, high, notes = curve_intervals(_load(tmp_path))
    assert steps == sorted(SUCCESS) and success == [SUCCESS[s] for s in steps] and notes == []
    assert (low[2], high[2]) == pytest.approx(wilson_interval(55, 100))
    # an episodes column wins over the configured count
    (tmp_path / "plots/learning_curve.csv").write_text("env_steps,success,episodes\n0,0.25,4\n1000,,\n2000,0.5,20\n")
    inputs = _load(tmp_path)
    steps, _, low, high, notes = curve_intervals(inputs)
    assert steps == [0, 2000] and notes == [] and 'id="diagnostics"' not in build_report(inputs)
    assert (low[0], high[0]) == pytest.approx(wilson_interval(1, 4))
    assert (low[1], high[1]) == pytest.approx(wilson_interval(10, 20))
    # a rate that is no whole count over n: nearest count, and a note
    (tmp_path / "plots/learning_curve.csv").write_text("env_steps,success,episodes\n0,0.3,4\n")
    *_, notes = curve_intervals(_load(tmp_path))
    assert len(notes) == 1 and "nearest count" in notes[0]


def test_learning_curve_without_episode_count(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    _edit(tmp_path / "params.yaml", "    eval_episodes: 100\n", "")
    inputs = _load(tmp_path)
    assert inputs.eval_episodes is None
    assert any(
        "finetune.online.eval_episodes is unknown" in n and "without Wilson intervals" in n for n in inputs.notes
    )
    html = build_report(inputs)
    assert "-band" not in html and "Wilson interval (shaded)" not in html
    assert "BC policy at step 0 (42/100)" in html  # the step-0 point does not need the curve's count


def test_missing_optional_inputs_give_notes(tmp_path: Path) -> None:
    write_artifacts(tmp_path, optional=False)
    inputs = _load(tmp_path)
    joined = "\n".join(inputs.notes)
    for name in ("bc_curve.csv", "metrics/ingest.json", "metrics/evaluate.json", "summary.json", "eval/videos"):
        assert name in joined
    html = build_report(inputs)
    text = _text(html)
    assert "Notes on missing or skipped inputs" in text and "No rollout videos were available" in text
    assert 'id="bc"' not in html and 'id="timing"' not in html
    assert "data content hash unknown" in text


def test_curve_without_evaluations(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    path = tmp_path / "plots/learning_curve.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [[r[0], "", *r[2:]] for r in rows[1:]])
    inputs = _load(tmp_path)
    assert any("no periodic evaluation" in n for n in inputs.notes)
    text = _text(build_report(inputs))
    assert "50% not reached best evaluation —" in text and "(0 evaluations)" in text
    assert "BC policy at step 0 (42/100)" in text  # the curve still shows where fine-tuning started


def test_minimal_curve_columns(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    (tmp_path / "plots/learning_curve.csv").write_text("env_steps,success\n0,0.4\n1000,\n2000,0.6\n")
    html = build_report(_load(tmp_path))
    assert 'id="diagnostics"' not in html  # nothing to plot beyond success
    assert "50% 2,000 60.0% at that evaluation —" in _text(html)  # no wall_time column


def test_video_limits(tmp_path: Path) -> None:
    write_artifacts(tmp_path, n_videos=5)
    inputs = _load(tmp_path, max_videos=3)
    assert [m.name for m in inputs.media] == ["episode_0.gif", "episode_1.gif", "episode_2.gif"]
    assert any("Showing 3 of 5" in n for n in inputs.notes)
    inputs = _load(tmp_path, max_videos=3, max_video_bytes=10)
    assert inputs.media == [] and sum("exceeds the inline limit" in n for n in inputs.notes) == 5


@pytest.mark.parametrize("name", ["plots/learning_curve.csv", "metrics/eval.json", "params.yaml"])
def test_missing_required_input_names_the_file(tmp_path: Path, name: str) -> None:
    write_artifacts(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(ReportInputError, match=re.escape(f"{tmp_path / name}: not found")):
        _load(tmp_path)


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        ("plots/learning_curve.csv", "0.55", "0.5x", r"line 6, column success: '0.5x' is not a number"),
        ("plots/learning_curve.csv", "env_steps,", "steps,", r"missing column\(s\) env_steps"),
        ("plots/learning_curve.csv", "\n5000,", "\n500000,", r"line 5: step 7500 comes after 500000"),
        ("plots/bc_curve.csv", "step,success", "step,succ", r"bc_curve.csv: missing column\(s\) success"),
        (
            "metrics/eval.json",
            '"successes": 42',
            '"successes": 41',
            r"bc.success = 0.42 disagrees with successes/n = 41/100",
        ),
        (
            "metrics/eval.json",
            '"n": 100, "mean_return": 0.89',
            '"n": "100", "mean_return": 0.89',
            r"finetuned.n must be an integer >= 0, got '100'",
        ),
        ("metrics/eval.json", '"bc"', '"BC"', r"eval.json: missing object 'bc'"),
        ("metrics/eval.json", "{", "[", r"eval.json: not valid JSON"),
        ("metrics/finetune.json", '"wall_time_s": 1210.0', '"wall_time_s": null', r"wall_time_s must be a finite"),
        ("metrics/ingest.json", "{", "{{", r"ingest.json: not valid JSON"),  # optional but corrupt: an error
    ],
)
def test_corrupt_inputs_name_the_file(tmp_path: Path, name: str, old: str, new: str, message: str) -> None:
    write_artifacts(tmp_path)
    _edit(tmp_path / name, old, new)
    with pytest.raises(ReportInputError, match=message) as info:
        _load(tmp_path)
    assert name in str(info.value)


def test_stage_run_writes_report_and_keeps_old_one_on_error(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    out = run(tmp_path)
    assert out == tmp_path / "reports/report.html"
    html = out.read_text()
    assert "<title>Lift test report</title>" in html
    assert "unknown" in _text(html)  # tmp_path is not a git checkout
    (tmp_path / "metrics/eval.json").write_text("{}")
    with pytest.raises(OGPOError, match="missing object 'bc'"):
        run(tmp_path)
    assert out.read_text() == html, "a failed run must leave the existing report untouched"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_stage_params_are_checked_first(tmp_path: Path) -> None:
    write_artifacts(tmp_path)
    _edit(tmp_path / "params.yaml", "max_videos: 3", "max_videos: -1")
    with pytest.raises(ConfigError, match=r"params.yaml: report.max_videos must be >= 0, got -1"):
        run(tmp_path)
    _edit(tmp_path / "params.yaml", "max_videos: -1", "max_vids: 2")
    with pytest.raises(ConfigError, match=r"unknown key report.max_vids \(did you mean report.max_videos\?\)"):
        run(tmp_path)
    assert not (tmp_path / "reports").exists()


def test_format_number() -> None:
    assert [format_number(v) for v in (0, 0.25, 1500, 20000, 2.5e6, 3e9, 1e-5)] == [
        "0",
        "0.25",
        "1500",
        "20k",
        "2.5M",
        "3G",
        "1e-05",
    ]


def _group(svg: str, gid: str) -> str:
    """The markup of the SVG group with id ``gid`` (up to the next group)."""
    start = svg.index(f'id="{gid}"')
    return svg[start : svg.index("<g id=", start + 1)]


def test_line_plot_svg_is_inline_deterministic_and_breaks_at_nan() -> None:
    kw = dict(title="t <&>", x_label="x", y_label="y", hlines=[HLine(0.25, "level", band=(0.2, 0.3))], percent=True)
    series = [Series("s", [0, 1, 2, 3, 4], [0.0, 1.0, math.nan, 0.5, 0.5], band=([0.0] * 5, [1.0] * 5))]
    svg = line_plot(series, key="lp", y_range=(0.0, 1.0), **kw)
    assert svg.startswith('<svg class="plot" id="fig-lp" role="img" aria-label="t &lt;&amp;&gt;"')
    assert "t &lt;&amp;&gt;" in svg.split(">", 1)[1]  # the title text is escaped too
    assert "<?xml" not in svg and "<metadata" not in svg and "http" not in svg and "<!DOCTYPE" not in svg
    assert 'width="' not in svg.split(">", 1)[0]  # CSS sizes it; the viewBox keeps the aspect
    assert line_plot(series, key="lp", y_range=(0.0, 1.0), **kw) == svg
    other = line_plot(series, key="lp2", y_range=(0.0, 1.0), **kw)
    assert set(re.findall(r'\sid="([^"]+)"', svg)).isdisjoint(re.findall(r'\sid="([^"]+)"', other))
    path = re.search(r'<path d="([^"]+)"', _group(svg, "lp-series-0")).group(1)
    assert path.count("M") == 2, "a NaN must break the line into two segments"
    assert 'id="lp-series-0-band"' in svg and 'id="lp-hline-0"' in svg and "100%" in svg
    assert "no data" in line_plot([Series("none", [], [])], key="empty", title="e", x_label="x", y_label="y")
    with pytest.raises(ValueError, match="figure key"):
        line_plot(series, key="bad key", **kw)


def test_interval_plot_panels() -> None:
    rows = [Interval("a", 0.4, 0.3, 0.5), Interval("b <i>", 0.8, 0.7, 0.9)]
    svg = interval_plot({"IQM": rows, "Mean": rows}, key="iv", title="final", x_label="success", reference=0.5)
    assert len(re.findall(r'id="iv-axes_\d+"', svg)) == 2
    assert "IQM" in svg and "Mean" in svg and "b &lt;i&gt;" in svg


def test_fmt_duration() -> None:
    assert fmt_duration(4.24) == "4.2 s"
    assert fmt_duration(192) == "3 min 12 s"
    assert fmt_duration(3720) == "1 h 02 min"
    assert fmt_duration(None) == "—"
