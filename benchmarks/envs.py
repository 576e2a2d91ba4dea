"""Environment throughput: raw robosuite vs the wrapped env vs the subprocess vector env with a policy in the loop.

Why: fine-tuning on a 2-core CPU is bound by env steps, so the vector env must turn W workers into nearly W
times one env's rate. This prints one table (steps/s per configuration, measured in one run and in
alternating rounds so that background load hits all of them alike) and the ratio

    vector steps/s / (workers x raw single-env steps/s)      (target >= 0.8)

for the vector env's two stepping paths: plain ``step`` (one action per env per round trip, a per-step policy;
the baseline), and queued chunks, the path the trainer and ogpo.rollout.evaluate use (spec 2.9's per-env chunk
queue calls a chunk policy once per chunk and commits the chunk with ``queue_chunks``; workers run ahead through
it while ``step`` still returns one action's results at a time, so seeded results are unchanged). Workers are
pinned to CPUs as the library does by default (when they fill the CPUs) unless ``--no-pin``.

Usage: ``.venv/bin/python benchmarks/envs.py [--task lift] [--workers 2] [--H 4] [--steps 1000] [--rounds 4]
[--no-pin]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ogpo.envs.robosuite import RobosuiteEnv, make_raw_env, task_spec  # noqa: E402
from ogpo.envs.vector import _allowed_cpus, _pin_to_cpu, _should_pin, make_vector_env  # noqa: E402
from ogpo.rollout import ChunkQueue  # noqa: E402


def raw_rate(task: str, steps: int, seed: int) -> tuple[float, float]:
    """robosuite itself: ``env.step`` on its dict observations, soft reset every horizon; steps/s and CPU
    seconds per step."""
    spec = task_spec(task)
    env = make_raw_env(spec, seed=seed)
    rng = np.random.default_rng(seed)
    env.reset()
    actions = rng.uniform(-1, 1, size=(steps, spec.act_dim))
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(steps):
        env.step(actions[t])
        if (t + 1) % spec.horizon == 0:
            env.reset()
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate, (time.process_time() - c0) / steps


_CONCURRENT_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("bench_envs", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
task, steps, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mod.raw_rate(task, 50, seed)  # warm-up
print("ready", flush=True)
sys.stdin.readline()
print(mod.raw_rate(task, steps, seed)[0], flush=True)
"""


def concurrent_raw_rate(task: str, steps: int, seed: int, workers: int, pin: bool) -> float:
    """The machine's parallel ceiling: ``workers`` independent raw envs in separate processes started together
    (pinned like the vector env's workers), summed steps/s. No IPC and no policy, so the gap between this and
    workers x raw is what the hardware loses when its cores are busy at once (shared caches, a VM's vCPUs on
    shared physical cores); the gap between the vector env and this is what the vector env itself costs."""
    cpus = _allowed_cpus() if pin else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_CHILD, __file__, task, str(steps), str(seed + i)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for i in range(workers)
    ]  # fmt: skip
    try:
        for i, proc in enumerate(procs):
            if cpus:
                _pin_to_cpu(proc.pid, cpus[i % len(cpus)])
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return sum(float(proc.stdout.readline()) for proc in procs)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def wrapped_rate(task: str, steps: int, seed: int) -> float:
    """RobosuiteEnv: flat float32 obs, OGPO reward, success check, seeded resets."""
    env = RobosuiteEnv(task)
    rng = np.random.default_rng(seed)
    env.reset(seed)
    actions = rng.uniform(-1, 1, size=(steps, env.act_dim))
    t0 = time.perf_counter()
    for t in range(steps):
        _, _, term, trunc, _ = env.step(actions[t])
        if term or trunc:
            env.reset(seed + t)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def policy(obs_dim: int, act_dim: int, H: int = 1) -> torch.nn.Module:
    """A small MLP standing in for the actor: obs -> H actions (one batched call per decision)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(obs_dim, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(),
        torch.nn.Linear(256, H * act_dim), torch.nn.Tanh(), torch.nn.Unflatten(1, (H, act_dim)),
    )  # fmt: skip


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (from /proc), to separate overhead from scheduling delays."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


MODES = {
    "step": "step (per action)",
    "queued": "queued chunks",
}


def vector_rate(env, net: torch.nn.Module, steps: int, seed: int, mode: str) -> tuple[float, float, float]:
    """Vector env steps/s (counting every env's step), the policy's share of the wall time, and the CPU
    seconds (workers + caller) spent per env step. Modes: ``step``, a per-step policy and one ``step`` per
    action; ``queued``, the pipeline's path (a chunk policy through ogpo.rollout.ChunkQueue, which commits each
    chunk with ``queue_chunks``, and one ``step`` per action)."""
    obs = env.reset(seed)
    queue = ChunkQueue(env.num_envs, net[-1].unflattened_size[0], env.act_dim)
    n = 0
    t_policy = 0.0

    def pol(o: np.ndarray) -> np.ndarray:
        nonlocal t_policy
        tp = time.perf_counter()
        a = net(torch.from_numpy(o)).numpy()
        t_policy += time.perf_counter() - tp
        return a

    cpu0, own0 = _cpu_seconds(env.pids), time.process_time()
    t0 = time.perf_counter()
    with torch.inference_mode():
        while n < steps:
            res = env.step(queue.next_actions(obs, pol, env) if mode == "queued" else pol(obs)[:, 0])
            queue.clear(res.terminated | res.truncated)
            n += env.num_envs
            obs = res.obs
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds(env.pids) - cpu0 + time.process_time() - own0
    return n / wall, t_policy / wall, cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="lift")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--H", type=int, default=4, help="chunk length of the chunk policy (the profiles use 4)")
    ap.add_argument("--steps", type=int, default=1000, help="env steps per measurement")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds; the table shows medians")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="let the scheduler move workers between CPUs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = task_spec(args.task)
    W, H = args.workers, args.H

    t0 = time.perf_counter()
    venv = make_vector_env(args.task, W, args.seed, pin_cpus=False if args.no_pin else None)
    startup = time.perf_counter() - t0
    venv1 = make_vector_env(args.task, 1, args.seed, pin_cpus=False if args.no_pin else None)
    step_net, chunk_net = policy(spec.obs_dim, spec.act_dim), policy(spec.obs_dim, spec.act_dim, H)
    # rows: (label, env, net, mode); the W-worker rows give the ratios
    rows = [
        (f"vector env, {w} worker{'s' if w > 1 else ''}, {MODES[mode]}{'' if mode == 'step' else f' H={H}'} + MLP",
         env, step_net if mode == "step" else chunk_net, mode)
        for mode in MODES for w, env in ((1, venv1), (W, venv))
    ]  # fmt: skip
    for _, env, net, mode in rows:  # warm-up (first steps JIT-compile robosuite's numba kernels)
        vector_rate(env, net, 50 * env.num_envs, args.seed, mode)
    raw_rate(args.task, 50, args.seed)
    pin = _should_pin(False if args.no_pin else None, W)
    raws, raw_cpus, wraps, ceilings, ceiling_ratios = [], [], [], [], []
    rates: dict[str, list[float]] = {r[0]: [] for r in rows}
    cpus: dict[str, list[float]] = {r[0]: [] for r in rows}
    # per round, each W-worker row against the mean of raw measurements taken right before and right after it:
    # the VM's speed drifts by +-20% over minutes, so a ratio of adjacent measurements is far less noisy than a
    # ratio of medians
    ratios: dict[str, list[float]] = {r[0]: [] for r in rows}
    to_ceiling: dict[str, list[float]] = {r[0]: [] for r in rows if r[1] is venv}
    try:
        for r in range(args.rounds):
            rate, cpu = raw_rate(args.task, args.steps, args.seed + r)
            raws.append(rate)
            raw_cpus.append(cpu)
            wraps.append(wrapped_rate(args.task, args.steps, args.seed + r))
            ceil0 = concurrent_raw_rate(args.task, args.steps // 2, args.seed + r, W, pin)
            before, _ = raw_rate(args.task, args.steps // 2, args.seed + r)
            raws.append(before)
            ceiling_ratios.append(ceil0 / (W * before))
            measured = []
            for label, env, net, mode in sorted(rows, key=lambda row: row[1] is not venv):  # W-worker rows first
                v, _, cpu = vector_rate(env, net, args.steps * env.num_envs // W, args.seed + r, mode)
                rates[label].append(v)
                cpus[label].append(cpu)
                if env is venv:
                    after, _ = raw_rate(args.task, args.steps // 2, args.seed + r)
                    raws.append(after)
                    ratios[label].append(v / (W * (before + after) / 2))
                    measured.append((label, v))
                    before = after
                else:  # 1 worker: the caller has a core of its own (per-worker overhead without contention)
                    ratios[label].append(v / before)
            ceil1 = concurrent_raw_rate(args.task, args.steps // 2, args.seed + r, W, pin)
            ceilings += [ceil0, ceil1]
            for label, v in measured:
                to_ceiling[label].append(v / ((ceil0 + ceil1) / 2))
    finally:
        venv.close()
        venv1.close()
    raw, wrapped, raw_cpu = (statistics.median(x) for x in (raws, wraps, raw_cpus))
    med = {k: statistics.median(v) for k, v in rates.items()}
    load = os.getloadavg()[0]
    print(f"\nenv throughput: task {args.task}, {args.steps} steps x {args.rounds} rounds (median), "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")  # fmt: skip
    print(f"{'configuration':<46}{'steps/s':>9}{'per env':>9}{'CPU ms/step':>13}")
    print(f"{'raw robosuite env (1 process)':<46}{raw:>9.1f}{raw:>9.1f}{1e3 * raw_cpu:>13.2f}")
    print(f"{'RobosuiteEnv wrapper (1 process)':<46}{wrapped:>9.1f}{wrapped:>9.1f}")
    ceiling = statistics.median(ceilings)
    print(f"{f'raw robosuite env, {W} processes at once':<46}{ceiling:>9.1f}{ceiling / W:>9.1f}")
    for label, env, _, _ in rows:
        cpu = 1e3 * statistics.median(cpus[label])
        print(f"{label:<46}{med[label]:>9.1f}{med[label] / env.num_envs:>9.1f}{cpu:>13.2f}")
    print(f"\nvector start-up {startup:.1f} s ({W} workers); wrapper / raw = {wrapped / raw:.2f}")
    print("ratio vector / (workers x raw): median over rounds of each round's ratio to the mean raw rate measured "
          "just before and after it (min-max); target >= 0.8")  # fmt: skip
    x = ceiling_ratios
    print(f"  {f'{W} raw processes at once':<32} {statistics.median(x):.2f}  ({min(x):.2f}-{max(x):.2f}, "
          f"{len(x)} rounds; the machine's ceiling)")  # fmt: skip
    for label, env, _, mode in rows:
        if env is venv:
            how = MODES[mode] + ("" if mode == "step" else f" (H={H})") + (" <- pipeline" if mode == "queued" else "")
            x, y = ratios[label], to_ceiling[label]
            print(f"  {how:<32} {statistics.median(x):.2f}  ({min(x):.2f}-{max(x):.2f}, {len(x)} rounds)"
                  f"   of the ceiling: {statistics.median(y):.2f} ({min(y):.2f}-{max(y):.2f})")  # fmt: skip
    print(
        "1 worker / raw (the caller on a core of its own): "
        + ", ".join(f"{MODES[m]} {statistics.median(ratios[lab]):.2f}" for lab, e, _, m in rows if e is venv1)
    )
    print("workers pinned to CPUs: " + ("no (--no-pin)" if args.no_pin else "auto (when they fill the CPUs)"))


if __name__ == "__main__":
    main()
