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
    task_runs,
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


def test_nightly_schedule_visible_via_api(stack_ctx):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with stack_ctx.client() as c:
        dep = c.read_deployment_by_name("ogpo/nightly-regression")
        crons = [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules if s.active]
        assert ("30 2 * * *", "UTC") in crons
        deadline = time.monotonic() + 60
        runs = []
        while not runs and time.monotonic() < deadline:  # the scheduler service fills them in
            runs = c.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
            )
            time.sleep(2)
    assert runs and all(r.expected_start_time.hour == 2 and r.expected_start_time.minute == 30 for r in runs)


def test_bad_parameters_rejected_before_a_worker_starts(stack_ctx):
    """The server validates against the flow's schema: no flow run is created, so no worker starts."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.exceptions import PrefectHTTPStatusError

    with stack_ctx.client() as c:
        dep = c.read_deployment_by_name("ogpo/full-pipeline")
        only = DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
        before = c.count_flow_runs(deployment_filter=only)
        for bad in ({"rev": "--upload-pack=x"}, {"alpha": 2}, {"targets": ["a b"]}, {"mode": "all"}):
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
    run = wait_state(ctx, run_id, timeout=600)
    assert run.state.is_completed(), run.state
    assert run.run_count >= 2
    assert "resuming finetune" in flow_logs(ctx, run_id)
    out_dir = _pull_and_compare(ctx, ctx.fake, "results/fault-worker")
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["steps"] == list(range(steps))  # resumed: no step lost, none repeated
