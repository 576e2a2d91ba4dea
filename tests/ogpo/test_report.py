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
from ogpo.report import ReportInputError, build_report, fmt_duration, load_report_inputs
from ogpo.stats import wilson_interval
from ogpo.svgplot import HLine, Series, line_plot, nice_ticks
from stages.report import artifact_paths, run

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
    (root / "params.yaml").write_text("report:\n  title: Lift test report\n  max_videos: 3\nfinetune:\n  G: 32\n")
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
    return load_report_inputs(artifact_paths(root), title="Lift test report", git_rev="deadbeef" * 5, **kw)


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
    assert tags.urls and all(u.startswith("data:image/gif;base64,") for u in tags.urls)
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
    # the BC level is drawn on the learning curve as a dashed horizontal line
    learning = html[html.index('id="learning"') : html.index('id="comparison"')]
    assert learning.count('class="hline"') == 2 and "BC start 42%" in learning


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
    assert "50% not reached best evaluation —" in text and "no data" in text


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


def test_nice_ticks() -> None:
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 30000) == [0, 5000, 10000, 15000, 20000, 25000, 30000]
    assert nice_ticks(0.13, 0.92) == [0.2, 0.4, 0.6, 0.8]
    assert nice_ticks(-3, 7, target=4) == [-2.5, 0, 2.5, 5]
    assert nice_ticks(5, 5) == [5]


def test_line_plot_geometry_and_gaps() -> None:
    svg = line_plot(
        [Series("s", [0, 1, 2, 3, 4], [0.0, 1.0, math.nan, 0.5, 0.5])],
        title="t <&>",
        x_label="x",
        y_label="y",
        hlines=[HLine(0.25, "level", band=(0.2, 0.3))],
        y_range=(0.0, 1.0),
        width=400,
        height=300,
    )
    assert "t &lt;&amp;&gt;" in svg  # labels are escaped
    lines = re.findall(r'<polyline class="series" points="([^"]+)"', svg)
    assert len(lines) == 2, "a NaN must break the line into two segments"
    first = [tuple(map(float, p.split(","))) for p in lines[0].split()]
    # plot area: x in [62, 400 - 14] for x = 0..4; y in [300 - 46, 30 + 18 (legend)] for y = 0..1
    assert first == [(62.0, 254.0), (62.0 + (386 - 62) / 4, 48.0)]
    hline_y = float(re.search(r'class="hline"[^>]*y1="([\d.]+)"', svg).group(1))
    assert hline_y == pytest.approx(254 - 0.25 * (254 - 48), abs=0.1)
    empty = line_plot([Series("none", [], [])], title="e", x_label="x", y_label="y")
    assert "no data" in empty


def test_fmt_duration() -> None:
    assert fmt_duration(4.24) == "4.2 s"
    assert fmt_duration(192) == "3 min 12 s"
    assert fmt_duration(3720) == "1 h 02 min"
    assert fmt_duration(None) == "—"
