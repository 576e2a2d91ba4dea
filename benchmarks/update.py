"""Seconds per OGPO update (actor + critic) and per rollout decision with Best-of-N, printed as a table.

    python benchmarks/update.py [--device cuda] [--repeats 5] [--only square|cpu] [--threads 1,2] [--ours fp32,bf16]
    python benchmarks/update.py --reference DIR [--ref-python PATH] [--only square|cpu] [--threads 1,2]
                                [--ours fp32,bf16] [--rounds 3] [--block-seconds 2]

``--ours`` lists how our networks compute (ogpo.precision): fp32, bf16 (autocast matmuls, float32 log-probs,
ratios and losses), either with +compile (torch.compile; its first update includes the compilation).

Configurations: the Square paper setting (obs 23, d_a 7, H 4, K 10, G 32, batch 256, M 10, 4x512 MLPs) and the
small CPU setting of the default profile. Timings exclude one warm-up call; CUDA timings synchronize only at
the end of each timed block.

``--reference DIR`` times our update against the official JAX/Flax agent (a local copy of
simchowitzlabpublic/OGPO_public at DIR, outside this repository; nothing of it is copied here). The official
agent runs in its own venv (``bash benchmarks/reference_venv.sh`` makes it; ``--ref-python`` points elsewhere)
through ``benchmarks/reference_driver.py``, which builds it from its own config loader with the
``scripts/ogpo/square.sh`` arguments plus the setting's sizes. Per setting and thread count (CPU only; both
sides pinned to the first N allowed cores), the two updates are timed in alternating blocks (ours then theirs,
theirs then ours, ...) after compile/warm-up, and the table gives the medians, their ratio and the share of a
measured torch matmul peak (float32 and bfloat16) that the counted matmul FLOPs per update reach.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ogpo.algos.ogpo import OGPOAgent, OGPOConfig
from ogpo.critic import CriticConfig
from ogpo.data.replay import SequenceBatch
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF_PYTHON = Path.home() / ".cache" / "ogpo" / "reference-venv" / "bin" / "python"


@dataclass
class Setting:
    name: str
    obs_dim: int
    act_dim: int
    H: int
    K: int
    G: int
    batch: int
    M: int
    hidden: list[int]
    critic_hidden: list[int]
    best_of_n: int = 8
    num_envs: int = 16
    ppo_batch: int | None = None  # states per actor step (default: batch)


SETTINGS = {
    "square": Setting("Square paper", 23, 7, 4, 10, 32, 256, 10, [512] * 4, [512] * 4),
    "cpu": Setting("CPU profile (Lift)", 19, 7, 4, 5, 8, 128, 10, [256] * 2, [128] * 2, num_envs=2, ppo_batch=64),
    "square_cpu": Setting(
        "Square CPU profile", 23, 7, 4, 5, 8, 128, 10, [512] * 3, [128] * 2, num_envs=2, ppo_batch=64
    ),
}


def batch(s: Setting, device: torch.device, g: torch.Generator) -> SequenceBatch:
    B = s.batch
    obs = torch.randn(B, s.obs_dim, generator=g).to(device)
    return SequenceBatch(
        obs=obs,
        actions=(torch.rand(B, s.H, s.act_dim, generator=g) * 2 - 1).to(device),
        R=-torch.rand(B, generator=g).to(device),
        mask=torch.ones(B, device=device),
        next_obs=obs + 0.01,
        valid=torch.ones(B, s.H, device=device),
        start=torch.zeros(B, dtype=torch.long, device=device),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Variant:
    """How our networks compute (ogpo.precision): ``fp32``, ``bf16``, ``fp32+compile``, ``bf16+compile``."""

    precision: str = "fp32"
    compile: bool = False

    @property
    def name(self) -> str:
        return self.precision + ("+compile" if self.compile else "")


def parse_variants(text: str) -> list[Variant]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        prec, _, extra = part.partition("+")
        if prec not in ("fp32", "bf16") or extra not in ("", "compile"):
            raise RefSetupError(
                f"--ours wants fp32, bf16, fp32+compile or bf16+compile (comma-separated), got {part!r}"
            )
        out.append(Variant(prec, extra == "compile"))
    if not out:
        raise RefSetupError("--ours names no variant")
    return out


def make_agent(
    s: Setting, kind: str, device: torch.device, variant: Variant = Variant()
) -> tuple[OGPOAgent, SequenceBatch, SequenceBatch]:
    """Our agent for a setting and a replay batch plus a success-buffer batch (both of the critic batch size)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    actor = make_gcp(GCPConfig(kind=kind, obs_dim=s.obs_dim, act_dim=s.act_dim, H=s.H, K=s.K, hidden=s.hidden))
    agent = OGPOAgent(
        actor.to(device),
        CriticConfig(obs_dim=s.obs_dim, chunk_dim=s.H * s.act_dim, M=s.M, hidden=s.critic_hidden),
        OGPOConfig(
            G=s.G,
            ppo_batch_size=s.ppo_batch or s.batch,
            batch_size=s.batch,
            best_of_n=s.best_of_n,
            precision=variant.precision,
            compile=variant.compile,
        ),
    )
    return agent, batch(s, device, g), batch(s, device, g)


def ran_as(agent: OGPOAgent) -> str:
    """The variant an agent really runs (a host without bf16 or a compiler falls back with a warning)."""
    acc = agent.acceleration
    return ("bf16" if acc.dtype is torch.bfloat16 else "fp32") + ("+compile" if acc.compile else "")


def bench(s: Setting, kind: str, device: torch.device, repeats: int, variant: Variant) -> dict:
    agent, b, sb = make_agent(s, kind, device, variant)
    agent.update_on(b, sb)  # warm-up (and compilation)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        agent.update_on(b, sb)
    sync(device)
    upd = (time.perf_counter() - t) / repeats
    obs = torch.randn(s.num_envs, s.obs_dim, device=device)
    agent.act(obs, "bon")
    sync(device)
    t = time.perf_counter()
    n_act = repeats * 10
    for _ in range(n_act):
        agent.act(obs, "bon")
    sync(device)
    act = (time.perf_counter() - t) / n_act
    return {
        "setting": s.name,
        "kind": kind,
        "variant": ran_as(agent),
        "update_s": upd,
        "bon_decision_s": act,
        "num_envs": s.num_envs,
    }


# ---- --reference: side by side with the official JAX agent -------------------------------------------------


class RefSetupError(Exception):
    """A problem with the reference setup, reported as one line."""


def check_reference(dir_arg: str, python_arg: str | None) -> tuple[Path, Path]:
    src = Path(dir_arg).expanduser().resolve()
    if not src.is_dir():
        raise RefSetupError(f"--reference {dir_arg}: no such directory")
    if src == REPO or REPO in src.parents:
        raise RefSetupError(f"--reference {dir_arg}: the official code must live outside this repository")
    agent_py = src / "ogpo" / "agents" / "ogpo.py"
    needed = [
        agent_py,
        src / "ogpo" / "utils" / "config_loader.py",
        src / "ogpo" / "configs" / "algos" / "ogpo.yaml",
        src / "scripts" / "ogpo" / "square.sh",
    ]
    missing = [str(p.relative_to(src)) for p in needed if not p.is_file()]
    if missing or "class OGPOAgent" not in agent_py.read_text(errors="replace"):
        what = ", ".join(missing) if missing else "class OGPOAgent in ogpo/agents/ogpo.py"
        raise RefSetupError(f"--reference {dir_arg} does not hold the official OGPO agent (missing {what})")
    py = Path(python_arg or os.environ.get("OGPO_REFERENCE_PYTHON") or DEFAULT_REF_PYTHON).expanduser()
    if not (py.is_file() and os.access(py, os.X_OK)):
        hint = "" if python_arg else " (create it with: bash benchmarks/reference_venv.sh)"
        raise RefSetupError(f"reference python not found at {py}{hint}")
    return src, py


class Driver:
    """The official agent's update, served by benchmarks/reference_driver.py in the reference venv."""

    def __init__(self, python: Path, src: Path, s: Setting, threads: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["JAX_PLATFORMS"] = "cpu"
        env["OMP_NUM_THREADS"] = str(threads)
        if threads == 1:
            env["XLA_FLAGS"] = (
                env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            ).strip()
        setting = {k: v for k, v in asdict(s).items() if k not in ("name", "best_of_n", "num_envs")}
        setting["ppo_batch"] = s.ppo_batch or s.batch
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        cmd = [
            str(python),
            "-P",
            str(Path(__file__).with_name("reference_driver.py")),
            "--dir",
            str(src),
            "--setting",
            json.dumps(setting),
            "--threads",
            str(threads),
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=str(src), env=env
        )
        self.info = self._read()
        if not self.info.get("ready"):
            raise RefSetupError(f"reference driver did not start: {self.info}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            tail = [ln for ln in self.stderr.read().splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise RefSetupError(f"reference driver exited ({self.proc.returncode}): {tail[0][:300]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RefSetupError(f"reference driver: {reply['error']}")
        return reply

    def time(self, n: int) -> tuple[float, float]:
        """Seconds per update over n updates, and the cores its process kept busy meanwhile."""
        self.proc.stdin.write(f"time {n}\n")
        self.proc.stdin.flush()
        r = self._read()
        return r["seconds"] / n, r["cpu_seconds"] / r["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def pin(cpus: list[int], threads: int) -> None:
    """This process (and torch's pool) on the first `threads` allowed cores."""
    os.sched_setaffinity(0, cpus[:threads])
    torch.set_num_threads(threads)


def matmul_peak(dtype: torch.dtype, n: int = 2048, bursts: int = 3, seconds: float = 0.5) -> float:
    """Best FLOP/s of an n x n matmul over a few short bursts at the current thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(bursts):
        reps, t = 0, time.perf_counter()
        while (dt := time.perf_counter() - t) < seconds or reps == 0:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n**3 * reps / dt)
    return best


def counted_flops(agent: OGPOAgent, b: SequenceBatch, sb: SequenceBatch) -> float:
    """Matmul FLOPs of one of our updates (forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        agent.update_on(b, sb)
    return float(fc.get_total_flops())


def ours_time(agent: OGPOAgent, b: SequenceBatch, sb: SequenceBatch, n: int) -> tuple[float, float]:
    c0, t0 = os.times(), time.perf_counter()
    for _ in range(n):
        agent.update_on(b, sb)
    wall = time.perf_counter() - t0
    c1 = os.times()
    return wall / n, ((c1.user - c0.user) + (c1.system - c0.system)) / wall


def run_reference(args: argparse.Namespace, threads: list[int], variants: list[Variant]) -> None:
    src, py = check_reference(args.reference, args.ref_python)
    if args.device != "cpu":
        raise RefSetupError("--reference compares on CPU only (the reference venv is CPU-only): use --device cpu")
    cpus = sorted(os.sched_getaffinity(0))
    skipped = [n for n in threads if n > len(cpus)]
    threads = [n for n in threads if n <= len(cpus)]
    if not threads:
        raise RefSetupError(f"no thread count fits the {len(cpus)} allowed cores")
    device = torch.device("cpu")
    peaks, rows, notes, flops_ours = {}, [], [], {}
    versions = ""
    for key, s in SETTINGS.items():
        if args.only and key != args.only:
            continue
        for n in threads:
            pin(cpus, n)
            if n not in peaks:
                peaks[n] = (matmul_peak(torch.float32), matmul_peak(torch.bfloat16))
            drv = Driver(py, src, s, n)
            try:
                info = drv.info
                versions = f"jax {info['versions']['jax']}, Python {info['versions']['python']}"
                if n == threads[0]:
                    over = " ".join(info["overrides"]) or "none"
                    compile_s = info["compile_s"]
                    notes.append(f"{s.name}: official config = square.sh + {over}; XLA compile {compile_s:.0f} s")
                ours_sides = {}
                for v in variants:
                    agent, b, sb = make_agent(s, "flow", device, v)
                    t0 = time.perf_counter()
                    agent.update_on(b, sb)  # warm-up (and compilation)
                    warm = time.perf_counter() - t0
                    if v.compile and n == threads[0]:
                        notes.append(f"{s.name}: ours {v.name} first update (compiling) {warm:.0f} s")
                    if (key, v.precision) not in flops_ours:  # counted eagerly: the compiled graph hides its ops
                        eager, eb, esb = make_agent(s, "flow", device, Variant(v.precision))
                        flops_ours[(key, v.precision)] = counted_flops(eager, eb, esb)
                    if ran_as(agent) != v.name:
                        notes.append(f"{s.name}: ours {v.name} requested, ran as {ran_as(agent)} (see the warning)")
                    ours_sides[v] = (agent, b, sb)
                probe = max([ours_time(*o, 1)[0] for o in ours_sides.values()] + [drv.time(1)[0]])
                block = max(1, round(args.block_seconds / probe))
                times: dict[Variant | None, list[tuple[float, float]]] = {v: [] for v in ours_sides} | {None: []}
                order = [*ours_sides, None]  # None: the reference
                for r in range(args.rounds):
                    for side in order if r % 2 == 0 else order[::-1]:
                        times[side].append(drv.time(block) if side is None else ours_time(*ours_sides[side], block))
            finally:
                drv.close()
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            for v in ours_sides:
                rows.append(
                    {
                        "setting": s.name,
                        "threads": n,
                        "ours_variant": ran_as(ours_sides[v][0]),
                        "block": block,
                        "ours": med(times[v], 0),
                        "ref": med(times[None], 0),
                        "ours_cores": med(times[v], 1),
                        "ref_cores": med(times[None], 1),
                        "ours_flops": flops_ours[(key, v.precision)],
                        "ref_flops": info["matmul_flops"],
                        "peak": peaks[n],
                    }
                )

    print(f"reference: {src} ({versions}); ours: torch {torch.__version__}; CPU, cores allowed {cpus}")
    rounds = f"{args.rounds} round{'s' * (args.rounds > 1)}"
    print(f"{rounds} per setting, blocks alternating ours->ref / ref->ours; medians over rounds")
    for n, (p32, p16) in peaks.items():
        print(
            f"matmul peak (torch 2048^2, {n} thread{'s' * (n > 1)}): float32 {p32 / 1e9:.0f} GFLOP/s, "
            f"bfloat16 {p16 / 1e9:.0f} GFLOP/s"
        )
    for note in notes:
        print(note)
    if skipped:
        print(f"skipped thread counts {skipped}: only {len(cpus)} cores allowed")
    hdr = (
        f"{'setting':<20} {'thr':>3} {'ours':<12} {'upd/blk':>7} {'ours s/upd':>10} {'ref s/upd':>10} {'ref/ours':>8} "
        f"{'GFLOP/upd ours|ref':>18} {'ours %fp32|%bf16':>16} {'ref %fp32|%bf16':>16} {'cores ours|ref':>14}"
    )
    print(hdr)
    for r in rows:
        pct = lambda f, t, p=r["peak"]: f"{100 * f / t / p[0]:5.1f}|{100 * f / t / p[1]:4.1f}"  # noqa: E731
        print(
            f"{r['setting']:<20} {r['threads']:>3} {r['ours_variant']:<12} {r['block']:>7} "
            f"{r['ours']:>10.4f} {r['ref']:>10.4f} "
            f"{r['ref'] / r['ours']:>8.2f} {r['ours_flops'] / 1e9:>9.2f}|{r['ref_flops'] / 1e9:<8.2f} "
            f"{pct(r['ours_flops'], r['ours']):>16} {pct(r['ref_flops'], r['ref']):>16} "
            f"{r['ours_cores']:>6.2f}|{r['ref_cores']:<7.2f}"
        )
    print(
        "ref/ours > 1: ours is faster. GFLOP/upd: matmul FLOPs of one update (fwd+bwd), counted by torch's "
        "FlopCounterMode for ours and from the dots in XLA's compiled HLO for ref. cores: process CPU time / wall."
    )


def parse_threads(text: str | None) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()] if text else []
    except ValueError:
        out = [0]
    if any(n < 1 for n in out):
        raise RefSetupError(f"--threads wants positive integers like 1 or 1,2, got {text!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(SETTINGS), default=None)
    ap.add_argument("--threads", default=None, help="torch threads, a list like 1,2 (with --reference default 1,2)")
    ap.add_argument("--reference", metavar="DIR", default=None, help="local copy of the official JAX source")
    ap.add_argument(
        "--ref-python", metavar="PATH", default=None, help=f"the reference venv's python (default {DEFAULT_REF_PYTHON})"
    )
    ap.add_argument(
        "--ours",
        default="fp32,bf16",
        help="our variants to time, comma-separated: fp32, bf16, fp32+compile, bf16+compile (default fp32,bf16)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --reference: alternating rounds per row")
    ap.add_argument("--block-seconds", type=float, default=2.0, help="with --reference: target seconds per block")
    args = ap.parse_args()
    try:
        threads = parse_threads(args.threads)
        variants = parse_variants(args.ours)
        if args.reference is not None:
            if args.rounds < 1 or args.block_seconds <= 0:
                raise RefSetupError("--rounds must be >= 1 and --block-seconds > 0")
            run_reference(args, threads or [1, 2], variants)
            return
    except RefSetupError as e:
        print(f"update.py: {e}", file=sys.stderr)
        sys.exit(2)
    device = torch.device(args.device)
    thread_counts = threads or [torch.get_num_threads()]
    rows = []
    for key, s in SETTINGS.items():
        if args.only and key != args.only:
            continue
        for kind in ("flow", "diffusion"):
            for v in variants:
                for n in thread_counts:  # a stage's `threads` param: how much a second core buys this setting
                    torch.set_num_threads(n)
                    rows.append(bench(s, kind, device, args.repeats, v) | {"threads": n})
    print(f"device: {device} (threads {','.join(map(str, thread_counts))}), torch {torch.__version__}")
    print(
        f"{'setting':<20} {'GCP':<10} {'ours':<12} {'thr':>3} {'s / update (actor+critic)':>26} "
        f"{'vs first thr':>12} {'s / BoN-8 decision':>20} {'envs':>5}"
    )
    first: dict[tuple, float] = {}
    for r in rows:
        base = first.setdefault((r["setting"], r["kind"], r["variant"]), r["update_s"])
        print(
            f"{r['setting']:<20} {r['kind']:<10} {r['variant']:<12} {r['threads']:>3} {r['update_s']:>26.4f} "
            f"{base / r['update_s']:>11.2f}x {r['bon_decision_s']:>20.5f} {r['num_envs']:>5}"
        )


if __name__ == "__main__":
    main()
