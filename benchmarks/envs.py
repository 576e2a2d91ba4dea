"""Environment throughput: raw robosuite vs the wrapped env vs the subprocess vector env with a policy in the loop.

Why: fine-tuning on a 2-core CPU is bound by env steps, so the vector env must turn W workers into nearly W
times one env's rate. This prints one table (steps/s per configuration, measured in one run and in
alternating rounds so that background load hits all of them alike) and the ratio

    vector steps/s / (workers x raw single-env steps/s)      (target >= 0.8)

Usage: ``.venv/bin/python benchmarks/envs.py [--task lift] [--workers 2] [--steps 1500] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ogpo.envs.robosuite import RobosuiteEnv, make_raw_env, task_spec  # noqa: E402
from ogpo.envs.vector import make_vector_env  # noqa: E402


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


def policy(obs_dim: int, act_dim: int) -> torch.nn.Module:
    """A small MLP standing in for the actor (one batched call per vector step)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(obs_dim, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(),
        torch.nn.Linear(256, act_dim), torch.nn.Tanh(),
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


def vector_rate(env, net: torch.nn.Module, steps: int, seed: int) -> tuple[float, float, float]:
    """Vector env steps/s (counting every env's step), the policy's share of the wall time, and the CPU
    seconds (workers + caller) spent per env step."""
    obs = env.reset(seed)
    n_iter = max(1, steps // env.num_envs)
    t_policy = 0.0
    cpu0, own0 = _cpu_seconds(env.pids), time.process_time()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_iter):
            tp = time.perf_counter()
            act = net(torch.from_numpy(obs)).numpy()
            t_policy += time.perf_counter() - tp
            obs = env.step(act).obs
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds(env.pids) - cpu0 + time.process_time() - own0
    n = n_iter * env.num_envs
    return n / wall, t_policy / wall, cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="lift")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1500, help="env steps per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the table shows medians")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = task_spec(args.task)

    t0 = time.perf_counter()
    venv = make_vector_env(args.task, args.workers, args.seed)
    startup = time.perf_counter() - t0
    venv1 = make_vector_env(args.task, 1, args.seed)
    net = policy(spec.obs_dim, spec.act_dim)
    vector_rate(venv, net, 100, args.seed)  # warm-up (first steps JIT-compile robosuite's numba kernels)
    vector_rate(venv1, net, 50, args.seed)
    raw_rate(args.task, 50, args.seed)
    raws, raw_cpus, wraps, vecs, shares, vec_cpus, ones = [], [], [], [], [], [], []
    try:
        for r in range(args.rounds):
            rate, cpu = raw_rate(args.task, args.steps, args.seed + r)
            raws.append(rate)
            raw_cpus.append(cpu)
            wraps.append(wrapped_rate(args.task, args.steps, args.seed + r))
            ones.append(vector_rate(venv1, net, args.steps // 2, args.seed + r)[0])
            v, share, cpu = vector_rate(venv, net, args.steps, args.seed + r)
            vecs.append(v)
            shares.append(share)
            vec_cpus.append(cpu)
    finally:
        venv.close()
        venv1.close()
    one = statistics.median(ones)
    raw, wrapped, vec = (statistics.median(x) for x in (raws, wraps, vecs))
    raw_cpu, vec_cpu = statistics.median(raw_cpus), statistics.median(vec_cpus)
    ratio = vec / (args.workers * raw)
    load = os.getloadavg()[0]
    print(f"\nenv throughput: task {args.task}, {args.steps} steps x {args.rounds} rounds (median), "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")  # fmt: skip
    print(f"{'configuration':<44}{'steps/s':>10}{'per env':>10}")
    print(f"{'raw robosuite env (1 process)':<44}{raw:>10.1f}{raw:>10.1f}")
    print(f"{'RobosuiteEnv wrapper (1 process)':<44}{wrapped:>10.1f}{wrapped:>10.1f}")
    print(f"{'vector env, 1 worker + MLP policy':<44}{one:>10.1f}{one:>10.1f}")
    label = f"vector env, {args.workers} workers + MLP policy"
    print(f"{label:<44}{vec:>10.1f}{vec / args.workers:>10.1f}")
    print(f"\nvector start-up {startup:.1f} s; policy share of vector wall time {100 * statistics.median(shares):.1f}%")
    print(f"ratio vector / (workers x raw) = {vec:.1f} / ({args.workers} x {raw:.1f}) = {ratio:.2f} (target >= 0.8)")
    print(
        f"wrapper overhead: wrapped / raw = {wrapped / raw:.2f}; IPC overhead: 1-worker vector / raw = {one / raw:.2f}"
    )
    print(
        f"CPU per env step: raw {1e3 * raw_cpu:.2f} ms, vector (workers + caller) {1e3 * vec_cpu:.2f} ms -> "
        f"CPU efficiency {raw_cpu / vec_cpu:.2f} (the ratio an otherwise idle machine with >= workers + 1 cores "
        "would approach; the wall-clock ratio above also pays for other processes' load)"
    )


if __name__ == "__main__":
    main()
