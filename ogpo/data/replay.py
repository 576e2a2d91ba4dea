"""Preallocated ring buffer of primitive steps with length-H sequence sampling (spec 2.2, 2.6).

Whole episodes are written when they end, so every step can carry its episode's success flag and the step just
before the write head is always an episode end: a sequence that runs past the newest data, or into the next
episode, crosses a ``done`` and gets valid = 0 for the steps after it.
Storage is torch tensors on one device, so on a GPU sampling never leaves the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from ogpo.checks import check_positive_int
from ogpo.errors import ConfigError, ShapeError


@dataclass
class SequenceBatch:
    """B length-H sequences starting at s_t.

    obs [B, obs_dim]; actions [B, H, d_a]; R [B] = sum_i gamma^i r_{t+i}; mask [B] = prod_i (1 - terminated);
    next_obs [B, obs_dim] = s_{t+H}; valid [B, H] with valid_i = 1 - 1[done at some step < i].
    """

    obs: torch.Tensor
    actions: torch.Tensor
    R: torch.Tensor
    mask: torch.Tensor
    next_obs: torch.Tensor
    valid: torch.Tensor
    start: torch.Tensor  # [B] buffer index of s_t (to look up per-step extras such as MC returns)
    rewards: torch.Tensor | None = None  # [B, H] the per-step rewards r_{t+i} (past an episode end: not masked)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-chunk columns at s_t, [B, dim] each

    def __len__(self) -> int:
        return self.obs.shape[0]

    def slice(self, n: int) -> SequenceBatch:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: (v[:n] if torch.is_tensor(v) else v) for k, v in out.items()}
        out["extras"] = {k: v[:n] for k, v in self.extras.items()}
        return SequenceBatch(**out)


class ReplayBuffer:
    """Ring buffer of primitive transitions; ``sample`` draws sequences, ``sample(success_only=True)`` the
    success-buffer view (starts inside successful episodes), ``sample(chunk_starts_only=True)`` the executed
    chunks (starts where the rollout drew a new chunk).

    ``extras`` names per-chunk columns (name -> width) an algorithm stores with each chunk's first step, such
    as DSRL's latent noise; steps inside a chunk hold zeros there.
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        act_dim: int,
        device: str | torch.device = "cpu",
        extras: dict[str, int] | None = None,
    ) -> None:
        check_positive_int("replay capacity", capacity)
        self.capacity, self.obs_dim, self.act_dim = capacity, obs_dim, act_dim
        self.extra_dims = dict(extras or {})
        self.device = torch.device(device)
        z = dict(device=self.device)
        self.obs = torch.zeros(capacity, obs_dim, **z)
        self.next_obs = torch.zeros(capacity, obs_dim, **z)
        self.actions = torch.zeros(capacity, act_dim, **z)
        self.rewards = torch.zeros(capacity, **z)
        self.terminated = torch.zeros(capacity, **z)
        self.done = torch.zeros(capacity, **z)
        self.success = torch.zeros(capacity, dtype=torch.bool, **z)
        self.chunk_start = torch.zeros(capacity, dtype=torch.bool, **z)
        self.extras = {k: torch.zeros(capacity, d, **z) for k, d in self.extra_dims.items()}
        self.ptr = 0
        self.size = 0
        self.episodes = 0
        self.successful_episodes = 0
        self._succ_idx: torch.Tensor | None = None
        self._chunk_idx: torch.Tensor | None = None

    # ---- writing ---------------------------------------------------------------------------------------
    def add_episode(
        self,
        obs: np.ndarray | torch.Tensor,
        actions: np.ndarray | torch.Tensor,
        rewards: np.ndarray | torch.Tensor,
        next_obs: np.ndarray | torch.Tensor,
        terminated: bool,
        success: bool,
        chunk_start: np.ndarray | torch.Tensor | None = None,
        extras: dict[str, np.ndarray | torch.Tensor] | None = None,
    ) -> None:
        """Append one finished episode of T steps. The last step is terminated or truncated (time limit).

        chunk_start [T] marks the steps where a new action chunk began (default: none marked); extras maps
        each of this buffer's extra columns to [T, dim] values (default zeros)."""
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)
        T = obs_t.shape[0]
        if T == 0:
            raise ShapeError("replay: cannot add an empty episode")
        if T > self.capacity:
            raise ShapeError(f"replay: episode of {T} steps exceeds capacity {self.capacity}")
        cols = {
            "obs": (obs_t, (T, self.obs_dim)),
            "actions": (torch.as_tensor(np.asarray(actions), dtype=torch.float32), (T, self.act_dim)),
            "rewards": (torch.as_tensor(np.asarray(rewards), dtype=torch.float32), (T,)),
            "next_obs": (torch.as_tensor(np.asarray(next_obs), dtype=torch.float32), (T, self.obs_dim)),
        }
        for name, (x, shape) in cols.items():
            if tuple(x.shape) != shape:
                raise ShapeError(f"replay episode {name}: expected shape {list(shape)}, got {list(x.shape)}")
            if not bool(torch.isfinite(x).all()):
                raise ShapeError(f"replay episode {name}: contains NaN or inf")
        idx = (self.ptr + torch.arange(T)) % self.capacity
        idx = idx.to(self.device)
        self.obs[idx] = obs_t
        self.actions[idx] = cols["actions"][0].to(self.device)
        self.rewards[idx] = cols["rewards"][0].to(self.device)
        self.next_obs[idx] = cols["next_obs"][0].to(self.device)
        term = torch.zeros(T, device=self.device)
        term[-1] = float(terminated)
        done = torch.zeros(T, device=self.device)
        done[-1] = 1.0
        self.terminated[idx] = term
        self.done[idx] = done
        self.success[idx] = bool(success)
        starts = torch.zeros(T, dtype=torch.bool) if chunk_start is None else torch.as_tensor(np.asarray(chunk_start))
        if tuple(starts.shape) != (T,):
            raise ShapeError(f"replay episode chunk_start: expected shape [{T}], got {list(starts.shape)}")
        self.chunk_start[idx] = starts.to(device=self.device, dtype=torch.bool)
        extras = extras or {}
        unknown = sorted(set(extras) - set(self.extras))
        if unknown:
            raise ShapeError(f"replay episode extras {unknown} are not columns of this buffer {sorted(self.extras)}")
        for name, col in self.extras.items():
            if name in extras:
                x = torch.as_tensor(np.asarray(extras[name]), dtype=torch.float32)
                if tuple(x.shape) != (T, col.shape[1]):
                    raise ShapeError(f"replay episode extra {name}: expected shape [{T}, {col.shape[1]}], "
                                     f"got {list(x.shape)}")  # fmt: skip
                col[idx] = x.to(self.device)
            else:
                col[idx] = 0.0
        self.ptr = (self.ptr + T) % self.capacity
        self.size = min(self.size + T, self.capacity)
        self.episodes += 1
        self.successful_episodes += int(bool(success))
        self._succ_idx = None
        self._chunk_idx = None

    # ---- reading ---------------------------------------------------------------------------------------
    @property
    def num_success_steps(self) -> int:
        return int(self._success_indices().numel())

    def success_active(self, batch_size: int, H: int) -> bool:
        """Spec 2.6: the success view is used once it holds >= batch_size (x UTD) + H transitions."""
        return self.num_success_steps >= batch_size + H

    def _success_indices(self) -> torch.Tensor:
        if self._succ_idx is None:
            self._succ_idx = torch.nonzero(self.success[: self.size]).squeeze(-1)
        return self._succ_idx

    @property
    def num_chunks(self) -> int:
        """Executed chunks held (steps marked as chunk starts)."""
        return int(self._chunk_indices().numel())

    def _chunk_indices(self) -> torch.Tensor:
        if self._chunk_idx is None:
            self._chunk_idx = torch.nonzero(self.chunk_start[: self.size]).squeeze(-1)
        return self._chunk_idx

    def sample(
        self,
        batch_size: int,
        H: int,
        gamma: float,
        generator: torch.Generator | None = None,
        success_only: bool = False,
        chunk_starts_only: bool = False,
    ) -> SequenceBatch:
        """Draw ``batch_size`` length-H sequences with uniformly random starts (spec 2.2).

        ``next_obs`` is s_{t+H}, or the next state of the episode's last step when the episode ends inside the
        sequence (such rows have valid[:, -1] = 0; a time-limit truncation there still has a true next state).
        """
        check_positive_int("H", H)
        if self.size == 0:
            raise ConfigError("replay: cannot sample from an empty buffer")
        if success_only and chunk_starts_only:
            raise ConfigError("replay: success_only and chunk_starts_only cannot be combined")
        if success_only or chunk_starts_only:
            pool = self._success_indices() if success_only else self._chunk_indices()
            if pool.numel() == 0:
                raise ConfigError(f"replay: {'success buffer' if success_only else 'chunk-start index'} is empty")
            pick = torch.randint(pool.numel(), (batch_size,), generator=generator, device=self.device)
            start = pool[pick]
        else:
            start = torch.randint(self.size, (batch_size,), generator=generator, device=self.device)
        offs = torch.arange(H, device=self.device)
        idx = (start.unsqueeze(1) + offs) % self.capacity  # [B, H]
        done = self.done[idx]
        # valid_i = 1 - 1[done at some step < i]: exclusive cumulative "any done so far"
        done_before = torch.cumsum(done, dim=1) - done
        valid = (done_before == 0).float()
        # a step in never-written memory (buffer not yet full) is never valid
        if self.size < self.capacity:
            valid = valid * (idx < self.size).float()
        disc = gamma ** offs.float()
        rewards = self.rewards[idx]
        R = (rewards * disc).sum(1)
        mask = (1.0 - self.terminated[idx]).prod(1)
        last = idx.gather(1, (valid.sum(1, keepdim=True).long() - 1).clamp_min(0)).squeeze(1)
        return SequenceBatch(
            obs=self.obs[start],
            actions=self.actions[idx],
            R=R,
            mask=mask,
            next_obs=self.next_obs[last],
            valid=valid,
            start=start,
            rewards=rewards,
            extras={k: v[start] for k, v in self.extras.items()},
        )

    # ---- persistence (resumable training) ----------------------------------------------------------------
    def _columns(self) -> dict[str, torch.Tensor]:
        cols = {name: getattr(self, name) for name in _COLUMNS}
        return cols | {f"extra.{k}": v for k, v in self.extras.items()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        n = self.size
        out = {name: col[:n].cpu() for name, col in self._columns().items()}
        return out | {"counters": torch.tensor([self.ptr, self.size, self.episodes, self.successful_episodes])}

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        ptr, size, episodes, succ = (int(v) for v in t["counters"])
        if size > self.capacity:
            raise ConfigError(f"replay state holds {size} steps, more than capacity {self.capacity}")
        for name, col in self._columns().items():
            if name not in t:
                raise ConfigError(f"replay state has no column {name!r}")
            col[: t[name].shape[0]] = t[name].to(self.device)
        self.ptr, self.size, self.episodes, self.successful_episodes = ptr, size, episodes, succ
        self._succ_idx = None
        self._chunk_idx = None


_COLUMNS = ("obs", "next_obs", "actions", "rewards", "terminated", "done", "success", "chunk_start")
