"""The README's commands, pasted literally into a shell, in a fresh clone (slow).

A new user's shell: the venv is not active (PATH holds only the system directories), HOME is empty, nothing is
running. The clone's ``.venv`` is this checkout's (``bash scripts/setup.sh`` builds the same one; CI has just run
it). What is run is read from README.md, not restated here, so a README edit that breaks a command fails this test:

- the main job's pipeline on the tiny profile: ``stages.profile tiny`` from the profiles block, then
  ``.venv/bin/dvc repro`` (the README says it works without activating the venv) and ``dvc metrics show``;
- ``ogpo algos``;
- the whole orchestration block, line by line: ``ogpo serve`` (default ports, default home), ``ogpo env``, the
  documented tiny run of ``ogpo/full-pipeline``, ``ogpo worker add``, ``ogpo pull`` of that run's checkpoint,
  the nightly regression, ``ogpo stop``; then ``ogpo status`` says that nothing runs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.slow


def _blocks(after_heading: str) -> list[list[str]]:
    """The bash code blocks of the README section whose heading starts with ``after_heading``, as command lines."""
    section = README.split(f"\n{after_heading}", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    out = []
    for body in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        out.append([ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")])
    return out


def _line(lines: list[str], needle: str) -> str:
    found = [ln for ln in lines if needle in ln.split("  #", 1)[0]]
    assert len(found) == 1, f"README: expected one command with {needle!r}, found {found}"
    return found[0]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    repo = base / "ogpo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    (repo / ".venv").symlink_to(ROOT / ".venv")
    home = base / "home"
    home.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "CI": os.environ.get("CI", "")}
    return repo, env


def _sh(repo: Path, env: dict, script: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail -x\n" + script],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_main_job_commands_on_the_tiny_profile(clone):
    repo, env = clone
    profiles = next(b for b in _blocks("Other profiles") if any("stages.profile" in ln for ln in b))
    script = "\n".join([_line(profiles, "stages.profile tiny"), ".venv/bin/dvc repro", ".venv/bin/dvc metrics show"])
    res = _sh(repo, env, script, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (repo / "reports/report.html").stat().st_size > 10_000
    assert "finetuned.success" in res.stdout and "dvclive/evaluate/metrics.json" in res.stdout, res.stdout[-2000:]
    algos = _sh(repo, env, _line(_blocks("## Algorithms")[0], "ogpo algos"), timeout=120)
    assert algos.returncode == 0, algos.stdout + algos.stderr
    names = [ln.split()[0] for ln in algos.stdout.splitlines()]
    assert {"ogpo", "ogpo+", "ogpo+ca", "dsrl", "qc", "expo", "dppo"} <= set(names), names


def test_orchestration_block_runs_as_written(clone):
    repo, env = clone
    if not (_port_free(4200) and _port_free(8333)):
        pytest.fail("the README's `ogpo serve` uses ports 4200 and 8333 on 127.0.0.1; something else holds one")
    lines = _blocks("## Orchestration")[0]
    assert lines[0].startswith(".venv/bin/ogpo serve") and lines[-1].startswith(".venv/bin/ogpo stop"), lines
    pull = _line(lines, "ogpo pull")
    nightly = _line(lines, "ogpo/nightly-regression")
    script = "\n".join(ln.split("  #", 1)[0] for ln in lines[:-1])  # all but `ogpo stop`, which runs always
    try:
        res = _sh(repo, env, script, timeout=2400)
    finally:
        stop = _sh(repo, env, lines[-1], timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]
    assert stop.returncode == 0, stop.stdout + stop.stderr
    finished = [ln for ln in out.splitlines() if ln.startswith("Flow run finished")]
    assert len(finished) == 2 and all("'Completed'" in ln for ln in finished), finished  # tiny run, nightly
    assert nightly.split("  #")[0].strip() in out, out[-3000:]  # xtrace shows each command as it ran
    pulled = [ln.strip() for ln in res.stdout.splitlines() if "pulled/" in ln and (repo / ln.strip()).is_dir()]
    assert pulled, f"{pull!r} printed no pulled path:\n{res.stdout[-2000:]}"
    ckpt = repo / pulled[-1]
    assert (ckpt / "config.json").is_file() and any(p.suffix == ".safetensors" for p in ckpt.iterdir()), ckpt
    status = _sh(repo, env, ".venv/bin/ogpo status", timeout=60)
    # exit 3: `ogpo status` says nothing runs and exits non-zero, so a script can test for a running stack
    assert status.returncode == 3 and "no ogpo stack is running" in status.stdout, status.stdout + status.stderr
