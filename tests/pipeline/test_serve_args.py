"""``ogpo serve`` argument checks: fast, nothing is started."""

from __future__ import annotations

from pipeline.cli import main


def test_negative_worker_counts_fail_in_one_line_and_start_nothing(tmp_path, capsys):
    home = tmp_path / "home"
    rc = main(["serve", "--home", str(home), "--repo", str(tmp_path), "--gpu-workers", "-1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "worker counts must be >= 0" in err and "--gpu-workers -1" in err
    assert not home.exists()


def _stopped_stack(home) -> None:
    """A stack.json as `ogpo serve` writes it, whose processes have all exited (as after `ogpo stop`)."""
    import json

    home.mkdir(parents=True)
    procs = {n: {"name": n, "pid": 999_999_999, "start_ticks": 1, "log": str(home / f"{n}.log")} for n in ("s3", "w")}
    data = {"repo": str(home), "prefect_port": 4200, "s3_port": 8333, "bucket": "ogpo", "procs": procs}
    (home / "stack.json").write_text(json.dumps(data))


def test_status_says_when_nothing_runs(tmp_path, capsys):
    _stopped_stack(tmp_path / "home")
    rc = main(["status", "--home", str(tmp_path / "home")])
    out = capsys.readouterr().out
    assert rc == 3 and "no ogpo stack is running" in out and "ogpo serve" in out


def test_env_puts_this_installs_bin_first_on_path(tmp_path, capsys):
    import sys
    from pathlib import Path

    _stopped_stack(tmp_path / "home")
    assert main(["env", "--home", str(tmp_path / "home")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("set -a; . ") and f"export PATH={Path(sys.executable).parent}:" in line


def test_regression_baseline_is_created_once_at_head_and_never_moved(tmp_path):
    import os
    import subprocess

    from pipeline.serve import ensure_regression_baseline

    def git(*args: str) -> str:
        who = {"NAME": "t", "EMAIL": "t@x"}
        env = dict(os.environ, **{f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()})
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True, env=env).stdout

    assert ensure_regression_baseline(tmp_path) is None  # not a git checkout: nothing to pin
    git("init", "-q")
    assert ensure_regression_baseline(tmp_path) is None  # no commit yet
    git("commit", "-q", "--allow-empty", "-m", "one")
    first = git("rev-parse", "HEAD").strip()
    said = ensure_regression_baseline(tmp_path)
    assert said and "regression-baseline" in said and first[:12] in said
    assert git("rev-parse", "regression-baseline^{commit}").strip() == first
    git("commit", "-q", "--allow-empty", "-m", "two")
    assert ensure_regression_baseline(tmp_path) is None  # an existing baseline stays where the user put it
    assert git("rev-parse", "regression-baseline^{commit}").strip() == first


def _running_stack(home, *workers: str) -> None:
    """A stack.json whose 'server' is this test process (alive), with the given worker names recorded."""
    import json
    import os

    from pipeline import serve

    home.mkdir(parents=True)
    me = {"pid": os.getpid(), "start_ticks": serve._start_ticks(os.getpid())}
    procs = {"prefect-server": {"name": "prefect-server", "log": str(home / "s.log"), **me}}
    for name in workers:
        pool, index = name.split("-")[1], int(name.rsplit("-", 1)[1])
        procs[name] = {"name": name, "pid": 999_999_999, "start_ticks": 1, "log": "", "pool": pool, "index": index}
    data = {"repo": str(home), "prefect_port": 4200, "s3_port": 8333, "bucket": "ogpo", "procs": procs}
    (home / "stack.json").write_text(json.dumps(data))
    (home / "stack.env").write_text("PREFECT_API_URL=http://127.0.0.1:4200/api\n")


def test_serve_passes_the_worker_counts(tmp_path, monkeypatch, capsys):
    from pipeline import serve

    seen = {}

    def fake_serve(repo, **kw):
        seen.update(kw)
        return serve.Stack(home=tmp_path, repo=repo, prefect_port=1, s3_port=2, bucket="b")

    monkeypatch.setattr(serve, "serve", fake_serve)
    assert main(["serve", "--repo", str(tmp_path), "--workers", "3", "--gpu-workers", "1", "--no-ui"]) == 0
    assert seen["workers"] == 3 and seen["gpu_workers"] == 1
    assert "supervisor.log" in capsys.readouterr().out


def test_worker_add_arguments_are_checked_before_anything_starts(tmp_path, capsys):
    import pytest

    home = tmp_path / "home"
    assert main(["worker", "add", "--home", str(home), "-n", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "worker count must be >= 1, got 0" in err
    assert main(["worker", "add", "--home", str(home)]) == 1
    assert "no stack recorded" in capsys.readouterr().err and not home.exists()
    _stopped_stack(home)
    assert main(["worker", "add", "--home", str(home), "--count", "2"]) == 1
    assert "is not running" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["worker", "add", "--home", str(home), "--pool", "tpu"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["worker"])  # a worker subcommand is required


def test_worker_add_records_new_workers_after_the_existing_ones(tmp_path, monkeypatch, capsys):
    from pipeline import serve

    home = tmp_path / "home"
    _running_stack(home, "worker-cpu-1", "worker-cpu-3", "worker-gpu-1")
    started = []

    def fake_start(stack, env, index=1, pool="cpu"):
        started.append((pool, index, env["PREFECT_API_URL"]))
        return serve.Proc(f"worker-{pool}-{index}", 4242, 1, "w.log", pool, index, str(home / f"work/{pool}-{index}"))

    monkeypatch.setattr(serve, "start_worker", fake_start)
    assert main(["worker", "add", "--home", str(home), "-n", "2"]) == 0
    assert main(["worker", "add", "--home", str(home), "--pool", "gpu"]) == 0
    assert started == [("cpu", 2, "http://127.0.0.1:4200/api"), ("cpu", 4, "http://127.0.0.1:4200/api"),
                       ("gpu", 2, "http://127.0.0.1:4200/api")]  # fmt: skip
    out = capsys.readouterr().out
    assert "worker-cpu-2" in out and "worker-cpu-4" in out and "worker-gpu-2" in out
    procs = serve.load(home).procs
    assert {"worker-cpu-2", "worker-cpu-4", "worker-gpu-2"} <= set(procs) and procs["worker-cpu-4"].index == 4


def test_serve_on_a_running_stack_points_at_worker_add(tmp_path, capsys):
    home = tmp_path / "home"
    _running_stack(home)
    (tmp_path / ".git").mkdir()
    assert main(["serve", "--home", str(home), "--repo", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "already running" in err and "ogpo worker add" in err


def test_status_shows_the_supervisor(tmp_path, capsys):
    import json
    import os

    from pipeline import serve

    home = tmp_path / "home"
    _running_stack(home)
    data = json.loads((home / "stack.json").read_text())
    me = {"pid": os.getpid(), "start_ticks": serve._start_ticks(os.getpid())}
    data["supervisor"] = {"name": "supervisor", "log": str(home / "logs/supervisor.log"), **me}
    (home / "stack.json").write_text(json.dumps(data))
    assert main(["status", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "supervisor" in out and "watching the workers" in out and out.count("running") == 1


def test_crash_automation_reschedules_a_crashed_ogpo_run_a_bounded_number_of_times(monkeypatch):
    """The automation as `ogpo serve` creates it, checked with the server's own trigger matching."""
    import uuid
    from datetime import UTC, datetime

    from prefect.server.events.schemas.automations import Automation
    from prefect.server.events.schemas.events import ReceivedEvent

    from pipeline import serve

    made = []

    class FakeClient:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read_automations_by_name(self, name):
            return []

        def create_automation(self, auto):
            made.append(auto)

    monkeypatch.setattr(serve, "_client", lambda api_url: FakeClient())
    serve.ensure_crash_automation("http://127.0.0.1:1/api")
    (auto,) = made
    assert auto.name == serve.CRASH_AUTOMATION
    action = auto.actions[0]
    assert action.state.value == "SCHEDULED" and action.name == "AwaitingRetry"
    trigger = Automation.model_validate({**auto.model_dump(mode="json"), "id": str(uuid.uuid4())}).trigger

    def event(name: str, run_count: int, tag: str = "ogpo") -> ReceivedEvent:
        run = uuid.uuid4()
        return ReceivedEvent(
            occurred=datetime.now(UTC),
            event=f"prefect.flow-run.{name}",
            resource={"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.run-count": str(run_count)},
            related=[{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}],
            id=uuid.uuid4(),
        )

    assert all(trigger.covers(event("Crashed", n)) for n in range(serve.CRASH_RUNS))
    assert not trigger.covers(event("Crashed", serve.CRASH_RUNS))  # crashed on its last allowed run: stays Crashed
    assert not trigger.covers(event("Failed", 1)) and not trigger.covers(event("Crashed", 1, tag="other"))


def test_supervisor_finds_dead_workspaces_and_flow_code_dirs(tmp_path, monkeypatch):
    import os
    import subprocess
    import tempfile

    from pipeline import supervise

    proc = subprocess.Popen(["true"])
    proc.wait()
    dead = proc.pid  # exited and reaped: no such process any more
    wd = tmp_path / "work" / "cpu-1"
    names = [f"finetune-{dead}", f"plan-main-{dead}", f"ingest-{os.getpid()}", f"evaluate-{dead}"]
    for name in [f"0123456789ab-{n}" for n in names] + ["notaworkspace", "cache"]:
        (wd / name).mkdir(parents=True)
    in_use = {str(wd / f"0123456789ab-evaluate-{dead}" / "sub")}  # an orphan still works in it: keep it for now
    found = supervise.dead_workspaces([wd, tmp_path / "missing"], in_use)
    assert sorted(p.name for p in found) == [f"0123456789ab-finetune-{dead}", f"0123456789ab-plan-main-{dead}"]

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    assert supervise._flow_code_dir(str(tmp_path / "tmpab12cdprefect" / "origin")) == tmp_path / "tmpab12cdprefect"
    assert supervise._flow_code_dir(str(tmp_path / "other" / "origin")) is None
    assert supervise._flow_code_dir("/elsewhere/tmpab12cdprefect") is None


def test_supervisor_restarts_a_dead_worker_at_once_then_backs_off(tmp_path, monkeypatch):
    import itertools
    import json
    import time

    from pipeline import serve, supervise

    home = tmp_path / "home"
    _running_stack(home, "worker-cpu-1")
    data = json.loads((home / "stack.json").read_text())
    data["procs"]["worker-cpu-1"]["token"] = "t0"
    (home / "stack.json").write_text(json.dumps(data))
    tokens = itertools.count(1)
    started = []

    def dies_at_once(stack, env, index=1, pool="cpu"):  # a worker that exits as soon as it starts
        started.append((pool, index))
        return serve.Proc(f"worker-{pool}-{index}", 999_999_999, 1, "w.log", pool, index, "", f"t{next(tokens)}")

    monkeypatch.setattr(serve, "start_worker", dies_at_once)
    monkeypatch.setattr(supervise, "scan", lambda: [])
    sup = supervise.Supervisor(home)
    delays = []
    for _ in range(20):
        if len(started) == 5:
            break
        sup.tick()
        if "worker-cpu-1" in sup.pending:
            delays.append(round(sup.pending["worker-cpu-1"][0] - time.monotonic()))
            sup.pending["worker-cpu-1"] = (0.0, sup.pending["worker-cpu-1"][1])  # let the next pass restart it
    assert started[0] == ("cpu", 1) and len(started) == 5
    assert delays == [5, 15, 45, 120], delays  # the first restart is immediate, then the delay grows
    assert serve.load(home).procs["worker-cpu-1"].token == "t5"  # the record follows each restart
