"""One real local stack per test module: Prefect server + cpu process worker + SeaweedFS on 127.0.0.1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline import serve
from tests.pipeline.fakerepo import make_fake_repo
from tests.pipeline.stackutil import Ctx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack_ctx(tmp_path_factory):
    """``ogpo serve`` on free ports with a temp home; workers clone a fresh clone of this repository."""
    base = tmp_path_factory.mktemp("stack")
    origin = base / "origin"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(origin)], check=True)
    fake = make_fake_repo(base / "fake")
    home = base / "home"
    port, s3_port = serve.free_port(), serve.free_port()
    stack = serve.serve(origin, home=home, prefect_port=port, s3_port=s3_port, workers=1, ui=False)
    try:
        yield Ctx(stack=stack, env=serve.read_env_file(stack.env_file), origin=origin, fake=fake)
    finally:
        for line in serve.stop(home):
            print(line)
