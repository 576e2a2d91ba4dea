"""Seconds per OGPO update (actor + critic) and per rollout decision with Best-of-N, printed as a table.

    python benchmarks/update.py [--device cuda] [--repeats 5] [--only square|cpu]

Configurations: the Square paper setting (obs 23, d_a 7, H 4, K 10, G 32, batch 256, M 10, 4x512 MLPs) and the
small CPU setting of the default profile. Timings exclude one warm-up call; CUDA timings synchronize only at
the end of each timed block.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from ogpo.algos.ogpo import OGPOAgent, OGPOConfig
from ogpo.critic import CriticConfig
from ogpo.data.replay import SequenceBatch
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig


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


def bench(s: Setting, kind: str, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    actor = make_gcp(GCPConfig(kind=kind, obs_dim=s.obs_dim, act_dim=s.act_dim, H=s.H, K=s.K, hidden=s.hidden))
    agent = OGPOAgent(
        actor.to(device),
        CriticConfig(obs_dim=s.obs_dim, chunk_dim=s.H * s.act_dim, M=s.M, hidden=s.critic_hidden),
        OGPOConfig(G=s.G, ppo_batch_size=s.ppo_batch or s.batch, batch_size=s.batch, best_of_n=s.best_of_n),
    )
    b, sb = batch(s, device, g), batch(s, device, g)
    agent.update_on(b, sb)  # warm-up
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
    return {"setting": s.name, "kind": kind, "update_s": upd, "bon_decision_s": act, "num_envs": s.num_envs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=sorted(SETTINGS), default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for key, s in SETTINGS.items():
        if args.only and key != args.only:
            continue
        for kind in ("flow", "diffusion"):
            rows.append(bench(s, kind, device, args.repeats))
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"{'setting':<20} {'GCP':<10} {'s / update (actor+critic)':>26} {'s / BoN-8 decision':>20} {'envs':>5}")
    for r in rows:
        print(
            f"{r['setting']:<20} {r['kind']:<10} {r['update_s']:>26.4f} {r['bon_decision_s']:>20.5f} {r['num_envs']:>5}"
        )


if __name__ == "__main__":
    main()
