"""Integration tests on a real local stack: Prefect server + process worker + SeaweedFS (one per module).

The first test runs the real pipeline on the tiny profile through ``prefect deployment run``; the others
use a 3-stage fake pipeline (tests/pipeline/fakerepo.py, passed as ``repo_url``) so that the mechanics
(run-cache across workers, retries, resume, regression verdicts) are tested in seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline import serve
from tests.pipeline.stackutil import (
    BIN,
    artifact,
    assert_objects_intact,
    bucket_keys,
    deployment_run,
    descendants,
    flow_logs,
    flow_run,
    git,
    listening_addresses,
    s3,
    state_history,
    task_runs,
    wait_settled,
    wait_state,
)

pytestmark = pytest.mark.slow


def _pull_and_compare(ctx, src: Path, rev: str, artifact_path: str = "models/finetuned") -> Path:
    """``ogpo pull`` in a clean clone of ``src``; every pulled file equals the bucket object in dvc.lock."""
    clean = ctx.stack.home.parent / f"clean-{rev.replace('/', '-')}"
    subprocess.run(["git", "clone", "-q", str(src), str(clean)], check=True)
    env = {k: v for k, v in ctx.run_env().items() if k != "OGPO_GIT_URL"}
    res = subprocess.run(
        [str(BIN / "ogpo"), "pull", artifact_path, "--rev", rev], cwd=clean, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    out = clean / res.stdout.strip().splitlines()[-1]
    lock = yaml.safe_load(git(clean, "show", f"origin/{rev}:dvc.lock"))
    entry = lock["stages"]["finetune"]
    md5 = next(o["md5"] for o in entry["outs"] if o["path"] == artifact_path)
    client = s3(ctx)
    manifest = json.loads(
        client.get_object(Bucket=ctx.stack.bucket, Key=f"dvc/files/md5/{md5[:2]}/{md5[2:]}")["Body"].read()
    )
    assert {m["relpath"] for m in manifest} == {p.name for p in out.iterdir()}
    for m in manifest:
        key = f"dvc/files/md5/{m['md5'][:2]}/{m['md5'][2:]}"
        assert (out / m["relpath"]).read_bytes() == client.get_object(Bucket=ctx.stack.bucket, Key=key)["Body"].read()
    return out


def test_stack_is_local_and_private(stack_ctx):
    ctx = stack_ctx
    for name in ("stack.env", "credentials.env", "stack.json"):
        assert (ctx.stack.home / name).stat().st_mode & 0o777 == 0o600, name
    addrs = listening_addresses([p.pid for p in ctx.stack.procs.values()])
    assert addrs, "no listening sockets found"
    # 0100007F = 127.0.0.1 (little-endian hex); IPv6 loopback is ::1
    assert addrs <= {"0100007F", "00000000000000000000000001000000"}, addrs
    res = subprocess.run([str(BIN / "ogpo"), "status", "--home", str(ctx.stack.home)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.count("running") == 3, res.stdout
    secret = ctx.env["AWS_SECRET_ACCESS_KEY"]
    for log in (ctx.stack.home / "logs").iterdir():
        assert secret not in log.read_text(errors="replace"), log


def test_tiny_profile_full_pipeline_and_pull(stack_ctx):
    """The real DAG on the tiny profile via `prefect deployment run ogpo/full-pipeline`, then a rerun."""
    ctx = stack_ctx
    t0 = time.monotonic()
    rc, out, run_id = deployment_run(
        ctx, "ogpo/full-pipeline", {"profile": "tiny", "result_branch": "results/tiny"}, timeout=1500
    )
    first = time.monotonic() - t0
    assert rc == 0 and "Completed" in out, out[-3000:]
    keys = bucket_keys(ctx, "dvc/")
    assert any(k.startswith("dvc/files/md5/") for k in keys) and any(k.startswith("dvc/runs/") for k in keys)
    out_dir = _pull_and_compare(ctx, ctx.origin, "results/tiny")
    assert (out_dir / "weights.safetensors").stat().st_size > 0
    # the library-level load at a revision: pull (cached per commit), verify, build the GCP; no unpickling
    code = "from pipeline.pull import load_policy; print(type(load_policy(rev='results/tiny')).__name__)"
    env = {**ctx.run_env(), "OGPO_CACHE_DIR": str(ctx.stack.home / "cache")}
    env.pop("OGPO_GIT_URL")
    res = subprocess.run([str(BIN / "python"), "-c", code], cwd=out_dir.parents[3], env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-2000:]

    t0 = time.monotonic()
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", {"profile": "tiny"}, timeout=600)
    rerun = time.monotonic() - t0
    assert rc == 0 and "Completed" in out, out[-3000:]
    summary = artifact(ctx, run_id, "ogpo-pipeline")
    assert "| ran |" not in summary and "cache hit" in summary, summary
    print(f"tiny pipeline: first run {first:.0f} s, unchanged rerun {rerun:.0f} s")


def test_nightly_schedule_paused_by_default_and_switchable(stack_ctx):
    """A local stack does not fire the 25-minute nightly run by itself; `--nightly` (set_nightly_schedule) turns the
    02:30 UTC cron on, and turning it off again removes the runs the scheduler had created."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    def scheduled(c, dep):
        return c.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        )  # fmt: skip

    with stack_ctx.client() as c:
        dep = c.read_deployment_by_name("ogpo/nightly-regression")
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules] == [
            ("30 2 * * *", "UTC", False)
        ]
        assert not scheduled(c, dep)
        assert serve.set_nightly_schedule(stack_ctx.stack.api_url, active=True) == 1
        assert all(s.active for s in c.read_deployment_schedules(dep.id))
        deadline = time.monotonic() + 90
        runs = []
        while not runs and time.monotonic() < deadline:  # the scheduler service fills them in
            runs = scheduled(c, dep)
            time.sleep(2)
        assert runs and all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 30 for r in runs)
        serve.set_nightly_schedule(stack_ctx.stack.api_url, active=False)
        assert not any(s.active for s in c.read_deployment_schedules(dep.id))
        assert not scheduled(c, dep)


def test_bad_parameters_rejected_before_a_worker_starts(stack_ctx):
    """The server validates against the flow's schema: no flow run is created, so no worker starts."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    with stack_ctx.client() as c:
        dep = c.read_deployment_by_name("ogpo/full-pipeline")
        only = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        before = c.count_flow_runs(deployment_filter=only)
        for bad in ({"rev": "--upload-pack=x"}, {"seeds": []}, {"targets": ["a b"]}, {"finetune_pool": "tpu"}):
            with pytest.raises(PrefectHTTPStatusError, match="Validation failed"):
                c.create_flow_run_from_deployment(dep.id, parameters=bad)
    rc, out, run_id = deployment_run(stack_ctx, "ogpo/full-pipeline", {"profile": "huge"}, watch=False, timeout=60)
    assert rc != 0 and run_id is None and "huge" in out, out
    with stack_ctx.client() as c:
        assert c.count_flow_runs(deployment_filter=only) == before


def test_fake_pipeline_runs_then_reruns_nothing(stack_ctx):
    ctx = stack_ctx
    params = {"repo_url": str(ctx.fake), "rev": "main", "result_branch": "results/fake"}
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, timeout=300)
    assert rc == 0 and "Completed" in out, out[-3000:]
    _pull_and_compare(ctx, ctx.fake, "results/fake")
    t0 = time.monotonic()
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, timeout=300)
    assert rc == 0 and "Completed" in out
    assert "| ran |" not in artifact(ctx, run_id, "ogpo-pipeline")
    assert not [t for t in task_runs(ctx, run_id) if t.name in ("ingest", "finetune", "evaluate")]
    print(f"fake pipeline rerun: {time.monotonic() - t0:.1f} s")


def test_seeds_fan_out_in_parallel_on_shared_upstream(stack_ctx):
    """seeds=[2, 3]: finetune and everything downstream once per seed, ingest once, one result per seed."""
    ctx = stack_ctx
    params = {"repo_url": str(ctx.fake), "seeds": [2, 3], "seed_param": "finetune.scale",
              "overrides": {"finetune.step_s": 1.0}, "result_branch": "results/seeds"}  # fmt: skip
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, timeout=400)
    assert rc == 0 and "Completed" in out, out[-3000:]
    runs = task_runs(ctx, run_id)
    names = sorted(t.name for t in runs if t.name != "publish" and not t.name.startswith(("plan", "publish")))
    assert names == ["evaluate#seed2", "evaluate#seed3", "finetune#seed2", "finetune#seed3", "ingest"], names
    ft = {t.name: t for t in runs if t.name.startswith("finetune#")}
    a, b = ft["finetune#seed2"], ft["finetune#seed3"]
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two seeds did not overlap"
    for seed in (2, 3):
        assert f"scale: {seed}" in git(ctx.fake, "show", f"results/seeds/seed-{seed}:params.yaml")


def _commit_study(ctx, seeds: list[int]) -> None:
    """A 2-algorithm toy study (tiny budget) committed in the repository the workers clone."""
    study = ctx.origin / "studies/stacktiny/study.yaml"
    if not study.exists():
        res = subprocess.run(
            [str(BIN / "python"), "-m", "stages.study", "new", "stacktiny", "--task", "toy", "--algos", "ogpo+ca,qc",
             "--seeds", "0", "--budget", "1280", "--eval-every", "640"],
            cwd=ctx.origin, capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(study.read_text())
    doc["study"] |= {"seeds": seeds, "eval_episodes": 16, "final_episodes": 32}
    study.write_text(yaml.safe_dump(doc, sort_keys=False))
    git(ctx.origin, "add", "studies/stacktiny")
    git(ctx.origin, "commit", "-qm", f"study stacktiny: seeds {seeds}")


def test_study_deployment_runs_each_algo_and_seed_once_then_only_a_new_seed(stack_ctx):
    """`ogpo/study` on the real stack: 2 algorithms x 2 seeds, results in the bucket; adding a seed runs only it."""
    import csv
    import io

    ctx = stack_ctx
    _commit_study(ctx, [0, 1])
    rc, out, run_id = deployment_run(ctx, "ogpo/study", {"study": "stacktiny"}, timeout=900)
    assert rc == 0 and "Completed" in out, out[-3000:]
    names = sorted(t.name for t in task_runs(ctx, run_id) if ":run@" in t.name)
    assert names == [f"studies/stacktiny/dvc.yaml:run@{a}-{s}" for a in ("ogpo+ca", "qc") for s in (0, 1)], names
    sha = git(ctx.origin, "rev-parse", "HEAD").strip()
    prefix = f"studies/stacktiny/{sha[:12]}/"
    assert sorted(k[len(prefix) :] for k in bucket_keys(ctx, prefix)) == ["report.html", "runs.csv", "summary.json"]
    client = s3(ctx)
    rows = list(csv.DictReader(io.StringIO(client.get_object(Bucket=ctx.stack.bucket, Key=prefix + "runs.csv")
                                           ["Body"].read().decode())))  # fmt: skip
    assert {(r["algo"], r["seed"]) for r in rows} == {("ogpo+ca", "0"), ("ogpo+ca", "1"), ("qc", "0"), ("qc", "1")}
    summary = json.loads(client.get_object(Bucket=ctx.stack.bucket, Key=prefix + "summary.json")["Body"].read())
    assert list(summary["algorithms"]) == ["ogpo+ca", "qc"]
    html = client.get_object(Bucket=ctx.stack.bucket, Key=prefix + "report.html")["Body"].read().decode()
    assert "<svg" in html and "qc" in html
    md = artifact(ctx, run_id, "ogpo-study")
    assert "| ogpo+ca | 2 |" in md and "| qc | 2 |" in md, md
    assert "stages: 7 done, 0 running, 0 left of 7" in flow_logs(ctx, run_id)

    _commit_study(ctx, [0, 1, 2])
    rc, out, run_id = deployment_run(ctx, "ogpo/study", {"study": "stacktiny"}, timeout=900)
    assert rc == 0 and "Completed" in out, out[-3000:]
    md = artifact(ctx, run_id, "ogpo-study")
    ran = md.split("Stage runs this time: ", 1)[1].split(")", 1)[0]
    assert "run@ogpo+ca-2" in ran and "run@qc-2" in ran and "aggregate" in ran, md
    assert not any(f"run@{a}-{s}" in ran for a in ("ogpo+ca", "qc") for s in (0, 1)), md  # finished runs: cached
    assert "| ogpo+ca | 3 |" in md, md


def test_degraded_checkpoint_fails_nightly_regression_with_report(stack_ctx):
    ctx = stack_ctx
    git(ctx.fake, "tag", "-f", "regression-baseline", "main")
    git(ctx.fake, "checkout", "-q", "-b", "degraded")
    params = yaml.safe_load((ctx.fake / "params.yaml").read_text())
    params["evaluate"]["successes"] = 3  # 3/20 against the baseline's 18/20
    (ctx.fake / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(ctx.fake, "commit", "-q", "-am", "degrade the policy")
    git(ctx.fake, "checkout", "-q", "main")
    rc, out, run_id = deployment_run(
        ctx, "ogpo/nightly-regression", {"repo_url": str(ctx.fake), "rev": "degraded"}, timeout=300
    )
    run = flow_run(ctx, run_id)
    assert run.state.is_failed(), run.state
    assert "REGRESSION" in run.state.message and "p = " in run.state.message
    report = artifact(ctx, run_id, "nightly-regression")
    assert "REGRESSION" in report and "3/20" in report and "18/20" in report and "alpha = 0.05" in report
    assert bucket_keys(ctx, "reports/regression/")


def test_missing_regression_baseline_fails_with_a_clear_message(stack_ctx):
    ctx = stack_ctx
    rc, out, run_id = deployment_run(
        ctx, "ogpo/nightly-regression", {"repo_url": str(ctx.fake), "rev": "main", "baseline_rev": "no-such-tag"},
        timeout=300,
    )  # fmt: skip
    run = flow_run(ctx, run_id)
    assert run.state.is_failed(), run.state
    assert "the regression baseline 'no-such-tag' is not a revision of" in run.state.message, run.state.message
    assert "git tag -f no-such-tag <rev>" in run.state.message


def test_wrong_s3_credentials_fail_with_clear_error_and_no_secret(stack_ctx):
    ctx = stack_ctx
    wrong = "WrongSecretValue-1234567890"
    rc, out, run_id = deployment_run(
        ctx, "ogpo/full-pipeline", {"repo_url": str(ctx.fake), "overrides": {"ingest.episodes": 4}},
        job_variables={"env": {"AWS_SECRET_ACCESS_KEY": wrong}}, timeout=300,
    )  # fmt: skip
    run = flow_run(ctx, run_id)
    assert run.state.is_failed()
    logs = flow_logs(ctx, run_id)
    assert "refused the credentials" in logs, logs[-3000:]
    real = ctx.env["AWS_SECRET_ACCESS_KEY"]
    for text in [logs, run.state.message or ""] + [
        p.read_text(errors="replace") for p in (ctx.stack.home / "logs").iterdir()
    ]:
        assert wrong not in text and real not in text
    # ogpo pull: one line, no traceback, no secret
    env = {**ctx.run_env(), "AWS_SECRET_ACCESS_KEY": wrong}
    res = subprocess.run(
        [str(BIN / "ogpo"), "pull", "finetuned", "--rev", "results/fake", "--repo", str(ctx.fake)],
        env=env, capture_output=True, text=True, cwd=ctx.stack.home,
    )  # fmt: skip
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert wrong not in res.stderr and "Traceback" not in res.stderr


def _restart_seaweed(ctx) -> None:
    creds = serve.read_env_file(ctx.stack.home / "credentials.env")
    ctx.stack.procs["seaweed"] = serve.start_seaweed(ctx.stack, creds)
    serve._save(ctx.stack)


def test_seaweed_stopped_during_push_is_retried_nothing_lost(stack_ctx):
    ctx = stack_ctx
    params = {"repo_url": str(ctx.fake), "result_branch": "results/fault-s3",
              "overrides": {"finetune.steps": 4, "finetune.step_s": 1.0, "finetune.scale": 2.0}}  # fmt: skip
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, watch=False, timeout=60)
    assert rc == 0, out

    def finetune_running(_run):
        return any(t.name == "finetune" and t.state and t.state.is_running() for t in task_runs(ctx, run_id))

    wait_state(ctx, run_id, pred=finetune_running, timeout=120)
    serve.stop_proc(ctx.stack.procs["seaweed"], signal.SIGTERM, 15)  # down before the stage's push

    def retrying(_run):
        return any(t.name == "finetune" and t.state and t.state.name in ("AwaitingRetry", "Retrying")
                   for t in task_runs(ctx, run_id))  # fmt: skip

    try:
        wait_state(ctx, run_id, pred=retrying, timeout=240)
    finally:
        _restart_seaweed(ctx)
    run = wait_state(ctx, run_id, timeout=300)
    assert run.state.is_completed(), run.state
    assert "will retry" in flow_logs(ctx, run_id)
    assert assert_objects_intact(ctx) > 0
    _pull_and_compare(ctx, ctx.fake, "results/fault-s3")


def test_finetune_runs_on_the_gpu_pool_when_a_gpu_worker_is_online(stack_ctx):
    """The dispatch to the ``gpu`` pool, end to end, with the pool and ``ogpo/stage-gpu`` deployment exactly as
    ``ogpo serve`` made them and a gpu worker as ``ogpo serve --gpu-workers 1`` starts it (no GPU is needed for
    the dispatch itself: fine-tuning picks its device at run time)."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    ctx = stack_ctx
    with ctx.client() as c:
        assert c.read_work_pool("gpu").type == "process"
        assert c.read_deployment_by_name("ogpo/stage-gpu").job_variables["env"]["MUJOCO_GL"] == "egl"
    gpu_worker = serve.start_worker(ctx.stack, ctx.env, 1, pool="gpu")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with ctx.client() as c:
                if str(c.read_work_pool("gpu").status.value).upper() == "READY":
                    break
            time.sleep(1)
        params = {"repo_url": str(ctx.fake), "overrides": {"finetune.scale": 5.0}}
        rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, timeout=400)
        assert rc == 0 and "Completed" in out, out[-3000:]
        names = {t.name for t in task_runs(ctx, run_id)}
        assert "finetune@gpu" in names and "finetune" not in names, names
        assert "ogpo-gpu-1" in Path(gpu_worker.log).read_text(errors="replace")
    finally:
        serve.stop_proc(gpu_worker, signal.SIGINT, 30)
        with ctx.client() as c:
            c.update_work_pool("gpu", WorkPoolUpdate(is_paused=True))  # later tests fine-tune on cpu


def test_killed_worker_flow_run_is_retried_and_resumes(stack_ctx):
    ctx = stack_ctx
    steps = 16
    params = {"repo_url": str(ctx.fake), "result_branch": "results/fault-worker",
              "overrides": {"finetune.steps": steps, "finetune.step_s": 1.0, "finetune.scale": 3.0}}  # fmt: skip
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, watch=False, timeout=60)
    assert rc == 0, out
    key = f"state/{run_id.replace('-', '')}/finetune/LATEST"
    deadline = time.monotonic() + 180
    while key not in bucket_keys(ctx, "state/") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert key in bucket_keys(ctx, "state/"), "no state snapshot was mirrored"
    time.sleep(2)
    worker = ctx.stack.procs["worker-cpu-1"]
    victims = [worker.pid, *descendants(worker.pid)]  # the worker, its flow run and the stage: a lost machine
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    ctx.stack.procs["worker-cpu-1"] = serve.start_worker(ctx.stack, ctx.env, 2)
    serve._save(ctx.stack)
    run = wait_settled(ctx, run_id, timeout=600)
    assert run.state.is_completed(), state_history(ctx, run_id)
    assert run.run_count >= 2
    assert "resuming finetune" in flow_logs(ctx, run_id)
    out_dir = _pull_and_compare(ctx, ctx.fake, "results/fault-worker")
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["steps"] == list(range(steps))  # resumed: no step lost, none repeated


def test_worker_killed_alone_is_restarted_and_its_run_resumes_leaving_nothing(stack_ctx):
    """kill -9 of the worker process only, during finetune: the supervisor ends what the worker left (engine,
    dvc, stage), marks the run Crashed, removes its workspaces and restarts the worker; the crash automation
    reschedules the run, which completes with no manual step and its finetune resumes from the mirrored state."""
    from tests.pipeline.stackutil import cmdline, same_process_alive, wait_for

    ctx = stack_ctx
    steps = 12
    params = {"repo_url": str(ctx.fake), "result_branch": "results/fault-worker-alone",
              "overrides": {"finetune.steps": steps, "finetune.step_s": 1.0, "finetune.scale": 4.0}}  # fmt: skip
    rc, out, run_id = deployment_run(ctx, "ogpo/full-pipeline", params, watch=False, timeout=60)
    assert rc == 0, out
    key = f"state/{run_id.replace('-', '')}/finetune/LATEST"
    assert wait_for(lambda: key in bucket_keys(ctx, "state/"), 180), "no state snapshot was mirrored"
    time.sleep(2)

    def running_stage():  # (name, worker) whose descendants run this finetune stage
        for name, proc in serve.load(ctx.stack.home).procs.items():
            alive = name.startswith("worker-cpu") and proc.alive()
            if alive and any("fake_stages.py finetune" in cmdline(p) for p in descendants(proc.pid)):
                return name, proc
        return None

    found = wait_for(running_stage, 30)
    assert found, "finetune is not running under a recorded cpu worker"
    name, worker = found
    left = [(p, serve._start_ticks(p)) for p in descendants(worker.pid)]  # engine, dvc, the stage
    engine_cwd = Path(os.readlink(f"/proc/{left[0][0]}/cwd"))
    work_dir = Path(worker.work_dir)
    assert any(ws.is_dir() for ws in work_dir.iterdir()), "no workspace to clean up"
    os.kill(worker.pid, signal.SIGKILL)  # the worker process only: its flow run and the stage are left running

    run = wait_settled(ctx, run_id, timeout=400)
    assert run.state.is_completed(), state_history(ctx, run_id)
    assert run.run_count >= 2, run.run_count
    logs = flow_logs(ctx, run_id)
    assert "resuming finetune" in logs and "resuming at step" in logs, logs[-3000:]
    out_dir = _pull_and_compare(ctx, ctx.fake, "results/fault-worker-alone")
    assert json.loads((out_dir / "config.json").read_text())["steps"] == list(range(steps))

    assert not [p for p, ticks in left if same_process_alive(p, ticks)], "processes of the dead worker remain"
    now = serve.load(ctx.stack.home).procs[name]
    assert now.pid != worker.pid and now.alive(), "the worker was not restarted"
    sup_log = (ctx.stack.home / "logs" / "supervisor.log").read_text()
    assert f"{name} (pid {worker.pid}) died" in sup_log and f"restarted {name}" in sup_log, sup_log[-2000:]
    engine = left[0][0]  # the worker's child: its workspaces are named <hash>-<stage>-<engine pid>
    gone = wait_for(lambda: not [ws for ws in work_dir.iterdir() if ws.name.endswith(f"-{engine}")], 20)
    assert gone, f"workspaces of the dead run remain: {sorted(os.listdir(work_dir))}"
    assert not engine_cwd.exists(), f"the killed flow run's code directory {engine_cwd} remains"


def test_worker_add_joins_the_running_stack_and_is_supervised(stack_ctx):
    """`ogpo worker add` on the running stack: a new cpu worker comes online in Prefect, is recorded, and the
    supervisor restarts it when it dies."""
    from tests.pipeline.stackutil import wait_for

    ctx = stack_ctx
    home = str(ctx.stack.home)
    res = subprocess.run([str(BIN / "ogpo"), "worker", "add", "--home", home], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    name = res.stdout.split()[0]
    proc = serve.load(ctx.stack.home).procs[name]
    assert proc.alive() and proc.pool == "cpu"

    def online(worker_name: str) -> bool:
        with ctx.client() as c:
            return any(w.name == worker_name and str(w.status.value).upper() == "ONLINE"
                       for w in c.read_workers_for_work_pool("cpu"))  # fmt: skip

    assert wait_for(lambda: online(f"ogpo-cpu-{proc.index}"), 60, 1), "the added worker never came online"
    os.kill(proc.pid, signal.SIGKILL)
    restarted = wait_for(lambda: (p := serve.load(ctx.stack.home).procs[name]).pid != proc.pid and p.alive(), 30)
    assert restarted, "the supervisor did not restart the added worker"
    status = subprocess.run([str(BIN / "ogpo"), "status", "--home", home], capture_output=True, text=True)
    assert name in status.stdout and "watching the workers" in status.stdout, status.stdout
