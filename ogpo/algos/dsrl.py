"""DSRL (baselines-spec 1): SAC in the initial-noise space of a frozen BC flow.

The BC policy is a deterministic map from an initial noise w to an action chunk, a = clip(ODE(v_beta; s, x_0 = w)).
DSRL never touches that map. It learns a noise policy pi_psi(w | s) on the "noise MDP" instead: the critic
Q_phi(s, w) scores noises, not actions, and SAC's actor climbs it. The deployed policy is therefore the pair
(frozen GCP, noise actor).

Pieces (names as in the spec):
- frozen base ``actor`` (the BC GCP: flow ODE or diffusion DDIM from a given x_0), never in an optimizer;
- noise actor pi_psi: GELU MLP + tanh-Gaussian heads, w = B_w tanh(u) in (-B_w, B_w)^{D_w}, D_w = H * d_a;
- temperature alpha = exp(log alpha), in the actor's optimizer (one Adam step on L_pi + L_alpha);
- critic ensemble Q_phi(s, w) over noise with an EMA target (no target actor: w' comes from the current actor).

Data path: the rollout stores the noise w that produced each executed chunk (replay extra ``noise``, at the
chunk's first step); updates draw executed chunks (``chunk_starts_only``) and build one chunk transition
(s, w, r~ = max of the chunk's per-step rewards, m, s') from each.

Differences from the official runner (``dsrl_runner.py``), all forced by the shared trainer:
- The trainer clears the chunk queue when an episode ends, so a chunk cut by the end of an episode has fewer than
  H valid steps; r~ and m are taken over the valid steps only. The official runner steps all H actions (the extra
  steps happen in a finished env and are masked by m = 0). Bootstrapping still uses gamma^H, as the official code
  does for every chunk.
- The official UTD counts updates per executed chunk; the trainer's ``utd`` counts per env step, so run it with
  ``OnlineConfig.utd = utd_per_chunk / H`` (Square: 4 / 4 = 1.0; Tool Hang 4 / 8 = 0.5; Transport 20 / 8 = 2.5).
- The critic init is the fit_critic stage's CriticPair (the same init for every algorithm). Its input is
  [obs, w] with w of width D_w = H * d_a, so the shapes match; a *fitted* critic, however, was fitted on action
  chunks, not noise, so for DSRL it is a (mismatched) warm start rather than a meaningful Q(s, w). The paper's
  default is a random init, where this question does not arise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ogpo.algos.base import Agent, AlgoSpec, RunSeeds, register
from ogpo.algos.common import check_finite_step, optimizer_step
from ogpo.algos.sac import GaussianPolicy, Temperature, mlp_trunk
from ogpo.checkpoint import load_module_tensors
from ogpo.checks import check_positive_int
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP

NOISE = "noise"  # the replay extra holding w
DEPLOY_PREFIX = "deploy.noise_actor"  # key prefix of the noise actor in a fine-tuned checkpoint
TARGET_CLIP = 500.0  # |y| <= 500 (spec 1.4)


# Config -------------------------------------------------------------------------------------------------------


@dataclass
class DSRLConfig:
    """Defaults are the official Square script (spec 1.5 table); Tool Hang / Transport differ where noted."""

    batch_size: int = 256  # chunk transitions per gradient step (spec 1.4)
    gamma: float = 0.99  # per env step; the chunk bootstrap uses gamma^H (Tool Hang / Transport: 0.999)
    tau_critic: float = 0.05  # critic EMA (spec 1.5; Transport: 0.005)
    actor_lr: float = 3e-4  # Adam, noise actor + log alpha (spec 1.5)
    critic_lr: float = 3e-4  # Adam, critic (spec 1.5)
    grad_clip: float = 1.0  # global-norm clip on each optimizer (spec 1.5)
    action_magnitude: float = 1.0  # B_w: noise bound (spec 1.2; Tool Hang / Transport: 1.5)
    actor_hidden: list[int] = field(default_factory=lambda: [512, 512, 512, 512])  # noise actor widths (spec 1.1)
    head_init_scale: float = 1e-2  # variance-scaling scale of the mean / log-std heads (spec 1.1)
    alpha_init: float = 1.0  # alpha_0 (spec 1.4)
    target_entropy: float | None = None  # None: -D_w / 2 (spec 1.4)
    log_alpha_max: float | None = None  # optional cap on log alpha; None = official (uncapped)
    q_agg: Literal["mean", "min"] = "mean"  # aggregation over the M heads, target and actor (spec 1.4)
    entropy_backup: bool = False  # official scripts: no entropy term in the TD backup (spec 1.4)
    # Updates per executed chunk (spec 1.5: Square / Tool Hang 4, Transport 20). The trainer counts UTD per env
    # step, so run it with OnlineConfig.utd = utd_per_chunk / H. Here it sets the update gate (``ready``): the
    # official gate waits for batch_size * utd_per_chunk chunk transitions.
    utd_per_chunk: int = 4

    def validate(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("utd_per_chunk", self.utd_per_chunk)
        if not isinstance(self.actor_hidden, list | tuple) or not self.actor_hidden:
            raise ConfigError(f"actor_hidden must be a non-empty list of layer widths, got {self.actor_hidden!r}")
        for j, h in enumerate(self.actor_hidden):
            check_positive_int(f"actor_hidden[{j}]", h)
        for name in ("actor_lr", "critic_lr", "grad_clip", "action_magnitude", "alpha_init", "head_init_scale"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0 < self.tau_critic <= 1:
            raise ConfigError(f"tau_critic must be in (0, 1], got {self.tau_critic!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.q_agg not in ("mean", "min"):
            raise ConfigError(f"q_agg must be mean or min, got {self.q_agg!r}")
        if self.target_entropy is not None and not math.isfinite(self.target_entropy):
            raise ConfigError(f"target_entropy must be a finite number or null, got {self.target_entropy!r}")


# Networks and the noise -> action map --------------------------------------------------------------------------


def make_noise_actor(obs_dim: int, noise_dim: int, cfg: DSRLConfig) -> GaussianPolicy:
    """pi_psi: GELU MLP (no LayerNorm, activation after the last layer) + mean / log-std heads of width D_w."""
    trunk = mlp_trunk(obs_dim, list(cfg.actor_hidden), layer_norm=False, activation=nn.GELU)
    return GaussianPolicy(trunk, cfg.actor_hidden[-1], noise_dim, head_init_scale=cfg.head_init_scale)


NOISE_MODES = ("rollout", "eval", "mode", "base")
# The evaluate stage names its modes by determinism (ogpo.policy_io.load_deployed_policy): "ode" -> the
# deterministic DSRL policy (mode noise), "sde" -> the stochastic one (w ~ pi_psi, the official DSRL eval).
# The evaluate stage's modes name the flow's sampler; DSRL's is always the ODE through the frozen flow, from a noise
# drawn as the official eval draws it (stochastic w ~ pi_psi, baselines spec 1.6), so both mean "eval"; the actor's
# deterministic mode B_w tanh(mu) (which the official code never evaluates) is asked for by name: "mode".
DEPLOY_ALIASES = {"ode": "eval", "sde": "eval"}


@torch.no_grad()
def draw_noise(
    noise_actor: GaussianPolicy, obs: torch.Tensor, bound: float, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    """w [N, D_w] for obs [N, obs_dim].

    "rollout" / "eval": w ~ pi_psi (stochastic; the official eval uses the same sampler, spec 1.6);
    "mode": B_w tanh(mu); "base": w ~ N(0, I) unbounded, i.e. the BC policy itself.
    """
    if mode == "base":
        D = noise_actor.mean.out_features
        return torch.randn(obs.shape[0], D, generator=generator, device=obs.device, dtype=obs.dtype)
    dist = noise_actor.dist(obs, bound)
    if mode == "mode":
        return dist.mode()
    if mode in ("rollout", "eval"):
        return dist.rsample(generator)[0]
    raise ConfigError(f"act mode must be one of {', '.join(NOISE_MODES)}, got {mode!r}")


@torch.no_grad()
def noise_to_actions(actor: GCP, obs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The frozen base map: chunk [N, H, d_a] = clip(ODE / DDIM from x_0 = w), no intermediate clip (flow)."""
    return actor.sample(obs, deterministic=True, x0=w).actions


# Chunk transitions ---------------------------------------------------------------------------------------------


@dataclass
class ChunkBatch:
    """B chunk transitions of the noise MDP: (s, w, r~, m, s'), each [B, ...]."""

    obs: torch.Tensor  # s_t [B, obs_dim]
    noise: torch.Tensor  # w_t [B, D_w], the noise that produced the executed chunk
    reward: torch.Tensor  # r~ [B]: max of the chunk's per-step rewards over its valid steps
    mask: torch.Tensor  # m [B]: 0 if the episode terminated inside the chunk
    next_obs: torch.Tensor  # s' [B]: the state after the chunk's last valid step

    def __len__(self) -> int:
        return self.obs.shape[0]


def chunk_transitions(seq: SequenceBatch, terminated: torch.Tensor) -> ChunkBatch:
    """Chunk transitions from length-H replay sequences that start at executed chunks.

    terminated [B, H]: the per-step termination flags of the sequences. Steps past the episode end (valid = 0)
    belong to other episodes, so they count neither in r~ nor in m (``SequenceBatch.mask`` multiplies over
    all H steps, which would let a short next episode's termination leak in).
    """
    valid = seq.valid > 0
    reward = seq.rewards.masked_fill(~valid, float("-inf")).max(1).values  # valid[:, 0] is always 1
    mask = 1.0 - (terminated * valid).amax(1)
    return ChunkBatch(obs=seq.obs, noise=seq.extras[NOISE], reward=reward, mask=mask, next_obs=seq.next_obs)


def aggregate_heads(q: torch.Tensor, how: str) -> torch.Tensor:
    """[M, B] -> [B]: mean (official) or min over the critic heads."""
    return q.mean(0) if how == "mean" else q.min(0).values


def td_target(
    q_next: torch.Tensor, reward: torch.Tensor, mask: torch.Tensor, gamma: float, H: int, q_agg: str = "mean"
) -> torch.Tensor:
    """y = clip(r~ + gamma^H m agg_m Qbar_m(s', w'), -500, 500) from target-head values q_next [M, B] (spec 1.4)."""
    return (reward + (gamma**H) * mask * aggregate_heads(q_next, q_agg)).clamp(-TARGET_CLIP, TARGET_CLIP)


# The agent -----------------------------------------------------------------------------------------------------


class DSRLAgent(Agent):
    """Frozen base GCP + noise actor + temperature + critic pair over (s, w), their optimizers and RNG stream."""

    name = "dsrl"
    metric_names = ("critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "q_mean", "target_q_mean")
    modes = NOISE_MODES

    def __init__(
        self,
        actor: GCP,
        critic_cfg: CriticConfig,
        cfg: DSRLConfig,
        target_actor: GCP | None = None,
        seed: int = 0,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        # The base flow is frozen for good: no gradient, no optimizer. DSRL has no target actor; the target_actor
        # slot holds the same frozen base (the BC checkpoint's online GCP), so the fine-tuned checkpoint's two
        # GCP slots are both the base flow and a deployed policy built from either one is the same policy.
        # ``target_actor`` (the BC checkpoint's EMA copy) is accepted for the common build signature and unused.
        del target_actor
        self.actor = actor.requires_grad_(False)
        self.target_actor = self.actor
        self.H = actor.cfg.H
        self.noise_dim = actor.chunk_dim  # D_w = H * d_a (noise_chunk_length = -1, spec 1.2)
        if critic_cfg.chunk_dim != self.noise_dim or critic_cfg.obs_dim != actor.cfg.obs_dim:
            raise ConfigError(
                f"critic input must be [obs {actor.cfg.obs_dim}, noise {self.noise_dim}], got "
                f"[obs {critic_cfg.obs_dim}, chunk {critic_cfg.chunk_dim}]"
            )
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -self.noise_dim / 2.0
        dev = next(actor.parameters()).device
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global RNG alone
            torch.manual_seed(seed)
            self.noise_actor = make_noise_actor(actor.cfg.obs_dim, self.noise_dim, cfg).to(dev)
            self.critic = CriticPair(critic_cfg).to(dev)
        self.temperature = Temperature(cfg.alpha_init, cfg.log_alpha_max).to(dev)
        self.actor_params = [*self.noise_actor.parameters(), *self.temperature.parameters()]
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.online.parameters(), lr=cfg.critic_lr)
        self.step = 0
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    # ---- acting ----------------------------------------------------------------------------------------
    @property
    def replay_extras(self) -> dict[str, int]:
        return {NOISE: self.noise_dim}

    def act_with_extras(self, obs: torch.Tensor, mode: str = "rollout") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Chunks [N, H, d_a] and the noises [N, D_w] that produced them.

        Before the first update the rollout draws w ~ N(0, I) unbounded, i.e. it runs the base policy (spec 1.2);
        afterwards w ~ pi_psi. Either w is what the replay stores.
        """
        if mode == "rollout" and self.step == 0:
            mode = "base"
        w = draw_noise(self.noise_actor, obs, self.cfg.action_magnitude, mode, self.generator)
        return noise_to_actions(self.actor, obs, w), {NOISE: w}

    def act(self, obs: torch.Tensor, mode: str = "rollout") -> torch.Tensor:
        return self.act_with_extras(obs, mode)[0]

    # ---- learning --------------------------------------------------------------------------------------
    def ready(self, replay: ReplayBuffer) -> bool:
        """The official gate: batch_size * utd_per_chunk executed chunks in the replay (spec 0)."""
        return replay.num_chunks >= self.cfg.batch_size * self.cfg.utd_per_chunk

    def update(self, replay: ReplayBuffer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One gradient step (critic + actor/alpha) on ``batch_size`` uniformly drawn executed chunks."""
        seq = replay.sample(self.cfg.batch_size, self.H, self.cfg.gamma, generator=generator, chunk_starts_only=True)
        idx = (seq.start.unsqueeze(1) + torch.arange(self.H, device=seq.start.device)) % replay.capacity
        return self.update_on(chunk_transitions(seq, replay.terminated[idx]))

    @torch.no_grad()
    def critic_target(self, batch: ChunkBatch) -> torch.Tensor:
        """y [B] with w' ~ pi_psi(.|s') from the current actor (there is no target actor) and the EMA critic."""
        c = self.cfg
        w_next, lp_next = self.noise_actor.dist(batch.next_obs, c.action_magnitude).rsample(self.generator)
        q_next = self.critic.target(batch.next_obs, w_next)  # [M, B]
        if c.entropy_backup:  # off in every official script; kept as the code's flag
            q_next = q_next - self.temperature.alpha * lp_next.clamp(-100.0, 100.0)
        return td_target(q_next, batch.reward, batch.mask, c.gamma, self.H, c.q_agg)

    def critic_loss(self, batch: ChunkBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_Q = mean_{m,b} (Q_m(s, w) - y)^2 on the stored noise w (spec 1.4)."""
        y = self.critic_target(batch)
        q = self.critic.online(batch.obs, batch.noise)  # the stored noise, never the executed actions
        loss = (q - y).square().mean()
        return loss, {"q_mean": q.detach().mean(), "target_q_mean": y.mean()}

    def actor_loss(self, batch: ChunkBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """L_pi = mean_b [alpha_sg log pi(w|s) - agg_m Q_m(s, w)] (online critic); L_alpha = alpha (H - H_tgt)."""
        c = self.cfg
        w, log_prob = self.noise_actor.dist(batch.obs, c.action_magnitude).rsample(self.generator)
        # The critic's weights take no gradient from L_pi (the gradient still flows through w).
        self.critic.online.requires_grad_(False)
        try:
            q = aggregate_heads(self.critic.online(batch.obs, w), c.q_agg)
        finally:
            self.critic.online.requires_grad_(True)
        alpha = self.temperature.alpha
        loss = (alpha.detach() * log_prob - q).mean()
        alpha_loss = self.temperature.loss(log_prob, self.target_entropy)
        return loss, alpha_loss, {"alpha": alpha.detach(), "entropy": -log_prob.detach().mean()}

    def update_on(self, batch: ChunkBatch) -> dict[str, torch.Tensor]:
        """One DSRL step: both losses from the pre-step parameters, then the two Adam steps, then critic EMA."""
        c = self.cfg
        l_q, q_info = self.critic_loss(batch)
        l_pi, l_alpha, pi_info = self.actor_loss(batch)
        # One check before either step, so a bad batch leaves every weight as it was (not just the critic's).
        total = (l_q + l_pi + l_alpha).detach()
        check_finite_step("DSRL losses", total, torch.zeros((), device=total.device))
        # The actor step must come first: L_pi's graph holds the critic's pre-step weights.
        optimizer_step("DSRL actor loss", self.actor_opt, l_pi + l_alpha, self.actor_params, c.grad_clip)
        self.temperature.cap_()
        optimizer_step("DSRL critic loss", self.critic_opt, l_q, self.critic.online.parameters(), c.grad_clip)
        self.critic.ema_(c.tau_critic)
        self.step += 1
        return {
            "critic_loss": l_q.detach(),
            "actor_loss": l_pi.detach(),
            "alpha_loss": l_alpha.detach(),
            **pi_info,
            **q_info,
        }

    # ---- persistence -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        # target_actor is the actor itself (one frozen base), so it is stored once
        return {
            "actor": self.actor,
            "noise_actor": self.noise_actor,
            "temperature": self.temperature,
            "critic": self.critic.online,
            "target_critic": self.critic.target,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def generators(self) -> dict[str, torch.Generator]:
        return {"explore": self.generator}

    def deploy_modules(self) -> dict[str, nn.Module]:
        return {"noise_actor": self.noise_actor}


def build(actor: GCP, target_actor: GCP, critic: CriticPair, cfg: DSRLConfig, seeds: RunSeeds) -> DSRLAgent:
    """The agent from the BC actor pair (frozen) and the fit_critic stage's critic (architecture and weights)."""
    agent = DSRLAgent(actor, critic.online.cfg, cfg, target_actor=target_actor, seed=seeds.int_seed("init"))
    agent.critic.load_state_dict(critic.state_dict())
    agent.generator = seeds.torch_generator("explore", next(actor.parameters()).device)
    return agent


def deploy(
    actor: GCP,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    mode: str = "eval",
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation policy of a fine-tuned checkpoint: obs [N, obs_dim] -> chunks [N, H, d_a].

    Rebuilds pi_psi from ``config["algo_config"]`` (the asdict of DSRLConfig) and the ``deploy.noise_actor.*``
    tensors, then maps its noise through the frozen ``actor``. ``mode``: "eval" (stochastic, as the official
    eval), "mode" (B_w tanh(mu)) or "base" (w ~ N(0, I)); the evaluate stage's "sde" and "ode" both mean "eval".
    Either GCP of the checkpoint may be passed in: for DSRL both slots hold the same frozen BC flow.
    """
    cfg_dict = config.get("algo_config")
    if not isinstance(cfg_dict, dict):
        raise ConfigError("a DSRL checkpoint needs config['algo_config'] (the asdict of DSRLConfig)")
    known = {f.name for f in dataclasses.fields(DSRLConfig)}
    cfg = DSRLConfig(**{k: v for k, v in cfg_dict.items() if k in known})
    cfg.validate()
    mode = DEPLOY_ALIASES.get(mode, mode)
    if mode not in NOISE_MODES:
        modes = ", ".join((*NOISE_MODES, *DEPLOY_ALIASES))
        raise ConfigError(f"DSRL deploy mode must be one of {modes}, got {mode!r}")
    dev = next(actor.parameters()).device
    noise_actor = make_noise_actor(actor.cfg.obs_dim, actor.chunk_dim, cfg).to(dev)
    load_module_tensors(DEPLOY_PREFIX, noise_actor, tensors)
    noise_actor.requires_grad_(False)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        w = draw_noise(noise_actor, obs, cfg.action_magnitude, mode, generator)
        return noise_to_actions(actor, obs, w)

    return policy


register(
    AlgoSpec(
        name="dsrl",
        summary="DSRL: SAC on the initial noise of the frozen BC policy (critic over noise, tanh-Gaussian noise actor)",
        config=DSRLConfig,
        build=build,
        gcp_kinds=("flow", "diffusion"),
        deploy=deploy,
    )
)
