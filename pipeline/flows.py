"""The Prefect flows: one per use, all named ``ogpo`` so that every deployment is ``ogpo/<name>`` (``prefect.yaml``),
sharing one scheduler (``run_pipeline``) and the stage tasks of ``pipeline/tasks.py``:

- ``full_pipeline`` (deployment ``ogpo/full-pipeline``): resolve the revision, read the stage graph, and run
  each DVC stage as a task as soon as its upstream stages are done (independent stages and per-seed
  ``foreach`` entries in parallel). Fine-tuning goes to the ``gpu`` work pool when a GPU worker is online
  (``finetune_pool="auto"``), else runs here on the ``cpu`` pool. Optionally commits the resulting
  params.yaml + dvc.lock to ``result_branch`` so that ``ogpo pull ... --rev <branch>`` finds the outputs.
  ``seeds=[0, 1, 2]`` fans the seed-dependent stages (``seed_param``'s section, default ``finetune.seed``,
  and everything downstream) out over the seeds in parallel, sharing one run of the upstream stages; each
  seed gets its own result branch ``<result_branch>/seed-<N>``. A re-run with nothing changed is one
  restore-only probe of the run-cache and no stage task.
- ``nightly_regression`` (deployment ``ogpo/nightly-regression``): runs the pipeline up to ``evaluate`` at the
  pinned ``baseline_rev`` and at ``rev``, compares success with a one-sided exact test at ``alpha``, writes
  a report artifact, and ends Failed on a regression.
- ``study`` (deployment ``ogpo/study``): the stages of ``studies/<study>/dvc.yaml`` (check, the shared start,
  one stage per (algorithm, seed), aggregate), the runs in parallel over the workers of both pools.
- ``stage`` (deployment ``ogpo/stage-gpu``): runs the one stage in ``targets`` (what the others submit to the
  gpu pool).

Parameters are typed, so a bad deployment run is rejected by the server's schema check before any worker
starts (``enforce_parameter_schema``), and again by pydantic when the flow starts. Every scheduler loop logs
the stages done / running / left with an ETA at the rate so far.
"""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from ogpo.errors import ConfigError
from pipeline import storage, workspace
from pipeline.tasks import StageResult, StageSpec, plan_pipeline, publish_lock, run_stage, run_stage_on_pool

GPU_POOL = "gpu"
GPU_STAGE_DEPLOYMENT = "ogpo/stage-gpu"
GPU_STAGES = ("finetune",)
STUDY_RUN_STAGE = "run"

Profile = Literal["tiny", "cpu", "square", "transport", "tool_hang"]
Pool = Literal["auto", "cpu", "gpu"]
# A git revision (sha, tag, branch): no whitespace, no leading '-' (never an option to git).
GitRev = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,199}$")]
BranchName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,99}$")]
StageName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*(@[A-Za-z0-9_.\-]+)?$")]
# A stage of the root dvc.yaml, or of a study's (``studies/<name>/dvc.yaml:run@ogpo+ca-0``)
StageTarget = Annotated[
    str,
    Field(pattern=r"^(studies/[a-z0-9][a-z0-9_\-]{0,63}/dvc\.yaml:)?[A-Za-z_][A-Za-z0-9_\-]*(@[A-Za-z0-9_.+\-]+)?$"),
]
ParamKey = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")]
RelPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")]
Alpha = Annotated[float, Field(gt=0.0, lt=0.5)]
Scalar = bool | int | float | str


_ENV_FILE_KEYS = ("OGPO_", "AWS_")


def load_env_file() -> None:
    """Read ``OGPO_ENV_FILE`` (KEY=VALUE lines) into the environment without overriding what is set.

    How a worker whose environment lacks the object-store secrets gets them: a (read-only, 0600) file, not
    job variables, which Prefect stores in its database. Only OGPO_* and AWS_* keys are taken.
    """
    path = os.environ.get("OGPO_ENV_FILE")
    if not path or not os.path.isfile(path):
        return
    with open(path) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and key.startswith(_ENV_FILE_KEYS) and key not in os.environ:
                os.environ[key] = value.strip().strip("'\"")


def _repo_url(repo_url: str | None) -> str:
    url = repo_url or os.environ.get("OGPO_GIT_URL")
    if not url:
        raise ConfigError("no git repository: pass repo_url or set OGPO_GIT_URL on the worker")
    return url


def _gpu_online() -> bool:
    """True when a ``gpu`` work pool exists and has an online worker (its status is READY)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool(GPU_POOL)
    except Exception:
        return False
    status = getattr(pool, "status", None)
    return str(getattr(status, "value", status)).upper() == "READY" and not pool.is_paused


def is_finetune_stage(stage: str) -> bool:
    """The root pipeline's ``finetune`` (or a seed entry of it) and a study's per-(algo, seed) ``run`` stages."""
    path, _, name = stage.rpartition(":")
    name = name.split("@")[0]
    return name in GPU_STAGES or (path.startswith("studies/") and name == STUDY_RUN_STAGE)


def _pool_for(stage: str, finetune_pool: str, gpu_online: bool) -> str:
    if not is_finetune_stage(stage):
        return "cpu"
    if finetune_pool == "auto":
        return "gpu" if gpu_online else "cpu"
    return finetune_pool


def seeded_stages(graph: dict[str, list[str]], seed_param: str) -> set[str]:
    """Stages that depend on the seed: those reading the seed's params section, and everything downstream."""
    section = seed_param.split(".")[0]
    down: dict[str, set[str]] = {s: set() for s in graph}
    for stage, ups in graph.items():
        for up in ups:
            down[up].add(stage)
    out, todo = set(), [s for s in graph if s.split("@")[0] == section]
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo.extend(down[stage])
    if not out:
        raise ConfigError(f"seed_param={seed_param!r}: no stage named {section!r} in dvc.yaml")
    return out


def run_pipeline(
    repo_url: str,
    rev: str,
    profile: str | None,
    overrides: dict[str, Any],
    targets: list[str] | None,
    finetune_pool: str,
    run_key: str,
    collect: dict[str, list[str]] | None = None,
    seeds: list[int] | None = None,
    seed_param: str = "finetune.seed",
) -> tuple[str, dict[str, StageResult]]:
    """Plan at ``rev`` and run the needed stages in dependency order, in parallel where the DAG allows.

    With ``seeds``, the seed-dependent stages (``seed_param``'s section and everything downstream) run
    once per seed, in parallel, on top of one shared run of the stages upstream of them. Results are keyed
    by stage, or ``stage#seed<N>`` for the per-seed ones.
    """
    logger = get_run_logger()
    collect = collect or {}
    files = sorted({f for v in collect.values() for f in v})
    plan = plan_pipeline(repo_url, rev, profile, overrides, run_key, targets, files, run_probe=not seeds)
    sha, graph, wanted, probe = plan["sha"], plan["graph"], set(plan["wanted"]), plan["probe"]
    order = [s for s in workspace.topo_order(graph) if s in wanted]
    if probe.get("complete"):
        got = probe.get("files", {})
        return sha, {
            s: StageResult(s, sha, [], [s], 0.0, probe["lock"].get(s, {}), {f: got[f] for f in collect.get(s, [])})
            for s in order
        }
    per_seed = seeded_stages(graph, seed_param) if seeds else set()
    nodes: dict[str, StageSpec] = {}
    deps: dict[str, list[str]] = {}
    for stage in order:
        for seed in seeds if stage in per_seed else [None]:
            key = stage if seed is None else f"{stage}#seed{seed}"
            node_overrides = dict(overrides) if seed is None else {**overrides, seed_param: seed}
            node_key = run_key if seed is None else f"{run_key}-seed{seed}"
            nodes[key] = StageSpec(repo_url, sha, stage, node_key, profile, node_overrides, collect.get(stage, []), key)
            deps[key] = [u if u not in per_seed else f"{u}#seed{seed}" for u in graph[stage] if u in wanted]
    gpu_online = finetune_pool != "cpu" and any(is_finetune_stage(s) for s in order) and _gpu_online()
    if finetune_pool == "gpu" and not gpu_online:
        logger.warning("finetune_pool='gpu' but no GPU worker is online: the run waits for one")
    results: dict[str, StageResult] = {}
    t0 = time.monotonic()
    running: dict[Any, str] = {}
    failed: list[str] = []
    waiting = list(nodes)
    while waiting or running:
        if not failed:
            for key in [k for k in waiting if all(u in results for u in deps[k])]:
                waiting.remove(key)
                spec = nodes[key]
                if _pool_for(spec.stage, finetune_pool, gpu_online) == "gpu":
                    fut = run_stage_on_pool.submit(spec, GPU_POOL, GPU_STAGE_DEPLOYMENT)
                else:
                    fut = run_stage.submit(spec)
                running[fut] = key
        if not running:
            break
        fut = next(as_completed(list(running)))
        key = running.pop(fut)
        try:
            results[key] = fut.result()
        except Exception as e:
            failed.append(key)
            logger.error("stage %s failed: %s", key, storage.redact(str(e)))
        logger.info(progress_line(len(results), len(running), len(waiting), time.monotonic() - t0, len(nodes)))
    if failed:
        raise workspace.StageError(
            f"stage(s) {', '.join(failed)} failed at {sha[:12]}"
            + (f"; not run: {', '.join(waiting)}" if waiting else "")
        )
    return sha, results


def progress_line(done: int, running: int, waiting: int, elapsed_s: float, total: int) -> str:
    """'stages: 3 done, 2 running, 5 left of 10; 40 s elapsed, ETA ~2 min' (ETA: the rate so far, done per second)."""
    left = running + waiting
    eta = f", ETA ~{elapsed_s / done * left / 60:.0f} min at the rate so far" if done and left else ""
    return f"stages: {done} done, {running} running, {waiting} left of {total}; {elapsed_s:.0f} s elapsed{eta}"


def _summary_markdown(sha: str, rev: str, profile: str | None, results: dict[str, StageResult], extra: str) -> str:
    rows = "\n".join(
        f"| {key} | {'ran' if r.stage in r.ran else 'cache hit'} | {r.seconds:.1f} | {r.worker} |"
        for key, r in results.items()
    )
    return (
        f"# ogpo pipeline at `{rev}` ({sha[:12]}), profile `{profile or 'params.yaml'}`\n\n"
        f"| stage | result | seconds | worker |\n|---|---|---|---|\n{rows}\n\n{extra}"
    )


FLOW_OPTIONS = dict(
    name="ogpo",  # every deployment is ogpo/<name> (prefect.yaml), whichever flow function it runs
    task_runner=ThreadPoolTaskRunner(max_workers=int(os.environ.get("OGPO_MAX_PARALLEL", "4"))),
    validate_parameters=True,
    retries=0,
    log_prints=True,
)
RunKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{8,64}$")]
Seeds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=64)]
StudyName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]


def _start(repo_url: str | None, run_key: str | None) -> tuple[str, str]:
    """What every flow does first: the worker's env file, the object store checked, the repo and run key."""
    from prefect.runtime import flow_run

    load_env_file()
    storage.settings_from_env()  # fail fast with one clear line if the object store is not configured
    return _repo_url(repo_url), run_key or str(flow_run.get_id() or "local").replace("-", "")


@flow(**FLOW_OPTIONS)
def full_pipeline(
    rev: GitRev = "HEAD",
    profile: Profile | None = None,
    targets: list[StageName] | None = None,
    overrides: dict[ParamKey, Scalar] | None = None,
    finetune_pool: Pool = "auto",
    result_branch: BranchName | None = None,
    repo_url: str | None = None,
    run_key: RunKey | None = None,
    seeds: Seeds | None = None,
    seed_param: ParamKey = "finetune.seed",
) -> dict[str, Any]:
    """Deployment ``ogpo/full-pipeline``: the DVC pipeline at ``rev`` on the workers (module docstring)."""
    logger = get_run_logger()
    url, key = _start(repo_url, run_key)
    overrides = dict(overrides or {})
    sha, results = run_pipeline(url, rev, profile, overrides, targets, finetune_pool, key, None, seeds, seed_param)
    published: dict[str, str] = {}
    if result_branch:
        for seed in seeds or [None]:
            # one commit per seed: params.yaml with that seed and the lock of its stages + the shared ones
            suffix = "" if seed is None else f"#seed{seed}"
            branch = result_branch if seed is None else f"{result_branch}/seed-{seed}"
            over = overrides if seed is None else {**overrides, seed_param: seed}
            locks = {r.stage: r.lock for k, r in results.items() if "#" not in k or k.endswith(suffix)}
            msg = f"ogpo results for {sha[:12]} (profile {profile or 'params.yaml'}, flow run {key[:12]})"
            published[branch] = publish_lock(url, sha, profile, over, locks, branch, key, msg)
    extra = "".join(
        f"Results committed as `{c[:12]}` on branch `{b}`: `ogpo pull models/finetuned --rev {b}`\n\n"
        for b, c in published.items()
    )
    create_markdown_artifact(_summary_markdown(sha, rev, profile, results, extra), key="ogpo-pipeline")
    ran = sorted(k for k, r in results.items() if r.stage in r.ran)
    logger.info("pipeline at %s done: %d stage runs, ran %s", sha[:12], len(results), ran or "none")
    return {"sha": sha, "ran": ran, "published": published, "stages": {k: v.__dict__ for k, v in results.items()}}


@flow(**FLOW_OPTIONS)
def nightly_regression(
    rev: GitRev = "main",
    baseline_rev: GitRev = "regression-baseline",
    alpha: Alpha = 0.05,
    profile: Profile | None = None,
    overrides: dict[ParamKey, Scalar] | None = None,
    finetune_pool: Pool = "auto",
    repo_url: str | None = None,
    run_key: RunKey | None = None,
    regression_stage: StageName = "evaluate",
    regression_metrics: RelPath = "metrics/eval.json",
    regression_policy: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")] = "finetuned",
) -> dict[str, Any]:
    """Deployment ``ogpo/nightly-regression``: the pinned revision against ``rev`` (pipeline/regression.py)."""
    from pipeline.regression import run_regression

    url, key = _start(repo_url, run_key)
    return run_regression(
        url, baseline_rev, rev, profile, dict(overrides or {}), finetune_pool, key, alpha, regression_stage,
        regression_metrics, regression_policy,
    )  # fmt: skip


@flow(**FLOW_OPTIONS)
def stage(
    rev: GitRev,
    targets: list[StageTarget],
    profile: Profile | None = None,
    overrides: dict[ParamKey, Scalar] | None = None,
    repo_url: str | None = None,
    run_key: RunKey | None = None,
    collect: list[RelPath] | None = None,
) -> dict[str, Any]:
    """Deployment ``ogpo/stage-gpu``: the one stage in ``targets`` here (what the other flows submit to a pool)."""
    url, key = _start(repo_url, run_key)
    if len(targets) != 1:
        raise ConfigError(f"the stage flow runs exactly one stage, got targets={targets!r}")
    res = run_stage(StageSpec(url, rev, targets[0], key, profile, dict(overrides or {}), list(collect or [])))
    return {"sha": res.sha, "stages": {res.stage: res.__dict__}}


@flow(**FLOW_OPTIONS)
def study(
    study: StudyName,
    rev: GitRev = "HEAD",
    finetune_pool: Pool = "auto",
    repo_url: str | None = None,
    run_key: RunKey | None = None,
) -> dict[str, Any]:
    """Deployment ``ogpo/study``: every (algorithm, seed) run of ``studies/<study>/`` at ``rev``, fanned over the
    workers (runs in parallel after the shared start; fine-tuning on the gpu pool when a GPU worker is online),
    each cached on its own through the S3 run-cache (a finished run is never run again, adding a seed runs only
    it), then the aggregate. runs.csv, summary.json and report.html go to ``s3://<bucket>/studies/<study>/<sha>/``.
    """
    logger = get_run_logger()
    url, key = _start(repo_url, run_key)
    target = f"studies/{study}/dvc.yaml:aggregate"
    files = [f"results/{study}/{name}" for name in STUDY_FILES]
    sha, results = run_pipeline(url, rev, None, {}, [target], finetune_pool, key, {target: files})
    if target not in results:
        raise ConfigError(f"studies/{study}/dvc.yaml at {rev} has no aggregate stage")
    got = results[target].files
    settings = storage.settings_from_env()
    client = storage.s3_client(settings)
    prefix = f"studies/{study}/{sha[:12]}"
    for rel in files:
        body = got[rel] if isinstance(got[rel], str) else json.dumps(got[rel], indent=2)
        name = rel.rsplit("/", 1)[1]
        storage.guarded(f"uploading {rel}", client.put_object, Bucket=settings.bucket, Key=f"{prefix}/{name}",
                        Body=body.encode())  # fmt: skip
    runs = sorted(k for k in results if ":run@" in k)
    ran = sorted(k for k, r in results.items() if r.stage in r.ran)
    md = _study_markdown(study, sha, got[f"results/{study}/summary.json"], results, prefix, settings.bucket)
    create_markdown_artifact(md, key="ogpo-study")
    logger.info("study %s at %s: %d runs, ran %s; results in s3://%s/%s/", study, sha[:12], len(runs), ran or "none",
                settings.bucket, prefix)  # fmt: skip
    return {"sha": sha, "ran": ran, "runs": runs, "results": f"s3://{settings.bucket}/{prefix}/"}


STUDY_FILES = ("runs.csv", "summary.json", "report.html")


def _study_markdown(
    name: str, sha: str, summary: dict[str, Any], results: dict[str, StageResult], prefix: str, bucket: str
) -> str:
    def ci(final: dict[str, Any], stat: str) -> str:  # summary.json (ogpo.study.aggregate.final_success)
        low, high = final[f"{stat}_ci"]
        return f"{final[stat]:.1%} [{low:.1%}, {high:.1%}]"

    rows = []
    for algo, a in summary["algorithms"].items():
        final = a["final_success"]
        rows.append(f"| {algo} | {a['n_seeds']} | {ci(final, 'iqm')} | {ci(final, 'mean')} |")
    ran = sorted(k for k, r in results.items() if r.stage in r.ran)
    return (
        f"# ogpo study `{name}` at {sha[:12]} ({summary['task']})\n\n"
        f"| algorithm | seeds | final IQM success (95% CI) | final mean success (95% CI) |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nStage runs this time: {len(ran)} of {len(results)} ({', '.join(ran) or 'none: all cached'}).\n\n"
        f"Results: `s3://{bucket}/{prefix}/` (runs.csv, summary.json, report.html).\n"
    )
