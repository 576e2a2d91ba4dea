"""Offline critic fitting on demonstrations with the BC policy (spec 4, an option; the default is a random
critic): chunked TD toward the EMA-actor bootstrap plus regression on Monte-Carlo returns, and Cal-QL's
conservative regularizer as a further option.

MC regression anchors Q to returns that actually happened, which is what makes an offline critic useful at the
start of fine-tuning; Cal-QL pushes down Q on out-of-distribution chunks (random and policy samples), but
never below the MC return (its calibration).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ogpo.checks import check_number, check_positive_int
from ogpo.critic import CriticPair, critic_loss, td_target
from ogpo.data.replay import ReplayBuffer
from ogpo.errors import ConfigError, TrainingError
from ogpo.gcp.base import GCP

log = logging.getLogger(__name__)

MODES = ("none", "td_mc", "calql")


@dataclass
class OfflineCriticConfig:
    mode: str = "none"  # none = random init (the paper's default)
    steps: int = 0
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-5
    gamma: float = 0.99
    tau: float = 0.05
    mc_weight: float = 1.0
    calql_alpha: float = 5.0
    calql_samples: int = 10  # random and policy chunks per state in the CQL logsumexp
    log_every: int = 1000

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_positive_int("steps", self.steps, minimum=0)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("calql_samples", self.calql_samples)
        check_positive_int("log_every", self.log_every)
        check_number("lr", self.lr, gt=0)
        check_number("weight_decay", self.weight_decay, ge=0)
        check_number("gamma", self.gamma, ge=0, le=1)
        check_number("tau", self.tau, gt=0, le=1)
        check_number("mc_weight", self.mc_weight, ge=0)
        check_number("calql_alpha", self.calql_alpha, ge=0)
        if self.mode != "none" and self.steps == 0:
            raise ConfigError(f"mode {self.mode!r} needs steps > 0")


def mc_returns(rewards: torch.Tensor, done: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted return-to-go per stored step, restarting at every episode end (buffer in episode order)."""
    out = torch.zeros_like(rewards)
    g = torch.zeros(())
    for t in range(rewards.shape[0] - 1, -1, -1):  # one pass over the offline data, done once
        g = rewards[t] + gamma * g * (1.0 - done[t])
        out[t] = g
    return out


def fit_critic_offline(
    critic: CriticPair, target_actor: GCP, demos: ReplayBuffer, cfg: OfflineCriticConfig, generator=None
) -> list[dict]:
    """Train ``critic`` in place on ``demos``; returns loss rows (step, td_loss, mc_loss, cql_loss)."""
    cfg.validate()
    if cfg.mode == "none":
        return []
    H = target_actor.cfg.H
    opt = torch.optim.AdamW(critic.online.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    G_mc = mc_returns(demos.rewards[: demos.size].cpu(), demos.done[: demos.size].cpu(), cfg.gamma)
    G_mc = G_mc.to(demos.device)
    rows: list[dict] = []
    for step in range(1, cfg.steps + 1):
        b = demos.sample(cfg.batch_size, H, cfg.gamma, generator=generator)
        with torch.no_grad():
            nxt = target_actor.sample(b.next_obs, deterministic=False, generator=generator).actions
            y = td_target(critic.target, nxt.reshape(len(b), 1, -1), b.next_obs, b.R, b.mask, cfg.gamma, H)
        q = critic.online(b.obs, b.actions)  # [M, B]
        td = critic_loss(q, y, b.valid[:, -1])
        mc_target = G_mc[b.start]  # MC return-to-go of the sequence start
        mc = critic_loss(q, mc_target, b.valid[:, 0])
        loss = td + cfg.mc_weight * mc
        cql = torch.zeros(())
        if cfg.mode == "calql":
            n = cfg.calql_samples
            B = len(b)
            obs_rep = b.obs.repeat_interleave(n, dim=0)
            rand = torch.rand(B * n, H * target_actor.cfg.act_dim, device=b.obs.device, generator=generator) * 2 - 1
            with torch.no_grad():
                pol = target_actor.sample(obs_rep, deterministic=False, generator=generator).actions
            q_ood = torch.cat(
                [critic.online(obs_rep, rand).view(-1, B, n), critic.online(obs_rep, pol).view(-1, B, n)], -1
            )
            # Cal-QL: policy-sample Q values are bounded below by the MC return (calibration)
            q_ood = torch.maximum(q_ood, mc_target.view(1, B, 1).expand_as(q_ood))
            cql = (torch.logsumexp(q_ood, -1) - q).mean()
            loss = loss + cfg.calql_alpha * cql
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not bool(torch.isfinite(loss)):
            raise TrainingError(f"offline critic loss is not finite at step {step}")
        opt.step()
        critic.ema_(cfg.tau)
        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append(
                {
                    "step": step,
                    "td_loss": float(td.detach()),
                    "mc_loss": float(mc.detach()),
                    "cql_loss": float(cql.detach()),
                }
            )
            log.info("critic step %d/%d  td %.4f  mc %.4f  cql %.4f", step, cfg.steps, *list(rows[-1].values())[1:])
    return rows
