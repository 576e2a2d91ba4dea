"""OGPO, OGPO+ and OGPO+CA (spec 2.3-2.9, 3.1-3.3): group-relative PPO over whole denoising chains, scored by
an off-policy critic ensemble, plus the chunked TD critic step.

One call to ``OGPOAgent.update`` is one actor step and one critic step (UTD 1), in the order the official code
runs (actor -> actor EMA -> critic -> critic EMA) unless ``update_order="critic_first"`` (the paper's order).
Everything is batched: B states x G chains are one tensor of B*G rows; the M critic heads are one module.

The three registry entries are one agent with two named fields: ``success_bc`` (OGPO+: BC on the success
buffer) and ``advantage`` ("conservative" = OGPO+CA's sign-consensus advantage).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ogpo.agents.schedules import SCHEDULES
from ogpo.algos.base import Agent, AlgoSpec, RunSeeds, register
from ogpo.algos.common import check_finite_step, sample_with_success
from ogpo.checks import check_positive_int
from ogpo.critic import CriticConfig, CriticPair, critic_loss, td_target
from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP
from ogpo.nets import ema_update_
from ogpo.precision import PRECISIONS, accelerate_, resolve


@dataclass
class OGPOConfig:
    """Defaults are what the official code runs (spec 8.1); paper-vs-code choices are options (spec 9.5)."""

    success_bc: bool = True  # OGPO+: success-buffer BC regulariser (spec 3.1)
    advantage: Literal["vanilla", "conservative"] = "conservative"  # conservative = OGPO+CA (spec 3.2)
    G: int = 32  # chains per state (group_num_samples)
    ppo_batch_size: int = 256  # states per actor step
    batch_size: int = 256  # sequences per critic step
    eps: float = 0.01  # PPO clip (both sides)
    lambda_bc: float = 1.0  # success-buffer BC weight (OGPO+)
    gamma: float = 0.99
    tau_actor: float = 0.005
    tau_critic: float = 0.05
    actor_lr: float = 4.5e-5
    actor_lr_floor: float = 2e-5
    actor_lr_schedule: str = "cosine"  # repeating cosine with warm restarts
    lr_warmup: int = 2000
    lr_period: int = 50_000
    lr_restart_warmup: bool = True  # code: every period re-warms from the floor; False: restart at the peak
    critic_lr: float = 4.5e-5  # code: critic optimizer rebuilt with ppo_lr online; the paper declares 3e-4
    critic_weight_decay: float = 1e-5
    grad_clip: float = 1000.0
    best_of_n: int = 8  # rollout candidates scored with Q_BoN (1 = plain SDE sampling)
    bon_heads: int = 2  # Q_BoN = min over this many random heads per (state, candidate)
    success_buffer_td: bool = True  # extra critic step on a success-buffer batch (spec 2.2)
    q_vr_samples: int = 1  # next-chunk samples in the TD target (8 = Q-variance reduction)
    q_vr_reduce: str = "mean"
    normalize_group_std: bool = False  # GRPO std normalisation: ablation only (hurts)
    adv_clip_min: float | None = None  # 0 gives the OGPO-NN ablation
    update_order: str = "actor_first"  # "critic_first" = the paper's Algorithm 1
    # code: old log-prob accumulated on the raw final sample, the stored chain ends in the clipped x_K
    # (spec 1.4); "clean": the chain stores the raw x_K, so old and new log-probs see the same points
    chain_storage: Literal["official", "clean"] = "official"
    # how the networks compute (ogpo.precision): bf16 autocasts every network evaluation (log-probs, ratios,
    # advantages, targets and losses stay float32, and the old log-prob is re-evaluated by the same batched
    # pass as the new one, so equal online and EMA weights still give a ratio of exactly 1); compile runs them
    # through torch.compile. Both fall back with one warning where the host cannot do them.
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False

    def validate(self) -> None:
        if self.advantage not in ("vanilla", "conservative"):
            raise ConfigError(f"advantage must be vanilla or conservative, got {self.advantage!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.chain_storage not in ("official", "clean"):
            raise ConfigError(f"chain_storage must be official or clean, got {self.chain_storage!r}")
        check_positive_int("G", self.G, minimum=2)
        check_positive_int("ppo_batch_size", self.ppo_batch_size)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("best_of_n", self.best_of_n)
        check_positive_int("bon_heads", self.bon_heads)
        check_positive_int("q_vr_samples", self.q_vr_samples)
        check_positive_int("lr_warmup", self.lr_warmup, minimum=0)
        check_positive_int("lr_period", self.lr_period, minimum=0)
        if self.update_order not in ("actor_first", "critic_first"):
            raise ConfigError(f"update_order must be actor_first or critic_first, got {self.update_order!r}")
        if self.actor_lr_schedule not in SCHEDULES:
            raise ConfigError(f"actor_lr_schedule must be one of {sorted(SCHEDULES)}")
        for name in ("eps", "actor_lr", "critic_lr", "tau_actor", "tau_critic", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("tau_actor", "tau_critic"):
            if not getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be <= 1, got {getattr(self, name)!r}")
        if not 0 <= self.actor_lr_floor <= self.actor_lr:
            raise ConfigError(f"actor_lr_floor must be in [0, actor_lr], got {self.actor_lr_floor!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.lambda_bc < 0:
            raise ConfigError(f"lambda_bc must be >= 0, got {self.lambda_bc!r}")
        if self.critic_weight_decay < 0:
            raise ConfigError(f"critic_weight_decay must be >= 0, got {self.critic_weight_decay!r}")


def group_advantages(
    q: torch.Tensor, strategy: str, normalize_std: bool = False, clip_min: float | None = None
) -> torch.Tensor:
    """Advantages [B, G] from target-critic scores q [M, B, G] (spec 2.4, 3.2).

    vanilla: mean over heads minus the group mean. conservative (CA): per-head group advantages; take the
    least optimistic when all heads agree it is better, the smallest magnitude when all agree it is worse,
    and 0 when heads disagree on the sign.
    """
    per_head = q - q.mean(-1, keepdim=True)  # [M, B, G]
    if strategy == "vanilla":
        adv = per_head.mean(0)
    elif strategy == "conservative":
        lo, hi = per_head.min(0).values, per_head.max(0).values
        adv = torch.where(lo > 0, lo, torch.where(hi < 0, hi, torch.zeros_like(lo)))
    else:
        raise ConfigError(f"advantage strategy must be vanilla or conservative, got {strategy!r}")
    if normalize_std:
        adv = adv / (q.mean(0).std(-1, keepdim=True) + 1e-6)
    if clip_min is not None:
        adv = adv.clamp(min=clip_min)
    return adv


def ppo_clip_loss(
    lp_new: torch.Tensor, lp_old: torch.Tensor, adv: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-(mean of min(rho A, clip(rho, 1-eps, 1+eps) A)) with rho = exp(lp_new - lp_old); also the clip fraction."""
    ratio = torch.exp(lp_new - lp_old)
    surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
    clip_frac = ((ratio - 1.0).abs() > eps).float().mean()
    return -surr.mean(), clip_frac


def best_of_n_index(q: torch.Tensor, heads: torch.Tensor, n: int) -> torch.Tensor:
    """Index [N] of the best of n candidates per state under Q_BoN = min over the chosen heads.

    q: [M, N*n] all target heads; heads: [h, N*n] head indices drawn per (state, candidate) (spec 2.7)."""
    return q.gather(0, heads).min(0).values.view(-1, n).argmax(1)


class OGPOAgent(Agent):
    """Actor (GCP) + EMA actor + critic ensemble pair, their optimizers and LR schedules."""

    name = "ogpo+ca"
    metric_names = ("actor_loss", "critic_loss", "bc_loss", "adv_mean", "adv_abs", "clip_frac", "q_mean")
    modes = ("rollout", "eval", "bon", "sde", "ode")

    def __init__(
        self,
        actor: GCP,
        critic_cfg: CriticConfig,
        cfg: OGPOConfig,
        target_actor: GCP | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        if name is not None:
            self.name = name
        self.actor = actor
        self.target_actor = (target_actor if target_actor is not None else copy.deepcopy(actor)).requires_grad_(False)
        dev = next(actor.parameters()).device
        self.critic = CriticPair(critic_cfg).to(dev)
        self.acceleration = resolve(cfg.precision, cfg.compile, dev, self.name)
        for m in (self.actor, self.target_actor, self.critic.online, self.critic.target):
            accelerate_(m, self.acceleration)
        self.H = actor.cfg.H
        self.actor_opt = torch.optim.AdamW(actor.parameters(), lr=cfg.actor_lr, eps=1e-8, weight_decay=0.0)
        self.critic_opt = torch.optim.AdamW(
            self.critic.online.parameters(), lr=cfg.critic_lr, eps=1e-8, weight_decay=cfg.critic_weight_decay
        )
        self.step = 0
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    # ---- acting ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str = "bon") -> torch.Tensor:
        """Action chunks [N, H, d_a] for states obs [N, obs_dim].

        mode "bon": Best-of-N SDE chunks from the EMA actor scored by Q_BoN = min of ``bon_heads`` random target
        heads per (state, candidate) (spec 2.7); "sde": one SDE chunk from the EMA actor; "ode": deterministic
        chunk from the online actor (the evaluation policy of spec 8.1). "rollout" is "bon" ("sde" when
        best_of_n is 1) and "eval" is "ode".
        """
        if mode == "rollout":
            mode = "bon" if self.cfg.best_of_n > 1 else "sde"
        if mode in ("ode", "eval"):
            return self.actor.sample(obs, deterministic=True, generator=self.generator).actions
        n = self.cfg.best_of_n if mode == "bon" else 1
        if mode not in ("bon", "sde"):
            raise ConfigError(f"act mode must be one of {', '.join(self.modes)}, got {mode!r}")
        N = obs.shape[0]
        obs_rep = obs.repeat_interleave(n, dim=0)
        s = self.target_actor.sample(obs_rep, deterministic=False, generator=self.generator)
        if n == 1:
            return s.actions
        q = self.critic.target(obs_rep, s.actions)  # [M, N*n]
        heads = torch.randint(q.shape[0], (self.cfg.bon_heads, N * n), generator=self.generator, device=q.device)
        best = best_of_n_index(q, heads, n)
        return s.actions.view(N, n, *s.actions.shape[1:])[torch.arange(N, device=q.device), best]

    # ---- learning --------------------------------------------------------------------------------------
    def set_lr(self) -> None:
        c = self.cfg
        lr = SCHEDULES[c.actor_lr_schedule](
            self.step, c.actor_lr, c.actor_lr_floor, c.lr_warmup, c.lr_period, c.lr_restart_warmup
        )
        for g in self.actor_opt.param_groups:
            g["lr"] = lr

    def actor_step(self, batch: SequenceBatch, bc_batch: SequenceBatch) -> dict[str, torch.Tensor]:
        c = self.cfg
        states = batch.obs[: c.ppo_batch_size]
        B = states.shape[0]
        obs_rep = states.repeat_interleave(c.G, dim=0)
        with torch.no_grad():
            s = self.target_actor.sample(obs_rep, deterministic=False, generator=self.generator)
            q = self.critic.target(obs_rep, s.actions).view(-1, B, c.G)  # [M, B, G]
            adv = group_advantages(q, c.advantage, c.normalize_group_std, c.adv_clip_min).reshape(-1)
            chain = s.chain
            if c.chain_storage == "official":  # old log-prob stays the raw sample's (spec 1.4)
                chain = chain.clone()
                chain[:, -1].clamp_(-1.0, 1.0)
            lp_old = s.log_prob
            if self.acceleration.dtype is not None:
                # a bf16 network pass is not bitwise the same for the sampler's per-step rows and the batched
                # log-prob's rows; evaluating the old log-prob by the batched pass too keeps ratio == 1 exact
                lp_old = self.target_actor.log_prob(obs_rep, s.chain, validate=False)
        lp = self.actor.log_prob(obs_rep, chain)
        ppo, clip_frac = ppo_clip_loss(lp, lp_old, adv, c.eps)
        bc = self.actor.bc_loss(bc_batch.obs, bc_batch.actions, bc_batch.valid, generator=self.generator)
        loss = ppo + (c.lambda_bc * bc if c.success_bc else 0.0 * bc)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        check_finite_step("actor loss", loss, gn)
        self.set_lr()
        self.actor_opt.step()
        ema_update_(self.target_actor, self.actor, c.tau_actor)
        return {
            "actor_loss": ppo.detach(),
            "bc_loss": bc.detach(),
            "clip_frac": clip_frac,
            "adv_mean": adv.mean(),
            "adv_abs": adv.abs().mean(),
            "adv_zero_frac": (adv == 0).float().mean(),
            "q_mean": q.mean(),
        }

    def sample_next_chunks(self, batch: SequenceBatch) -> torch.Tensor:
        """A' ~ pi_bar(.|s_{t+H}) for the TD target: [B, q_vr_samples, H*d_a] (SDE, spec 2.2)."""
        n = self.cfg.q_vr_samples
        with torch.no_grad():
            s = self.target_actor.sample(
                batch.next_obs.repeat_interleave(n, dim=0), deterministic=False, generator=self.generator
            )
        return s.actions.reshape(len(batch), n, -1)

    def critic_step(self, batch: SequenceBatch, next_chunks: torch.Tensor, name: str = "critic") -> torch.Tensor:
        c = self.cfg
        y = td_target(
            self.critic.target, next_chunks, batch.next_obs, batch.R, batch.mask, c.gamma, self.H, c.q_vr_reduce
        )
        q = self.critic.online(batch.obs, batch.actions)
        loss = critic_loss(q, y, batch.valid[:, -1])
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.critic.online.parameters(), c.grad_clip)
        check_finite_step(f"{name} loss", loss, gn)
        self.critic_opt.step()
        self.critic.ema_(c.tau_critic)
        return loss.detach()

    def update(self, replay: ReplayBuffer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One OGPO update on a replay batch and, once the success view is active, a success-buffer batch."""
        batch, succ = sample_with_success(replay, self.cfg.batch_size, self.H, self.cfg.gamma, generator)
        return self.update_on(batch, succ)

    def update_on(self, batch: SequenceBatch, success_batch: SequenceBatch | None = None) -> dict[str, torch.Tensor]:
        """One OGPO update on given batches. ``success_batch`` is a success-buffer batch when that buffer is
        active, else None: BC then falls back to the replay batch (spec 3.1) and the success-buffer TD step is
        skipped."""
        bc_batch = success_batch if success_batch is not None else batch
        next_chunks = self.sample_next_chunks(batch)  # from pi_bar before this step's EMA (as the code)
        if self.cfg.update_order == "critic_first":
            metrics = {"critic_loss": self.critic_step(batch, next_chunks)}
            metrics.update(self.actor_step(batch, bc_batch))
        else:
            metrics = self.actor_step(batch, bc_batch)
            metrics["critic_loss"] = self.critic_step(batch, next_chunks)
        if self.cfg.success_buffer_td and success_batch is not None:
            metrics["critic_loss_success"] = self.critic_step(
                success_batch, self.sample_next_chunks(success_batch), "success-buffer critic"
            )
        self.step += 1
        return metrics

    # ---- persistence -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "actor": self.actor,
            "target_actor": self.target_actor,
            "critic": self.critic.online,
            "target_critic": self.critic.target,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def generators(self) -> dict[str, torch.Generator]:
        return {"explore": self.generator}


def build(actor: GCP, target_actor: GCP, critic: CriticPair, cfg: OGPOConfig, seeds: RunSeeds, name: str) -> OGPOAgent:
    """The agent from the BC actor pair and the fit_critic stage's critic (architecture and weights)."""
    agent = OGPOAgent(actor, critic.online.cfg, cfg, target_actor=target_actor, name=name)
    agent.critic.load_state_dict(critic.state_dict())
    agent.generator = seeds.torch_generator("explore", next(actor.parameters()).device)
    return agent


def _entry(name: str, summary: str, **defaults: Any) -> AlgoSpec:
    return register(
        AlgoSpec(
            name=name,
            summary=summary,
            config=OGPOConfig,
            build=lambda actor, target, critic, cfg, seeds: build(actor, target, critic, cfg, seeds, name),
            defaults=defaults,
        )
    )


_entry("ogpo", "OGPO: group-relative PPO over denoising chains scored by an off-policy critic ensemble",
       success_bc=False, advantage="vanilla")  # fmt: skip
_entry("ogpo+", "OGPO+: OGPO plus behaviour cloning on the success buffer", success_bc=True, advantage="vanilla")
_entry("ogpo+ca", "OGPO+CA: OGPO+ with the conservative sign-consensus advantage (the default)",
       success_bc=True, advantage="conservative")  # fmt: skip
