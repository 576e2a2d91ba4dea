"""Stages of a study (``studies/<name>/dvc.yaml``): the shared start, one stage per (algorithm, seed) run, and
the aggregation into ``results/<name>/`` (runs.csv, summary.json, report.html).

    python -m stages.study new NAME --task toy|lift [--algos a,b] [--seeds 0,1,2]   # writes studies/NAME/
    dvc repro studies/NAME/dvc.yaml          # start once, each (algo, seed) cached on its own, then aggregate
    python -m stages.study status studies/NAME/study.yaml                          # runs done / left
    python -m stages.study check|start|run|aggregate studies/NAME/study.yaml [ALGO SEED]  # what dvc.yaml calls

The study file is validated in full (unknown algorithm, zero seeds, evaluation points past the budget,
algorithms that need different GCP kinds) before any run starts; ``run`` re-checks it, so a bad edit stops
the first stage DVC runs. Two kinds of task:

- ``toy``: in-process (``ogpo.study.toy``). ``start`` trains the shared BC once (``results/<name>/start``);
  each run fine-tunes a copy of it with its own seed.
- a robosuite task: the pipeline's own BC and critic checkpoints (``models/bc``, ``models/critic`` from the
  root ``dvc.yaml`` with ``params.yaml``) are the shared start; each run executes the ``finetune`` and
  ``evaluate`` stages in its own work directory (``results/<name>/work/<algo>-seed<N>``, resumable after a
  kill) with ``params.yaml``'s sections and the study's algorithm, options, seed, budget and evaluation
  schedule. The evaluate stage's BC and fine-tuned results (``final_episodes`` fixed seeds) are the run's
  env-step-0 and final points.

Each finished run is one file (``results/<name>/runs/<algo>/seed<N>.json``, ``ogpo.study.records``), so an
interrupted study loses no finished run and adding a seed runs only that seed's stages.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ogpo.errors import ConfigError
from ogpo.study import records
from ogpo.study.aggregate import summarize, write_runs_csv, write_summary_json
from ogpo.study.spec import StudySpec
from stages.common import git_revision, load_params, stage_main, write_json_atomic, write_text_atomic

log = logging.getLogger("stages.study")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {"toy": ROOT / "studies" / "templates" / "toy.dvc.yaml"}
PIPELINE_TEMPLATE = ROOT / "studies" / "templates" / "pipeline.dvc.yaml"


def load_study(path: str | Path) -> StudySpec:
    """The study file's ``study`` section, validated (ConfigError naming the file and key)."""
    spec = load_params("study", StudySpec, path)
    expected = Path(path).resolve().parent.name
    if expected != spec.name:
        raise ConfigError(f"{path}: study.name {spec.name!r} must match its directory studies/{expected}/")
    return spec


def results_dir(spec: StudySpec) -> Path:
    return Path("results") / spec.name


# --------------------------------------------------------------------------------------------- start


def start(spec: StudySpec) -> None:
    """The shared start: toy BC trained once (robosuite studies start from the pipeline's checkpoints)."""
    out = results_dir(spec) / "start"
    if spec.task != "toy":
        from ogpo.policy_io import load_policy_pair

        _, _, cfg = load_policy_pair("models/bc")  # verifies the checkpoint
        if cfg.get("task") != spec.task:
            raise ConfigError(
                f"study {spec.name}: task {spec.task!r} but models/bc was trained on {cfg.get('task')!r}; "
                "select the task's profile (python -m stages.profile ...) and dvc repro first"
            )
        spec.check_gcp_kind(cfg["gcp"]["kind"])
        write_json_atomic(out / "start.json", {"task": spec.task, "bc": "models/bc", "gcp_kind": cfg["gcp"]["kind"]})
        return
    import torch

    from ogpo.policy_io import save_policy
    from ogpo.study.toy import train_toy_bc

    torch.set_num_threads(1)
    kind = spec.gcp_kind or "flow"
    bc = train_toy_bc(kind, spec.bc_seed, verbose=True, episodes=spec.final_episodes)
    log.info("shared BC start: %d steps, %d/%d ODE successes, %.1f s", bc.steps, bc.successes, bc.episodes, bc.seconds)
    save_policy(out / "bc", bc.actor, bc.target, {"task": "toy", "stage": "study start", "bc_steps": bc.steps})
    write_json_atomic(
        out / "start.json",
        {
            "task": "toy",
            "gcp_kind": kind,
            "bc_seed": spec.bc_seed,
            "bc_steps": bc.steps,
            "gate_success": bc.gate_success,
            "start": records.evaluation(0, bc.episodes, bc.successes),
        },  # no timing here: a re-run of the (deterministic) start must not change the runs' input
    )


# ----------------------------------------------------------------------------------------------- run


def _progress(spec: StudySpec, algo: str, seed: int) -> str:
    """'run 3/10; done 2, left 8, ETA 12 min' from the records already on disk (DVC runs stages one by one)."""
    res = results_dir(spec)
    done = [r for r in spec.runs() if records.record_path(res, *r).exists()]
    walls = [json.loads(records.record_path(res, *r).read_text()).get("wall_time_s", 0.0) for r in done]
    left = len(spec.runs()) - len(done)
    eta = f", ETA {sum(walls) / len(walls) * left / 60:.0f} min at {sum(walls) / len(walls):.0f} s/run" if walls else ""
    index = spec.runs().index((algo, seed)) + 1
    return f"study {spec.name}: run {index}/{len(spec.runs())} ({algo} seed {seed}); done {len(done)}, left {left}{eta}"


def run(spec: StudySpec, algo: str, seed: int) -> Path:
    if (algo, seed) not in spec.runs():
        raise ConfigError(f"study {spec.name}: ({algo}, seed {seed}) is not one of its runs")
    log.info(_progress(spec, algo, seed))
    t0 = time.perf_counter()
    rec = _run_toy(spec, algo, seed) if spec.task == "toy" else _run_pipeline(spec, algo, seed)
    rec["wall_time_s"] = round(time.perf_counter() - t0, 2)
    path = records.write_record(records.record_path(results_dir(spec), algo, seed), rec)
    log.info("%s seed %d: final success %d/%d in %.0f s -> %s", algo, seed, rec["final"]["successes"],
             rec["final"]["episodes"], rec["wall_time_s"], path)  # fmt: skip
    return path


def _provenance() -> dict[str, Any]:
    return {"git_rev": git_revision(), "cpu": _cpu_model(), "python": platform.python_version()}


def _run_toy(spec: StudySpec, algo: str, seed: int) -> dict[str, Any]:
    import torch

    from ogpo.policy_io import load_policy_pair
    from ogpo.study.toy import finetune_toy

    torch.set_num_threads(1)
    start_dir = results_dir(spec) / "start"
    meta = json.loads((start_dir / "start.json").read_text())
    actor, target, _ = load_policy_pair(start_dir / "bc")
    out = finetune_toy(
        actor, target, algo, seed, spec.budget,
        agent_overrides=spec.overrides.get(algo),
        online_overrides={"eval_every": spec.eval_every, "eval_episodes": spec.eval_episodes},
        final_episodes=spec.final_episodes, verbose=True,
    )  # fmt: skip
    curve = [{k: v for k, v in r.items()} for r in out["curve"]]
    return records.make_record(
        study=spec.name, task=spec.task, algo=algo, seed=seed, gcp_kind=actor.cfg.kind, budget=spec.budget,
        start=meta["start"], curve_evals=records.curve_evaluations(curve, out["eval_episodes"]),
        final=records.evaluation(out["env_steps"], out["episodes"], out["final_successes"]),
        wall_time_s=out["seconds"], curve=curve, provenance=_provenance(),
    )  # fmt: skip


def _run_pipeline(spec: StudySpec, algo: str, seed: int) -> dict[str, Any]:
    """The pipeline's finetune + evaluate stages in a work directory of their own, sharing models/bc|critic."""
    root = Path.cwd().resolve()
    work = results_dir(spec) / "work" / f"{algo}-seed{seed}"
    (work / "models").mkdir(parents=True, exist_ok=True)
    for name in ("bc", "critic"):
        link = work / "models" / name
        if not link.is_symlink():
            link.symlink_to(root / "models" / name)
    params = yaml.safe_load(Path("params.yaml").read_text())
    ft = params["finetune"]
    ft |= {"algo": algo, "seed": seed, "agent": dict(spec.overrides.get(algo, {}))}
    ft["online"] = dict(ft.get("online") or {}) | {
        "total_env_steps": spec.budget,
        "eval_every": spec.eval_every,
        "eval_episodes": spec.eval_episodes,
    }
    params["evaluate"] = dict(params.get("evaluate") or {}) | {"episodes": spec.final_episodes, "videos": 0}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    for stage in ("finetune", "evaluate"):
        res = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env)
        if res.returncode != 0:
            raise ConfigError(f"study {spec.name}: {algo} seed {seed}: stage {stage} failed (exit {res.returncode}) "
                              f"in {work}; re-run to resume it")  # fmt: skip
    with open(work / "plots/learning_curve.csv") as f:
        curve = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    ev = json.loads((work / "metrics/eval.json").read_text())
    fin = json.loads((work / "metrics/finetune.json").read_text())
    kind = json.loads((work / "models/finetuned/config.json").read_text())["gcp"]["kind"]
    rec = records.make_record(
        study=spec.name, task=spec.task, algo=algo, seed=seed, gcp_kind=kind, budget=spec.budget,
        start=records.evaluation(0, ev["bc"]["n"], ev["bc"]["successes"]),
        curve_evals=records.curve_evaluations(curve, spec.eval_episodes),
        final=records.evaluation(int(fin["env_steps"]), ev["finetuned"]["n"], ev["finetuned"]["successes"]),
        wall_time_s=0.0, curve=curve, provenance=_provenance() | {"finetune": fin},
    )  # fmt: skip
    shutil.rmtree(work)  # the record holds what the study needs; the work dir held the resumable state
    return rec


# ----------------------------------------------------------------------------------------- aggregate


def aggregate(spec: StudySpec, reps: int = 2000) -> Path:
    """runs.csv, summary.json and report.html of every finished run of the study (all must be there)."""
    logging.getLogger("absl").setLevel(logging.WARNING)  # rliable's per-estimate chatter
    res = results_dir(spec)
    missing = [f"{a} seed {s}" for a, s in spec.runs() if not records.record_path(res, a, s).exists()]
    if missing:
        raise ConfigError(f"study {spec.name}: runs not finished yet: {', '.join(missing)} (dvc repro runs them)")
    recs = [records.read_record(records.record_path(res, a, s)) for a, s in spec.runs()]
    rows = records.runs_rows(recs)
    write_runs_csv(rows, res / "runs.csv")
    reference = spec.reference if spec.reference in spec.algorithms else None
    summary = summarize(rows, reference=reference, reps=reps, algos=spec.algorithms)
    summary["wall_time_s"] = {a: [r["wall_time_s"] for r in recs if r["algo"] == a] for a in spec.algorithms}
    write_summary_json(summary, res / "summary.json")
    _write_report(spec, rows, recs, res)
    return res


def _write_report(spec: StudySpec, rows: list[dict], recs: list[dict], res: Path) -> None:
    try:
        from ogpo.study.report import build_study_report
    except ImportError:  # the study report page is built by ogpo.study.report when it exists
        log.warning("ogpo.study.report not available: no report.html")
        return
    study_file = Path("studies") / spec.name / "study.yaml"
    provenance = {
        "git rev": git_revision(),
        "study file": study_file.read_text() if study_file.exists() else "",
        "CPU": _cpu_model(),
        "GPU": _gpu_model(),
    }
    start = res / "start" / "start.json"
    if start.exists():
        provenance["start"] = start.read_text()
    wall = {(r["algo"], r["seed"]): r["wall_time_s"] for r in recs}
    html = build_study_report(rows, title=f"Study {spec.name} ({spec.task})", provenance=provenance,
                              wall_clock=wall, reference=spec.reference)  # fmt: skip
    write_text_atomic(res / "report.html", html)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_model() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:
        return "unknown"


# ------------------------------------------------------------------------------------- status, new


def status(spec: StudySpec) -> str:
    res = results_dir(spec)
    lines = [f"study {spec.name} ({spec.task}): {len(spec.algorithms)} algorithms x {len(spec.seeds)} seeds, "
             f"{spec.budget} env steps each"]  # fmt: skip
    done = 0
    for algo, seed in spec.runs():
        path = records.record_path(res, algo, seed)
        if path.exists():
            rec = records.read_record(path)
            done += 1
            f = rec["final"]
            lines.append(
                f"  done     {algo:8s} seed {seed}: {f['successes']}/{f['episodes']} in {rec['wall_time_s']:.0f} s"
            )
        elif (res / "work" / f"{algo}-seed{seed}").exists():
            lines.append(f"  started  {algo:8s} seed {seed} (resumes from its state)")
        else:
            lines.append(f"  left     {algo:8s} seed {seed}")
    lines.insert(1, f"  {done}/{len(spec.runs())} runs done")
    return "\n".join(lines)


def new(name: str, task: str, algos: list[str], seeds: list[int], budget: int, eval_every: int,
        studies: Path = Path("studies")) -> Path:  # fmt: skip
    """Write ``studies/<name>/study.yaml`` (validated) and its ``dvc.yaml`` from the task kind's template."""
    directory = studies / name
    if (directory / "study.yaml").exists():
        raise ConfigError(f"{directory / 'study.yaml'} exists: edit it (nothing was overwritten)")
    doc = {"study": {"name": name, "task": task, "algorithms": algos, "seeds": seeds, "budget": budget,
                     "eval_every": eval_every, "overrides": {a: {} for a in algos}}}  # fmt: skip
    from stages.common import parse_params

    doc = {"study": dataclasses.asdict(parse_params(doc["study"], StudySpec, "study"))}  # every key dvc.yaml tracks
    template = TEMPLATES.get(task, PIPELINE_TEMPLATE)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "study.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copyfile(template, directory / "dvc.yaml")
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.study", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("check", "start", "aggregate", "status"):
        sub.add_parser(name).add_argument("study")
    r = sub.add_parser("run")
    r.add_argument("study")
    r.add_argument("algo")
    r.add_argument("seed", type=int)
    n = sub.add_parser("new")
    n.add_argument("name")
    n.add_argument("--task", required=True)
    n.add_argument("--algos", default="ogpo,ogpo+,ogpo+ca")
    n.add_argument("--seeds", default="0,1,2")
    n.add_argument("--budget", type=int, default=16_000)
    n.add_argument("--eval-every", type=int, default=2_000)
    args = parser.parse_args(argv)
    if args.cmd == "new":
        try:
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else []
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: a comma-separated list of integers") from None
        algos = [a for a in args.algos.split(",") if a]
        print(new(args.name, args.task, algos, seeds, args.budget, args.eval_every))
        return
    spec = load_study(args.study)
    if args.cmd == "check":
        write_text_atomic(results_dir(spec) / "checked.ok", "ok\n")  # constant: downstream stages see no change
    elif args.cmd == "start":
        start(spec)
    elif args.cmd == "run":
        run(spec, args.algo, args.seed)
    elif args.cmd == "aggregate":
        print(aggregate(spec))
    else:
        print(status(spec))


if __name__ == "__main__":
    stage_main(main)
