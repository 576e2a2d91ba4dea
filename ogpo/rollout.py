"""Executing action chunks on a vector env, and unbiased evaluation.

Chunks run open-loop from a per-env queue of H actions; a new chunk is sampled only for the envs whose queue
is empty (batched into one policy call), and an env's queue is cleared when its episode ends (spec 1.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ogpo.envs.base import StepResult, VectorEnv

ChunkPolicy = Callable[[np.ndarray], np.ndarray]  # obs [n, obs_dim] -> chunks [n, H, d_a]


class ChunkQueue:
    """Per-env action queues for N envs."""

    def __init__(self, num_envs: int, H: int, act_dim: int) -> None:
        self.H = H
        self.queue = np.zeros((num_envs, H, act_dim), dtype=np.float32)
        self.pos = np.full(num_envs, H)  # H = empty

    def next_actions(self, obs: np.ndarray, policy: ChunkPolicy, env: VectorEnv | None = None) -> np.ndarray:
        """This step's action per env, sampling new chunks (one batched policy call) where a queue is empty.
        With ``env``, each new chunk is committed to it (``queue_chunks``) so its workers can run ahead."""
        need = self.pos >= self.H
        if need.any():
            self.queue[need] = policy(obs[need])
            self.pos[need] = 0
            if env is not None:
                env.queue_chunks(np.flatnonzero(need), self.queue[need])
        a = self.queue[np.arange(len(self.pos)), self.pos]
        self.pos += 1
        return a

    def clear(self, ended: np.ndarray) -> None:
        self.pos[ended] = self.H


@dataclass
class EvalResult:
    success: np.ndarray  # [n] bool
    returns: np.ndarray  # [n]
    lengths: np.ndarray  # [n]
    seeds: np.ndarray  # [n] env index used (the episode's position in each env's quota)

    @property
    def success_rate(self) -> float:
        return float(self.success.mean()) if len(self.success) else 0.0


def evaluate(env: VectorEnv, policy: ChunkPolicy, n_episodes: int, seed: int, H: int) -> EvalResult:
    """Run exactly ``n_episodes`` episodes. Each env has a fixed quota decided up front, so short (successful)
    episodes are not over-counted, which taking the first n finished episodes would do."""
    N = env.num_envs
    quota = np.array([n_episodes // N + (i < n_episodes % N) for i in range(N)])
    done_count = np.zeros(N, dtype=np.int64)
    ret = np.zeros(N)
    length = np.zeros(N, dtype=np.int64)
    out: list[tuple[bool, float, int, int]] = []
    q = ChunkQueue(N, H, env.act_dim)
    obs = env.reset(seed)
    while (done_count < quota).any():
        res: StepResult = env.step(q.next_actions(obs, policy, env))
        ret += res.reward
        length += 1
        ended = res.terminated | res.truncated
        for i in np.flatnonzero(ended):
            if done_count[i] < quota[i]:
                out.append((bool(res.success[i]), float(ret[i]), int(length[i]), int(i)))
                done_count[i] += 1
        ret[ended] = 0.0
        length[ended] = 0
        q.clear(ended)
        obs = res.obs
    s, r, ln, e = (np.asarray(x) for x in zip(*out, strict=True)) if out else ([], [], [], [])
    return EvalResult(np.asarray(s, dtype=bool), np.asarray(r, float), np.asarray(ln), np.asarray(e))


def gcp_policy(gcp, deterministic: bool, generator=None) -> ChunkPolicy:
    """Wrap a GCP as a chunk policy (numpy in, numpy out) on the GCP's device."""
    import torch

    device = next(gcp.parameters()).device

    def fn(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            return gcp.sample(o, deterministic=deterministic, generator=generator).actions.cpu().numpy()

    return fn
