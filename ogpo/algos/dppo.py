"""DPPO (baselines-spec 5): on-policy PPO through the denoising chain of a DDPM policy, as ``irom-lab/dppo`` runs it.

The environment MDP (one decision per action chunk) and the denoising MDP (K Gaussian kernels per decision) are
one bi-level MDP. A copy theta_ft of the BC diffusion policy is fine-tuned on the last K' denoising steps only;
the frozen BC weights denoise the first K - K' (spec 5.1). Each iteration:

1. roll out ``n_steps * H`` env steps on every env (``n_steps`` chunks when no episode ends mid-chunk) with the
   stochastic DDPM sampler whose per-step std is floored at ``min_sampling_std`` (exploration), keeping the
   last K'+1 chain iterates of every chunk decision (spec 5.2, 5.3; loop: ``ogpo.agents.onpolicy``);
2. score every fine-tuned transition of every stored chain under the current weights (old log-probs, std floored
   at ``min_logprob_std``), and the value V(s) of every chunk state;
3. rescale chunk rewards by a running std of a discounted return, and run GAE over chunks (gamma per chunk,
   spec 5.4);
4. ``update_epochs`` epochs of minibatches of env-step samples: one PPO ratio per (sample, denoising step) on
   the per-element log-probs clamped to [-5, 2] and averaged over the chunk, advantages normalised per
   minibatch then weighted by gamma_d^(K'-1-k), a clip eps_k rising from 0.001 at the noisiest fine-tuned step
   to 0.01 at the last one, and the value loss on the GAE returns (spec 5.5).

Only ``gcp.kind: diffusion`` is supported: the flow variant (ReinFlow-style, spec 5.6) is not implemented.

Which weights are what: ``agent.actor`` is a ``DPPOPolicy``, a ``DiffusionPolicy`` whose own parameters are
theta_ft and which denoises its first K - K' steps with the frozen BC policy ``agent.target_actor``, so
``agent.actor.sample(...)`` is the whole fine-tuned policy (``deterministic=True``: DDIM; otherwise DDPM with
the exploration floor). Its ``state_dict`` has exactly a ``DiffusionPolicy``'s keys (theta_ft), so a policy
checkpoint stores theta_ft as ``actor`` and the frozen BC weights as ``target_actor``; ``deploy`` rebuilds the
split policy from the two (loading ``actor`` alone is the whole policy only when K' = K).

Evaluation: the official code evaluates with its ``deterministic=True`` DDPM sampler, which is still
stochastic: each step's std is the plain posterior std floored at 1e-3, and only the last step is noiseless
(spec 5.2). That is mode "eval" here (``eval_sampler="ddpm"``); mode "ddim" is the deterministic DDIM map the
project uses to evaluate diffusion GCPs (``sample(deterministic=True)``), mode "rollout" the behaviour policy.

``update`` takes one iteration's ``ChunkRollout`` instead of a replay and runs all of that iteration's epochs and
minibatches; the agent brings its own loop (``loop = "on_policy"``, ``make_trainer``).

Port choices in the loop: envs run chunks from per-env queues as in the off-policy trainer, so an env whose
episode ends mid-chunk (our tasks terminate on success; DPPO's robomimic episodes never end mid-chunk) starts its
next chunk at once instead of idling; env steps are counted as executed; evaluation runs on the separate eval
env every ``eval_every`` env steps instead of as every 10th iteration, so the official "2 critic-only iterations,
the first being an evaluation" is ``n_critic_warmup_itr = 1`` here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from ogpo.agents.schedules import repeating_cosine
from ogpo.algos.base import Agent, AlgoSpec, RunSeeds, register
from ogpo.algos.common import optimizer_step
from ogpo.checkpoint import load_module_tensors
from ogpo.checks import check_positive_int, check_shape
from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP, ChainSample, GCPConfig
from ogpo.gcp.diffusion import BETA_SCHEDULES, DiffusionPolicy

if TYPE_CHECKING:
    from ogpo.agents.online import OnlineConfig
    from ogpo.agents.onpolicy import ChunkRollout, OnPolicyTrainer
    from ogpo.envs.base import VectorEnv

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# Config -------------------------------------------------------------------------------------------------------


@dataclass
class DPPOConfig:
    """Defaults: DPPO's robomimic Square config ``ft_ppo_diffusion_mlp.yaml`` (spec 5.1-5.5 table; Transport
    differs in update_epochs 8, min_sampling_std 0.08 and actor_lr_floor 1e-6)."""

    ft_denoising_steps: int | None = None  # K'; None = ceil(K/2), DPPO's 10 of K = 20 (spec 5.1)
    n_steps: int = 400  # chunks per env per iteration, as n_steps * H env steps per env (spec 5.3)
    batch_size: int = 10_000  # env-step samples per minibatch, each with its K' terms (spec 5.5)
    update_epochs: int = 10  # (spec 5.5)
    gamma: float = 0.999  # per chunk, not per env step (spec 5.4)
    gae_lambda: float = 0.95
    gamma_denoising: float = 0.99  # advantage weight gamma_d^(K'-1-k) of fine-tuned step k (spec 5.4)
    clip_eps: float = 0.01  # clip at the last denoising step (clip_ploss_coef, spec 5.5)
    clip_eps_base: float = 0.001  # clip at the noisiest fine-tuned step
    clip_eps_rate: float = 3.0  # exponential interpolation rate between them
    min_sampling_std: float = 0.1  # std floor of the behaviour sampler (spec 5.2)
    min_logprob_std: float = 0.1  # std floor when scoring log-probs (spec 5.2, pitfall 5.7.1)
    randn_clip: float = 3.0  # sampler noise clipped to +-3 std (spec 5.2)
    logprob_min: float = -5.0  # per-element log-prob clamp before the average (spec 5.5, pitfall 5.7.2)
    logprob_max: float = 2.0
    norm_adv: bool = True  # advantages normalised per minibatch (spec 5.5)
    vf_coef: float = 0.5  # L = L_pg + vf_coef * L_V (spec 5.5)
    target_kl: float | None = 1.0  # stop the iteration's epochs once approx_kl exceeds it (None: never)
    actor_lr: float = 1e-5  # AdamW on theta_ft (spec 5.5)
    actor_lr_floor: float = 1e-5  # cosine-with-warm-restarts floor (Square: = peak, i.e. constant)
    actor_lr_warmup: int = 10  # iterations of linear warmup per cycle
    actor_lr_period: int = 1000  # iterations per cycle
    critic_lr: float = 1e-3  # AdamW on V, constant (its scheduler's floor equals its peak)
    weight_decay: float = 0.0  # both optimizers
    grad_clip: float | None = None  # no gradient clipping in the official runs
    # official n_critic_warmup_itr = 2, but its iteration 0 is an evaluation iteration without update
    # (val_freq = 10), so exactly one training iteration is critic-only (spec 5.5); here no iteration is an eval
    n_critic_warmup_itr: int = 1
    reward_scaling: bool = True  # divide rewards by a running std of a discounted return (spec 5.4)
    reward_scale_gamma: float = 0.99  # the scaler's own discount, not ``gamma``
    reward_clip: float = 10.0  # scaled rewards clipped to +-10
    value_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])  # V(s) residual MLP (spec 5.1)
    eval_sampler: Literal["ddpm", "ddim"] = "ddpm"  # "ddpm" = the official evaluation sampler (see docstring)
    eval_min_std: float = 1e-3  # std floor of the official evaluation sampler
    # "next_episode" (the code): a truncated episode is not done, so GAE bootstraps from V(first obs of the
    # next episode) and the trace runs on (spec 5.4); "final_obs": bootstrap from V(final obs), cut the trace
    bootstrap_truncation: Literal["next_episode", "final_obs"] = "next_episode"

    def validate(self) -> None:
        floats = ("gamma", "gae_lambda", "gamma_denoising", "clip_eps", "clip_eps_base", "clip_eps_rate")
        floats += ("min_sampling_std", "min_logprob_std", "randn_clip", "logprob_min", "logprob_max", "vf_coef")
        floats += ("actor_lr", "actor_lr_floor", "critic_lr", "weight_decay", "reward_scale_gamma", "reward_clip")
        floats += ("eval_min_std", "target_kl", "grad_clip")
        for name in floats:
            v = getattr(self, name)
            if v is None and name in ("target_kl", "grad_clip"):
                continue
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        if self.ft_denoising_steps is not None:
            check_positive_int("ft_denoising_steps", self.ft_denoising_steps)
        for name in ("n_steps", "batch_size", "update_epochs"):
            check_positive_int(name, getattr(self, name))
        for name in ("actor_lr_warmup", "actor_lr_period", "n_critic_warmup_itr"):
            check_positive_int(name, getattr(self, name), minimum=0)
        if self.actor_lr_period and self.actor_lr_warmup >= self.actor_lr_period:
            raise ConfigError(f"actor_lr_warmup must be < actor_lr_period, got {self.actor_lr_warmup}")
        for name in ("gamma", "gae_lambda", "gamma_denoising", "reward_scale_gamma"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        positive = ("clip_eps", "clip_eps_base", "clip_eps_rate", "min_sampling_std", "min_logprob_std")
        positive += ("randn_clip", "actor_lr", "critic_lr", "reward_clip", "eval_min_std")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.actor_lr_floor <= self.actor_lr:
            raise ConfigError(f"actor_lr_floor must be in [0, actor_lr], got {self.actor_lr_floor!r}")
        if not self.logprob_min < self.logprob_max:
            raise ConfigError(f"logprob_min must be < logprob_max, got {self.logprob_min} >= {self.logprob_max}")
        for name in ("vf_coef", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("target_kl", "grad_clip"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 or null, got {getattr(self, name)!r}")
        if not isinstance(self.value_hidden, list | tuple) or not self.value_hidden:
            raise ConfigError(f"value_hidden must be a non-empty list of widths, got {self.value_hidden!r}")
        for j, h in enumerate(self.value_hidden):
            check_positive_int(f"value_hidden[{j}]", h)
        if len(set(self.value_hidden)) != 1 or len(self.value_hidden) % 2 != 1:
            raise ConfigError(
                f"value_hidden must be an odd number of equal widths (a residual MLP), got {self.value_hidden!r}"
            )
        if self.eval_sampler not in ("ddpm", "ddim"):
            raise ConfigError(f"eval_sampler must be ddpm or ddim, got {self.eval_sampler!r}")
        if self.bootstrap_truncation not in ("next_episode", "final_obs"):
            raise ConfigError(
                f"bootstrap_truncation must be next_episode or final_obs, got {self.bootstrap_truncation!r}"
            )

    def ft_steps(self, K: int) -> int:
        """K' for a GCP with K denoising steps (ConfigError if it exceeds K)."""
        k = math.ceil(K / 2) if self.ft_denoising_steps is None else self.ft_denoising_steps
        if k > K:
            raise ConfigError(f"ft_denoising_steps must be <= the GCP's K = {K}, got {k}")
        return k


# Schedules and estimators (pure functions) --------------------------------------------------------------------


def clip_schedule(n: int, eps: float, eps_base: float, rate: float) -> torch.Tensor:
    """eps_k for the n fine-tuned steps in sampling order: eps_base + (eps - eps_base)(e^{r k/(n-1)} - 1)/(e^r - 1),
    rising from eps_base at the noisiest step to eps at the last; [eps] when n = 1 (spec 5.5)."""
    if n == 1:
        return torch.tensor([eps])
    k = torch.arange(n, dtype=torch.float64) / (n - 1)
    return (eps_base + (eps - eps_base) * torch.expm1(rate * k) / math.expm1(rate)).float()


def denoising_discount(n: int, gamma_d: float) -> torch.Tensor:
    """gamma_d^(n-1-k) for k = 0..n-1: the last denoising step gets weight 1 (spec 5.4)."""
    return torch.tensor([gamma_d ** (n - 1 - k) for k in range(n)])


def posterior_std(cfg: GCPConfig) -> torch.Tensor:
    """The un-floored DDPM posterior std [K] of code step i = 0..K-1 (DDPM time t = K - i), from the same
    schedule as ``DiffusionPolicy``; 0 at the last step."""
    K = cfg.K
    ab_all = BETA_SCHEDULES[cfg.beta_schedule](K)
    t = torch.arange(K, 0, -1)
    ab, ab_prev = ab_all[t], ab_all[t - 1]
    post_var = (1.0 - ab / ab_prev) * (1.0 - ab_prev) / (1.0 - ab)
    return post_var.clamp_min(0.0).sqrt()


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    cut: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """GAE over chunks, all [T, N]: delta_t = r_t + gamma V'_t (1 - term_t) - V_t, A_t = delta_t +
    gamma lam (1 - cut_t) A_{t+1}. ``next_values`` is the value the chunk bootstraps from; ``cut`` ends the trace
    (an episode end the estimator treats as done). The loop runs over time only, batched over envs."""
    nonterm = 1.0 - terminated.to(values.dtype)
    keep = 1.0 - cut.to(values.dtype)
    delta = rewards + gamma * next_values * nonterm - values
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        last = delta[t] + gamma * lam * keep[t] * last
        adv[t] = last
    return adv


class RunningRewardScaler:
    """Rewards divided by the running std of a rolling discounted return, then clipped (DPPO's
    ``RunningRewardScaler``, after OpenAI's PPG): the return is never centred, only its scale is tracked.
    Float64 numpy, state in JSON-able floats so a resume continues the same statistics."""

    def __init__(self, gamma: float = 0.99, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4
        self.ret: np.ndarray | None = None  # [N] rolling return per env

    def __call__(self, rewards: np.ndarray, firsts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """rewards, firsts [T, N] -> scaled rewards [T, N]; entries outside ``valid`` (padding at the end of an
        env's sequence) neither advance its return nor enter the statistics."""
        r = np.asarray(rewards, np.float64)
        T, N = r.shape
        ok = np.ones((T, N), bool) if valid is None else np.asarray(valid, bool)
        prev = np.zeros(N) if self.ret is None else self.ret
        rets = np.empty_like(r)
        for t in range(T):
            prev = rets[t] = np.where(ok[t], r[t] + (1.0 - firsts[t]) * self.gamma * prev, prev)
        self.ret = prev
        x = rets[ok]
        b_mean, b_var, b_n = float(x.mean()), float(x.var()), x.size
        delta, tot = b_mean - self.mean, self.count + b_n
        m2 = self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / tot
        self.mean, self.var, self.count = self.mean + delta * b_n / tot, m2 / (tot - 1.0), tot
        return np.clip(r / math.sqrt(self.var + self.eps), -self.clip, self.clip)

    def state(self) -> dict[str, Any]:
        ret = None if self.ret is None else [float(v) for v in self.ret]
        return {"mean": self.mean, "var": self.var, "count": self.count, "ret": ret}

    def load(self, s: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), float(s["count"])
        self.ret = None if s["ret"] is None else np.asarray(s["ret"], np.float64)


def dppo_policy_loss(
    lp_new: torch.Tensor,
    lp_old: torch.Tensor,
    adv: torch.Tensor,
    eps: torch.Tensor,
    weight: torch.Tensor,
    norm_adv: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clip loss with one ratio per (sample, fine-tuned step) (spec 5.5).

    lp_new, lp_old [b, K']: per-step log-probs (already clamped and averaged over the chunk); adv [b] chunk
    advantages; eps, weight [K']: the clip schedule and the denoising discount. Advantages are normalised over
    the minibatch first, then weighted (pitfall 5.7.4). Returns (L_pg, metrics).
    """
    if norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    A = adv.unsqueeze(1) * weight  # [b, K']
    log_ratio = lp_new - lp_old
    ratio = log_ratio.exp()
    pg = torch.maximum(-A * ratio, -A * ratio.clamp(1.0 - eps, 1.0 + eps)).mean()
    with torch.no_grad():
        metrics = {
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clip_frac": ((ratio - 1.0).abs() > eps).float().mean(),
            "ratio": ratio.mean(),
        }
    return pg, metrics


# Networks -----------------------------------------------------------------------------------------------------


class ValueNet(nn.Module):
    """V(s): DPPO's ``CriticObs`` with ``residual_style``: Linear(obs, h), then (len(hidden) - 1) / 2
    pre-activation residual blocks x + L2(Mish(L1(Mish(x)))), then Linear(h, 1); no LayerNorm (spec 5.1)."""

    def __init__(self, obs_dim: int, hidden: list[int]) -> None:
        super().__init__()
        h = hidden[0]
        self.inp = nn.Linear(obs_dim, h)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Linear(h, h), nn.Linear(h, h)]) for _ in range((len(hidden) - 1) // 2)
        )
        self.out = nn.Linear(h, 1)
        self.act = nn.Mish()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [..., obs_dim] -> [...]."""
        x = self.inp(obs)
        for l1, l2 in self.blocks:
            x = x + l2(self.act(l1(self.act(x))))
        return self.out(x).squeeze(-1)


class DPPOPolicy(DiffusionPolicy):
    """The fine-tuned DDPM policy: its own parameters are theta_ft and denoise code steps i >= K - K' (the last
    K'); the frozen ``base`` denoises the first K - K' (DPPO's ``actor`` / ``actor_ft`` split, spec 5.1).

    ``base`` is held outside the module tree, so ``state_dict`` is exactly a ``DiffusionPolicy``'s (theta_ft) and
    policy checkpoints keep their format; device moves (``.to``) are applied to it too. Samplers:
    "ddpm" (behaviour: posterior std floored at ``min_sampling_std``), "ddpm_eval" (the official evaluation:
    floor ``eval_min_std``, last step noiseless) and "ddim" (deterministic).
    """

    def __init__(
        self,
        base: DiffusionPolicy,
        ft_steps: int,
        min_sampling_std: float = 0.1,
        randn_clip: float = 3.0,
        eval_min_std: float = 1e-3,
    ) -> None:
        if base.cfg.kind != "diffusion":
            raise ConfigError(f"DPPO fine-tunes a diffusion GCP, got gcp.kind {base.cfg.kind!r}")
        with torch.random.fork_rng(devices=[]):  # the throw-away initialisation must not move the global RNG
            super().__init__(base.cfg)
        K = base.cfg.K
        check_positive_int("ft_denoising_steps", ft_steps)
        if ft_steps > K:
            raise ConfigError(f"ft_denoising_steps must be <= the GCP's K = {K}, got {ft_steps}")
        dev = next(base.parameters()).device
        self.load_state_dict(base.state_dict())  # theta_ft starts as a copy of the BC weights
        object.__setattr__(self, "base", base.requires_grad_(False))  # not a submodule (see class docstring)
        self.ft_steps, self.first_ft = ft_steps, K - ft_steps
        self.randn_clip = randn_clip
        post = posterior_std(base.cfg)
        eval_std = post.clamp_min(eval_min_std)
        eval_std[-1] = 0.0
        self.register_buffer("post_std", post.float().unsqueeze(-1), persistent=False)
        self.register_buffer("samp_std", post.clamp_min(min_sampling_std).float().unsqueeze(-1), persistent=False)
        self.register_buffer("eval_std", eval_std.float().unsqueeze(-1), persistent=False)
        self.to(dev)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 (nn.Module's signature)
        super()._apply(fn, *args, **kwargs)
        if "base" in self.__dict__:
            self.base._apply(fn, *args, **kwargs)
        return self

    def _net_for(self, i: int) -> DiffusionPolicy:
        return self.base if i < self.first_ft else self

    @torch.no_grad()
    def sample_chain(
        self,
        obs: torch.Tensor,
        sampler: str = "ddpm",
        generator: torch.Generator | None = None,
        x0: torch.Tensor | None = None,
        validate: bool = True,
    ) -> ChainSample:
        """One chain [B, K+1, D] per state with ``sampler`` in ddpm / ddpm_eval / ddim; ``log_prob`` is the
        normalised chain log-prob for "ddpm" (as ``GaussianChainGCP.sample``) and None otherwise."""
        if sampler not in ("ddpm", "ddpm_eval", "ddim"):
            raise ConfigError(f"sampler must be ddpm, ddpm_eval or ddim, got {sampler!r}")
        obs = self._prep_obs(obs, validate)
        B, K, D = obs.shape[0], self.cfg.K, self.chunk_dim
        if x0 is None:
            x = torch.randn(B, D, generator=generator, device=obs.device, dtype=self._dtype)
        else:
            check_shape("x0", x0, (B, D))
            x = x0.to(dtype=self._dtype)
        chain = x.new_empty(B, K + 1, D)
        chain[:, 0] = x
        embs = {id(m): m.time_emb(m.tau_grid) for m in (self.base, self)}  # [K, time_dim] per network
        std = self.samp_std if sampler == "ddpm" else self.eval_std
        lp = self._initial_log_prob(x) if sampler == "ddpm" else None
        for i in range(K):
            m = self._net_for(i)
            out = m.net(torch.cat([obs, x, embs[id(m)][i].expand(B, -1)], dim=-1))
            if sampler == "ddim":
                x = self._deterministic_step(out, x, i)
            else:
                mu = self._mean(out, x, i)
                eps = torch.randn(B, D, generator=generator, device=obs.device, dtype=self._dtype)
                x = mu + std[i] * eps.clamp_(-self.randn_clip, self.randn_clip)
                if lp is not None:
                    z = (x - mu) / std[i]
                    lp = lp - 0.5 * z.square().sum(-1) - D * (std[i].log() + LOG_SQRT_2PI)
            chain[:, i + 1] = x
        if lp is not None:
            lp = lp / ((K + 1) * D)
        return ChainSample(actions=x.clamp(-1.0, 1.0).view(B, self.cfg.H, self.cfg.act_dim), chain=chain, log_prob=lp)

    def sample(
        self,
        obs: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        *,
        x0: torch.Tensor | None = None,
        validate: bool = True,
    ) -> ChainSample:
        """GCP interface: deterministic = DDIM through both networks, else the behaviour DDPM sampler."""
        return self.sample_chain(obs, "ddim" if deterministic else "ddpm", generator, x0, validate)

    def kernel_log_probs(
        self, obs: torch.Tensor, chain: torch.Tensor, first: int, std: torch.Tensor, net: DiffusionPolicy
    ) -> torch.Tensor:
        """Per-element log N(x_{i+1}; mu_net(x_i, i), std_i^2) [B, n, D] of the n transitions of ``chain``
        [B, n+1, D], which holds code steps first .. first+n-1; one batched pass through ``net``."""
        B, n = chain.shape[0], chain.shape[1] - 1
        sel = slice(first, first + n)
        x = chain[:, :-1]
        emb = net.time_emb(net.tau_grid[sel])  # [n, time_dim]
        inp = torch.cat([obs.unsqueeze(1).expand(B, n, -1), x, emb.unsqueeze(0).expand(B, n, -1)], dim=-1)
        mu = self._mean(net.net(inp), x, sel)
        s = std[sel]  # [n, 1]
        return -0.5 * ((chain[:, 1:] - mu) / s).square() - s.log() - LOG_SQRT_2PI

    def ft_log_probs(self, obs: torch.Tensor, chain_ft: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Per-element log-probs [B, K', D] of the fine-tuned transitions of ``chain_ft`` [B, K'+1, D] (the last
        K'+1 iterates) under theta_ft, with per-step stds ``std`` [K, 1]; differentiable in theta_ft."""
        return self.kernel_log_probs(obs, chain_ft, self.first_ft, std, self)

    def log_prob(self, obs: torch.Tensor, chain: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """GCP interface: normalised log-prob [B] of full chains [B, K+1, D] under the behaviour sampler (both
        networks, the exploration floor); reproduces ``sample``'s ``log_prob``."""
        obs = self._prep_obs(obs, validate)
        B, K, D = obs.shape[0], self.cfg.K, self.chunk_dim
        check_shape("chain", chain, (B, K + 1, D))
        chain = chain.to(dtype=self._dtype)
        parts = [self.ft_log_probs(obs, chain[:, self.first_ft :], self.samp_std)]
        if self.first_ft > 0:
            parts.insert(0, self.kernel_log_probs(obs, chain[:, : self.first_ft + 1], 0, self.samp_std, self.base))
        steps = torch.cat(parts, dim=1).sum((1, 2))
        return (self._initial_log_prob(chain[:, 0]) + steps) / ((K + 1) * D)


# The agent ----------------------------------------------------------------------------------------------------


class DPPOAgent(Agent):
    """theta_ft (``actor``), the frozen BC policy (``target_actor``), V(s) (``critic``), two AdamW optimizers."""

    name = "dppo"
    metric_names = (
        "pg_loss", "v_loss", "approx_kl", "clip_frac", "ratio", "explained_var", "reward_scale", "actor_lr",
    )  # fmt: skip
    loop = "on_policy"
    modes = ("rollout", "eval", "ddpm", "ddim")

    def __init__(self, base: GCP, cfg: DPPOConfig, seed: int = 0) -> None:
        cfg.validate()
        if not isinstance(base, DiffusionPolicy):
            raise ConfigError(f"dppo needs a diffusion GCP (gcp.kind: diffusion), got {type(base).__name__}")
        self.cfg = cfg
        dev = next(base.parameters()).device
        Kp = cfg.ft_steps(base.cfg.K)
        self.target_actor = base.requires_grad_(False)
        self.actor = DPPOPolicy(base, Kp, cfg.min_sampling_std, cfg.randn_clip, cfg.eval_min_std)
        self.H, self.K_ft, self.D = base.cfg.H, Kp, base.chunk_dim
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
            self.critic = ValueNet(base.cfg.obs_dim, list(cfg.value_hidden)).to(dev)
        self.actor_opt = torch.optim.AdamW(self.actor.parameters(), lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
        self.lp_std = self.actor.post_std.clamp_min(cfg.min_logprob_std)  # [K, 1]
        self.clip_eps = clip_schedule(Kp, cfg.clip_eps, cfg.clip_eps_base, cfg.clip_eps_rate).to(dev)
        self.adv_weight = denoising_discount(Kp, cfg.gamma_denoising).to(dev)
        self.scaler = RunningRewardScaler(cfg.reward_scale_gamma, cfg.reward_clip)
        self.generator = torch.Generator(device=dev).manual_seed(seed)  # sampling noise of rollouts
        self.eval_generator = torch.Generator(device=dev).manual_seed(seed + 1)  # evaluation noise, kept apart
        self.step = 0  # gradient steps
        self.iteration = 0  # updates (rollouts) seen
        self.actor_iterations = 0  # iterations with an actor step: the LR schedule's clock

    # ---- acting ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def act_with_extras(self, obs: torch.Tensor, mode: str = "rollout") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Chunks [N, H, d_a] and, for "rollout", the fine-tuned part of the chain: ``chain`` [N, (K'+1)*D]."""
        if mode == "eval":
            mode = self.cfg.eval_sampler
        if mode == "rollout":
            s = self.actor.sample_chain(obs, "ddpm", self.generator)
            return s.actions, {"chain": s.chain[:, self.actor.first_ft :].reshape(len(obs), -1)}
        if mode == "ddpm":
            return self.actor.sample_chain(obs, "ddpm_eval", self.eval_generator).actions, {}
        if mode == "ddim":
            return self.actor.sample_chain(obs, "ddim", self.eval_generator).actions, {}  # x0 from the eval stream
        raise ConfigError(f"act mode must be one of {', '.join(self.modes)}, got {mode!r}")

    def act(self, obs: torch.Tensor, mode: str = "rollout") -> torch.Tensor:
        """mode "rollout": DDPM with the exploration floor (behaviour); "eval": ``eval_sampler``; "ddpm": the
        official evaluation sampler; "ddim": deterministic DDIM (``actor.sample(deterministic=True)``)."""
        return self.act_with_extras(obs, mode)[0]

    @property
    def replay_extras(self) -> dict[str, int]:
        return {"chain": (self.K_ft + 1) * self.D}

    def ready(self, replay: Any) -> bool:
        return True  # on-policy: every rollout is used

    # ---- learning --------------------------------------------------------------------------------------
    def step_log_probs(self, obs: torch.Tensor, chain_ft: torch.Tensor) -> torch.Tensor:
        """lp_{b,k} [B, K']: per-element log-probs under theta_ft with the log-prob floor, clamped to
        [logprob_min, logprob_max], then averaged over the chunk (spec 5.5, pitfall 5.7.2)."""
        lp = self.actor.ft_log_probs(obs, chain_ft, self.lp_std)
        return lp.clamp(self.cfg.logprob_min, self.cfg.logprob_max).mean(-1)

    def _chunked(self, fn, *xs: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """fn over row blocks of ``batch_size`` (memory bound of the scoring passes; no gradient)."""
        n, bs = xs[0].shape[0], self.cfg.batch_size
        with torch.no_grad():
            return torch.cat([fn(*(x[j : j + bs] for x in xs)) for j in range(0, n, bs)])

    def advantages(self, rollout: ChunkRollout, values: torch.Tensor) -> torch.Tensor:
        """GAE [T, N] on the (scaled) chunk rewards, 0 on padding; ``values`` [T, N] = V(obs) before this update.

        Each env's last chunk bootstraps from V(last obs). "Done" (no bootstrap past it, trace cut, the reward
        scaler's return restarts after it) is a termination; with ``bootstrap_truncation="final_obs"`` a
        truncation is done too and bootstraps from V(final obs) instead of V(next episode's first obs)."""
        c = self.cfg
        T, N = values.shape
        valid = rollout.valid
        last = valid & ~torch.cat([valid[1:], torch.zeros_like(valid[:1])])  # each env's last decision
        v = values.double()
        with torch.no_grad():
            next_v = torch.cat([v[1:], torch.zeros_like(v[:1])])
            next_v = torch.where(last, self.critic(rollout.last_obs).double().unsqueeze(0), next_v)
            done = rollout.terminated
            if c.bootstrap_truncation == "final_obs":
                fv = self._chunked(self.critic, rollout.final_obs.reshape(T * N, -1)).view(T, N).double()
                next_v = torch.where(rollout.truncated, fv, next_v)
                done = done | rollout.truncated
        r = rollout.rewards.double()
        if c.reward_scaling:
            firsts = np.ones((T, N))  # row 0 follows the iteration's reset
            firsts[1:] = done[:-1].cpu().numpy()
            r = torch.as_tensor(self.scaler(r.cpu().numpy(), firsts, valid.cpu().numpy()), device=v.device)
        zero = torch.zeros_like(v)
        r, v, next_v = (torch.where(valid, x, zero) for x in (r, v, next_v))  # padding: delta = 0, A = 0
        return gae(r, v, next_v, rollout.terminated, done, c.gamma, c.gae_lambda).float()

    def set_lr(self) -> float:
        c = self.cfg
        lr = repeating_cosine(
            self.actor_iterations, c.actor_lr, c.actor_lr_floor, c.actor_lr_warmup, c.actor_lr_period, True
        )
        for g in self.actor_opt.param_groups:
            g["lr"] = lr
        return lr

    def update(self, rollout: ChunkRollout, generator: torch.Generator) -> dict[str, Any]:
        """One DPPO iteration on a fresh rollout (not a replay): old log-probs and values, GAE, then
        ``update_epochs`` epochs of shuffled minibatches (``generator``), stopping early past ``target_kl``.
        The actor steps only once ``n_critic_warmup_itr`` iterations have passed. Returns minibatch-averaged
        metrics and ``grad_steps``."""
        c = self.cfg
        T, N = rollout.rewards.shape
        rows = rollout.valid.reshape(-1).nonzero().squeeze(1)  # the real chunk decisions (time-major)
        n = len(rows)
        values = self._chunked(self.critic, rollout.obs.reshape(T * N, -1)).view(T, N)
        adv = self.advantages(rollout, values).reshape(-1)[rows]
        obs = rollout.obs.reshape(T * N, -1)[rows]
        chains = rollout.extras["chain"].reshape(T * N, self.K_ft + 1, self.D)[rows]
        values = values.reshape(-1)[rows]
        returns = adv + values
        train_actor = self.iteration >= c.n_critic_warmup_itr
        lp_old = self._chunked(self.step_log_probs, obs, chains) if train_actor else None
        lr = self.set_lr() if train_actor else float("nan")
        grad_clip = math.inf if c.grad_clip is None else c.grad_clip
        mb = min(c.batch_size, n)
        sums: dict[str, float] = {}
        steps = 0
        stop = False
        for _ in range(c.update_epochs):
            perm = torch.randperm(n, generator=generator, device=generator.device).to(obs.device)
            for j in range(max(1, n // c.batch_size)):
                idx = perm[j * mb : (j + 1) * mb]
                m: dict[str, torch.Tensor] = {}
                if train_actor:
                    lp_new = self.step_log_probs(obs[idx], chains[idx])
                    pg, m = dppo_policy_loss(lp_new, lp_old[idx], adv[idx], self.clip_eps, self.adv_weight, c.norm_adv)
                    optimizer_step("dppo actor loss", self.actor_opt, pg, self.actor.parameters(), grad_clip)
                    m["pg_loss"] = pg.detach()
                v_loss = 0.5 * (self.critic(obs[idx]) - returns[idx]).square().mean()
                optimizer_step(
                    "dppo value loss", self.critic_opt, c.vf_coef * v_loss, self.critic.parameters(), grad_clip
                )
                m["v_loss"] = v_loss.detach()
                for k, val in m.items():
                    sums[k] = sums.get(k, 0.0) + float(val)
                steps += 1
                self.step += 1
                if train_actor and c.target_kl is not None and float(m["approx_kl"]) > c.target_kl:
                    stop = True
                    break
            if stop:
                break
        self.iteration += 1
        self.actor_iterations += int(train_actor)
        out: dict[str, Any] = {k: v / steps for k, v in sums.items()}
        var_ret = float(returns.var(unbiased=False))
        out["explained_var"] = (
            float("nan") if var_ret == 0 else 1.0 - float((returns - values).var(unbiased=False)) / var_ret
        )
        out["reward_scale"] = math.sqrt(self.scaler.var + self.scaler.eps) if c.reward_scaling else 1.0
        if train_actor:
            out["actor_lr"] = lr
        out["grad_steps"] = steps
        return out

    def make_trainer(self, env: VectorEnv, eval_env: VectorEnv, cfg: OnlineConfig, seeds: RunSeeds) -> OnPolicyTrainer:
        """The on-policy loop (``ogpo.agents.onpolicy``) with this config's ``n_steps`` chunks per iteration."""
        from ogpo.agents.onpolicy import OnPolicyTrainer

        return OnPolicyTrainer(self, env, eval_env, cfg, seeds, n_steps=self.cfg.n_steps)

    # ---- persistence -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "target_actor": self.target_actor, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def generators(self) -> dict[str, torch.Generator]:
        return {"explore": self.generator, "eval": self.eval_generator}

    def extra_state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "actor_iterations": self.actor_iterations, "scaler": self.scaler.state()}

    def load_extra_state(self, meta: dict[str, Any]) -> None:
        self.iteration = int(meta["iteration"])
        self.actor_iterations = int(meta["actor_iterations"])
        self.scaler.load(meta["scaler"])


def build(actor: GCP, target_actor: GCP, critic: Any, cfg: DPPOConfig, seeds: RunSeeds) -> DPPOAgent:
    """The agent from the BC checkpoint: the BC ``actor`` (the weights the BC success is measured on) becomes the
    frozen base and theta_ft starts as its copy; the BC EMA copy and the fit_critic Q ensemble are not used
    (DPPO learns a V(s) from scratch; the official code starts from the pretraining EMA weights)."""
    del target_actor, critic
    agent = DPPOAgent(actor, cfg, seed=seeds.int_seed("init"))
    dev = next(actor.parameters()).device
    agent.generator = seeds.torch_generator("explore", dev)
    agent.eval_generator = seeds.torch_generator("eval_env", dev)
    return agent


DEPLOY_SAMPLERS = {"ode": "ddim", "ddim": "ddim", "sde": "ddpm_eval", "eval": "ddpm_eval", "ddpm": "ddpm_eval",
                   "rollout": "ddpm"}  # fmt: skip


def load_split_policy(tensors: dict[str, torch.Tensor], gcp_cfg: GCPConfig, cfg: DPPOConfig) -> DPPOPolicy:
    """The fine-tuned policy from a policy checkpoint's tensors: ``target_actor.*`` (the frozen BC weights) as
    the base, ``actor.*`` (theta_ft) for the last K' steps."""
    base = DiffusionPolicy(gcp_cfg)
    load_module_tensors("target_actor", base, tensors)
    policy = DPPOPolicy(base, cfg.ft_steps(gcp_cfg.K), cfg.min_sampling_std, cfg.randn_clip, cfg.eval_min_std)
    load_module_tensors("actor", policy, tensors)
    return policy.requires_grad_(False)


def deploy(
    actor: GCP,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    mode: str = "ode",
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation policy of a fine-tuned checkpoint (``ogpo.policy_io.load_deployed_policy``): obs -> chunks.

    ``actor`` (the checkpoint's plain GCP) gives the architecture and device; the split policy is rebuilt from
    ``tensors`` and ``config["algo_config"]`` (the asdict of DPPOConfig). mode "ode"/"ddim": DDIM through both
    networks; "sde"/"eval"/"ddpm": the official evaluation sampler (DDPM, std floor 1e-3, last step noiseless);
    "rollout": the behaviour sampler.
    """
    if mode not in DEPLOY_SAMPLERS:
        raise ConfigError(f"dppo deploy mode must be one of {', '.join(DEPLOY_SAMPLERS)}, got {mode!r}")
    cfg_dict = config.get("algo_config")
    if not isinstance(cfg_dict, dict):
        raise ConfigError("a DPPO checkpoint needs config['algo_config'] (the asdict of DPPOConfig)")
    known = {f.name for f in dataclasses.fields(DPPOConfig)}
    cfg = DPPOConfig(**{k: v for k, v in cfg_dict.items() if k in known})
    cfg.validate()
    dev = next(actor.parameters()).device
    policy = load_split_policy({k: v.to(dev) for k, v in tensors.items()}, actor.cfg, cfg).to(dev)
    sampler = DEPLOY_SAMPLERS[mode]

    def fn(obs: torch.Tensor) -> torch.Tensor:
        return policy.sample_chain(obs, sampler, generator).actions

    return fn


register(
    AlgoSpec(
        name="dppo",
        summary="DPPO: PPO through the last K' denoising steps of a DDPM policy, per-step ratios, V(s) and GAE "
        "over chunks",
        config=DPPOConfig,
        build=build,
        gcp_kinds=("diffusion",),
        deploy=deploy,
    )
)
