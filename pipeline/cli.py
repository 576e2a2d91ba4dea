"""The ``ogpo`` console script: run the local stack, deploy, and pull versioned checkpoints.

    ogpo serve [--workers N] [--gpu-workers M]   Prefect server + workers + SeaweedFS on 127.0.0.1, supervised
    ogpo worker add [-n N] [--pool cpu|gpu]      add workers to the running stack
    ogpo stop                     stop them (supervisor first, workers with SIGINT)
    ogpo status                   what is running, and where
    ogpo env                      the file to source for the Prefect CLI, dvc and ogpo pull
    ogpo deploy                   work pools, requeue/retry automations and prefect.yaml deployments
    ogpo pull ARTIFACT --rev REV  fetch and verify a checkpoint at a git revision
    ogpo algos                    the registered fine-tuning algorithms (finetune.algo), one per line

Errors from the project (bad input, unreachable store, unknown revision) print one line, exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from ogpo.errors import OGPOError  # noqa: E402


def _serve(args: argparse.Namespace) -> int:
    from pipeline import serve

    stack = serve.serve(
        Path(args.repo),
        home=Path(args.home) if args.home else None,
        prefect_port=args.prefect_port,
        s3_port=args.s3_port,
        bucket=args.bucket,
        workers=args.workers,
        gpu_workers=args.gpu_workers,
        deployments=not args.no_deploy,
        ui=not args.no_ui,
        nightly=args.nightly,
    )
    ui = "" if args.no_ui else f"  (UI {stack.api_url.removesuffix('/api')})"
    print(f"Prefect API   {stack.api_url}{ui}")
    print(f"S3 endpoint   {stack.s3_endpoint}  (bucket {stack.bucket})")
    print(f"environment   {stack.env_file}  (0600; holds the S3 secret)")
    print(f"logs          {stack.home / 'logs'}  (worker restarts: supervisor.log)")
    print(f"next:         set -a; . {stack.env_file}; set +a")
    print("              prefect deployment run ogpo/full-pipeline --param profile=tiny --watch")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from pipeline import serve

    for line in serve.stop(Path(args.home) if args.home else None, timeout=args.timeout):
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipeline import serve

    stack = serve.load(Path(args.home) if args.home else None)
    if not any(p.alive() for p in stack.procs.values()):
        print(f"no ogpo stack is running (the last one ran from {stack.home}); start one with `ogpo serve`")
        return 3
    print(f"Prefect API {stack.api_url}; S3 {stack.s3_endpoint} bucket {stack.bucket}; repo {stack.repo}")
    for proc in stack.procs.values():
        print(f"{proc.name:20s} pid {proc.pid:<8d} {'running' if proc.alive() else 'stopped'}  log {proc.log}")
    sup = stack.supervisor
    if sup is not None:
        what = "watching the workers" if sup.alive() else "stopped: dead workers are not restarted"
        print(f"{sup.name:20s} pid {sup.pid:<8d} {what}  log {sup.log}")
    return 0 if all(p.alive() for p in stack.procs.values()) else 3


def _worker_add(args: argparse.Namespace) -> int:
    from pipeline import serve

    for proc in serve.add_workers(Path(args.home) if args.home else None, n=args.n, pool=args.pool):
        print(f"{proc.name:20s} pid {proc.pid:<8d} started  log {proc.log}")
    return 0


def _env(args: argparse.Namespace) -> int:
    from pipeline import serve

    stack = serve.load(Path(args.home) if args.home else None)
    # the venv's bin first on PATH: prefect, dvc and ogpo of this install, whether or not the venv is active
    venv_bin = shlex.quote(str(Path(sys.executable).parent))
    print(f'set -a; . {shlex.quote(str(stack.env_file))}; set +a; export PATH={venv_bin}:"$PATH"')
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from pipeline import serve

    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise OGPOError("PREFECT_API_URL is not set (source the stack's env file, see `ogpo env`)")
    if not args.pools_only and not os.environ.get("OGPO_GIT_URL"):
        raise OGPOError("OGPO_GIT_URL is not set: the git URL every worker clones (a git server for remote workers)")
    serve.ensure_pools(api)
    serve.ensure_zombie_automation(api)
    serve.ensure_crash_automation(api)
    if not args.pools_only:
        repo = Path(args.repo).resolve()
        stack = serve.Stack(home=serve.default_home(), repo=repo, prefect_port=0, s3_port=0, bucket="")
        serve.deploy(stack, {"PREFECT_API_URL": api})
    print("work pools cpu and gpu (process) ready" + ("" if args.pools_only else "; deployments created"))
    return 0


def _pull(args: argparse.Namespace) -> int:
    from pipeline.pull import pull

    # DVC's API logs its internal errors (with tracebacks) before raising; we print one line instead.
    for name in ("dvc", "dvc_data", "dvc_objects", "s3fs", "aiobotocore", "botocore"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    out = pull(args.artifact, args.rev, out=Path(args.out) if args.out else None, repo=args.repo)
    print(out)
    return 0


def _algos(args: argparse.Namespace) -> int:
    from ogpo.algos import algorithms

    specs = algorithms()
    width = max(map(len, specs))
    for name, spec in specs.items():
        kinds = "/".join(spec.gcp_kinds)
        print(f"{name:<{width}}  {spec.summary}" + (f" [{kinds} GCP only]" if len(spec.gcp_kinds) == 1 else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ogpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="start the local stack (Prefect server, cpu worker, SeaweedFS)")
    s.add_argument("--home", help="state directory (default $OGPO_HOME or ~/.ogpo)")
    s.add_argument("--repo", default=".", help="the git checkout the workers clone from (default .)")
    s.add_argument("--prefect-port", type=int, default=4200)
    s.add_argument("--s3-port", type=int, default=8333)
    s.add_argument("--bucket", default="ogpo")
    s.add_argument("--workers", type=int, default=1, help="cpu process workers (supervised: restarted if they die)")
    s.add_argument("--gpu-workers", type=int, default=0, help="gpu pool workers (on a host with a GPU; fine-tuning)")
    s.add_argument("--no-deploy", action="store_true", help="do not create the prefect.yaml deployments")
    s.add_argument("--no-ui", action="store_true", help="serve the Prefect API without its web UI")
    s.add_argument(
        "--nightly", action="store_true", help="keep the nightly regression's 02:30 UTC schedule on (off by default)"
    )
    s.set_defaults(fn=_serve)

    s = sub.add_parser("worker", help="workers of the running local stack")
    wsub = s.add_subparsers(dest="worker_cmd", required=True)
    w = wsub.add_parser("add", help="start more workers in the running stack (supervised like the others)")
    w.add_argument("--home")
    w.add_argument("-n", "--count", dest="n", type=int, default=1, help="how many (default 1)")
    w.add_argument("--pool", choices=("cpu", "gpu"), default="cpu", help="work pool (default cpu)")
    w.set_defaults(fn=_worker_add)

    s = sub.add_parser("stop", help="stop the local stack")
    s.add_argument("--home")
    s.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL (per process)")
    s.set_defaults(fn=_stop)

    s = sub.add_parser("status", help="show the local stack")
    s.add_argument("--home")
    s.set_defaults(fn=_status)

    s = sub.add_parser("env", help="print the command that loads the stack's environment")
    s.add_argument("--home")
    s.set_defaults(fn=_env)

    s = sub.add_parser("deploy", help="create work pools, the requeue/retry automations and the deployments")
    s.add_argument("--repo", default=".")
    s.add_argument("--pools-only", action="store_true")
    s.set_defaults(fn=_deploy)

    s = sub.add_parser("pull", help="fetch a versioned checkpoint at a git revision and verify it")
    s.add_argument("artifact", help="path in the repo (models/finetuned) or alias: bc, critic, finetuned")
    s.add_argument("--rev", required=True, help="git tag, branch or commit")
    s.add_argument("--out", help="destination directory (default pulled/<sha12>/<path>)")
    s.add_argument("--repo", help="git URL or checkout (default $OGPO_GIT_URL or the current checkout)")
    s.set_defaults(fn=_pull)

    s = sub.add_parser("algos", help="list the registered fine-tuning algorithms (finetune.algo)")
    s.set_defaults(fn=_algos)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    try:
        return args.fn(args)
    except OGPOError as e:
        print(f"ogpo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
