"""Headless Chromium for the report tests: a screenshot that must show something, and the rendered DOM.

Chromium is Debian's ``chromium`` (apt-packages.txt); tests that need it skip with ``needs_chromium`` when
it is absent. Shared by the single-run report test (tests/stages/test_report_render.py) and the study report
test (tests/ogpo/study/test_report.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package 'chromium' is not installed (apt-packages.txt)"
)


class Dom(HTMLParser):
    """Start-tag counts, ``src`` attributes and text of a (rendered) HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.srcs += [v or "" for k, v in attrs if k == "src"]

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def joined(self) -> str:
        """The text with whitespace collapsed, as a reader sees it."""
        return " ".join(" ".join(self.text).split())


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a throwaway profile and no network side channels."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, check=False)


def rendered_dom(page: Path, profile: Path) -> Dom:
    """The DOM Chromium builds from ``page`` (after its HTML parser, so inline SVG is what a reader gets)."""
    out = chromium(["--dump-dom", page.as_uri()], profile)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = Dom()
    dom.feed(out.stdout)
    return dom


def assert_screenshot_shows_plots(
    page: Path,
    shot: Path,
    profile: Path,
    colors: tuple[tuple[int, int, int], ...],
    size: tuple[int, int] = (1280, 2400),
) -> None:
    """Screenshot ``page`` and check it is not blank: many colours, enough ink, and each plot colour present."""
    out = chromium([f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", page.as_uri()], profile)
    assert shot.is_file(), f"no screenshot; chromium said: {out.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == size
        rgb = im.convert("RGB")
        found = rgb.getcolors(maxcolors=1 << 16)
        assert found is None or len(found) > 50, "screenshot is (nearly) one colour: nothing rendered"
        # Most of the page is background; a rendered report still inks a sizeable share of the pixels.
        # A blank or error page has almost no dark pixels; the rendered report has text, axes and lines.
        dark = sum(rgb.convert("L").histogram()[:200]) / (rgb.width * rgb.height)
        assert dark > 0.01, f"only {dark:.2%} of the screenshot is ink"
        pixels = np.asarray(rgb).astype(int)
        for color in colors:
            close = (np.abs(pixels - np.array(color)).max(axis=-1) < 40).sum()
            assert close > 500, f"plot colour {color} barely appears ({close} pixels): plots not rendered?"
