"""EXPO (baselines-spec section 3): on-the-fly Best-of-(N+M) over base flow samples and bounded Gaussian edits.

Four things learn, each from its own loss, all formed from the *pre-step* agent (Jacobi-style, spec 3.3):

- the base flow v_theta, by imitation (flow matching) on the replay batch, with an EMA target theta_bar; every
  base chunk the algorithm uses is drawn from theta_bar by EXPO's own noisy sampler ``Base(s)`` (clipped Euler
  plus N(0, 0.01^2) noise after each clip; not the GCP's SDE, so only the flow GCP fits: ``gcp_kinds=("flow",)``);
- the edit policy pi_e(u | s, A), SAC-style: the edit is e = B tanh(u) with B = ``edit_bound``, and the edited
  chunk A + e is *not* re-clipped to [-1, 1] (spec 3.5.4);
- the temperature alpha = exp(log alpha) of the edit policy's entropy bonus;
- the critic ensemble Q_phi(s, A) over chunks, by TD towards y = R + gamma^n m Qsub_phi_bar(s', OTF(s')), where
  n = 1 in the code (``bootstrap_exponent``) and Qsub is the min of one random pair of target heads.

``OTF(s)`` draws N base chunks, edits the first M of them with sampled edits, scores the N + M candidates with
the target critic (one random head pair per call, shared by all states and candidates, spec 3.5.6) and returns
the argmax. It is the rollout policy and the critic's next-chunk sampler. The code's ``eval/`` is ``Base(s)``
alone (mode "eval"); its ``eval_sde/`` is OTF (mode "otf").

One call to ``update`` is one full EXPO step (critic, edit, alpha, base BC, then both EMAs). The official runner
does UTD of them per env step (Square: 20), each on a fresh batch, exactly as the shared trainer's ``utd`` does.

Temperature (spec 3.5.1): a B-bounded edit has entropy at most D log(2B), below the code's target -D/2 whenever
B < e^{-1/2}/2 ~ 0.30. With B = 0.05 the target is unreachable, the alpha gradient never changes sign, and Adam
raises log alpha by 1.0-1.33x its LR per update (measured). Uncapped, log alpha reaches ~42 after ~1.1e5 updates
at LR 3e-4 (~5.4k Square env steps at UTD 20 after the first update); there alpha * l ~ 1e20, the edit gradient
overflows float32 and the guarded step stops the run (TrainingError; the spec's estimate, exp overflow at 88.7
after ~2.2e5 steps, ignores that earlier float32 limit). We default to a cap ``log_alpha_max = 0`` (alpha <=
alpha_0 = 1, the official initial temperature; why that number: see ``EXPOConfig``); ``log_alpha_max=None`` is
the official uncapped behaviour. ``log_alpha`` is logged every update.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from ogpo.algos.base import Agent, AlgoSpec, RunSeeds, register
from ogpo.algos.common import check_finite_step, optimizer_step
from ogpo.algos.sac import GaussianPolicy, Temperature, mlp_trunk
from ogpo.checkpoint import load_module_tensors
from ogpo.checks import check_positive_int
from ogpo.critic import CriticConfig, CriticPair, critic_loss
from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP
from ogpo.nets import ema_update_


@dataclass
class EXPOConfig:
    """Defaults: the official Square script (``scripts/expo/square.sh``, spec 3.4) unless marked.

    UTD: Square runs 20 full EXPO steps per env step (Tool Hang and Transport 4); set the trainer's ``utd`` to
    that (it is per env step, like the official runner's). ``update_gate_utd`` only reproduces the official
    update gate (replay >= batch_size * UTD * H transitions) and should match the trainer's ``utd``.

    log_alpha_max = 0.0 (our default, not the code's): with the code's unreachable target (spec 3.5.1) the
    temperature would only ever rise, so a cap is in effect the temperature itself. 0 keeps alpha at the code's
    own initial value alpha_0 = 1 and lets it fall below (a reachable ``edit_target_entropy``). Larger values only
    push the edit policy towards a uniform box: the critic reaches the edit through e = B tanh(u), so its pull
    on u carries a factor B = 0.05, while the entropy term's pull on u does not; at alpha = 1 the two are already
    of the same order (alpha * |l| ~ 70 nats for D = 28 against |Q| ~ 100-400 on Square's -1/step rewards), and
    alpha * l stays a finite, moderate number. ``None`` = the official uncapped run: log alpha rises by ~1-1.3x
    its LR per update (measured in the tests) until the edit gradient overflows float32 near log alpha ~ 42.
    """

    n_base: int = 8  # N, n_action_samples: base chunks per OTF call (spec 3.2)
    n_edit: int = 8  # M, n_edit_samples: the first M base chunks are edited (spec 3.2); 0 = plain best-of-N
    edit_bound: float = 0.05  # B, edit_policy_bound in every robomimic script (the yaml's 0.1 is overridden)
    base_noise_std: float = 0.01  # constant_noise_std, added after each clipped Euler step (spec 3.1)
    clip_intermediate: bool = True  # clip_intermediate_actions (spec 3.1)
    edit_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])  # Dense -> LayerNorm -> ReLU each
    min_heads: int = 2  # num_min_qs: Qsub = min over this many random heads, one draw per call (q_agg=subsample)
    batch_size: int = 256  # sequences per update (spec 3.3)
    gamma: float = 0.99  # Square (Tool Hang / Transport: 0.999)
    bootstrap_exponent: Literal[1, "H"] = 1  # code: gamma^1 despite H-step R (spec 3.5.2); "H": gamma^H
    tau_actor: float = 0.005  # actor_tau: base-flow EMA
    tau_critic: float = 0.005  # tau: critic EMA
    actor_lr: float = 3e-4  # AdamW, constant (no scheduler applies to EXPO, spec 0)
    critic_lr: float = 3e-4
    edit_lr: float = 3e-4
    alpha_lr: float = 3e-4  # Adam, no clip
    actor_weight_decay: float = 0.0
    critic_weight_decay: float = 1e-5
    edit_weight_decay: float = 0.0
    grad_clip: float = 1000.0  # global-norm clip of the AdamW optimizers
    init_temperature: float = 1.0  # alpha_0
    edit_target_entropy: float | None = None  # None: -D/2 as the code (D = H * d_a)
    log_alpha_max: float | None = 0.0  # ours: cap on log alpha (see above); None = official, uncapped
    update_gate_utd: float = 20.0  # official gate: replay >= batch_size * UTD * H (Square: UTD 20)

    def validate(self) -> None:
        check_positive_int("n_base", self.n_base)
        check_positive_int("n_edit", self.n_edit, minimum=0)
        if self.n_edit > self.n_base:
            raise ConfigError(f"n_edit must be <= n_base ({self.n_base}): it edits the first n_edit base chunks")
        check_positive_int("min_heads", self.min_heads)
        check_positive_int("batch_size", self.batch_size)
        if not isinstance(self.edit_hidden, list | tuple) or not self.edit_hidden:
            raise ConfigError(f"edit_hidden must be a non-empty list of layer widths, got {self.edit_hidden!r}")
        for j, h in enumerate(self.edit_hidden):
            check_positive_int(f"edit_hidden[{j}]", h)
        if self.bootstrap_exponent not in (1, "H"):
            raise ConfigError(f"bootstrap_exponent must be 1 or 'H', got {self.bootstrap_exponent!r}")
        for name in ("edit_bound", "actor_lr", "critic_lr", "edit_lr", "alpha_lr", "grad_clip", "init_temperature",
                     "update_gate_utd", "tau_actor", "tau_critic"):  # fmt: skip
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
        for name in ("tau_actor", "tau_critic"):
            if not getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be <= 1, got {getattr(self, name)!r}")
        for name in ("base_noise_std", "actor_weight_decay", "critic_weight_decay", "edit_weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.edit_target_entropy is not None and not math.isfinite(self.edit_target_entropy):
            raise ConfigError(f"edit_target_entropy must be a finite number or None, got {self.edit_target_entropy!r}")
        if self.log_alpha_max is not None:
            if not math.isfinite(self.log_alpha_max):
                raise ConfigError(f"log_alpha_max must be a finite number or None, got {self.log_alpha_max!r}")
            if math.log(self.init_temperature) > self.log_alpha_max:
                raise ConfigError(
                    f"log_alpha_max ({self.log_alpha_max}) is below log(init_temperature) "
                    f"({math.log(self.init_temperature):.4g}): the cap would move the initial temperature"
                )


class OTFResult(NamedTuple):
    """chunk [B, D] the selected candidate; candidates [B, N+M, D] (base first, then edited); index [B]."""

    chunk: torch.Tensor
    candidates: torch.Tensor
    index: torch.Tensor


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter gradients for ``module`` inside the block; gradients still flow through its inputs."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


def subsample_min(q: torch.Tensor, generator: torch.Generator, k: int) -> torch.Tensor:
    """Qsub: min over k head indices drawn uniformly with replacement, one draw for the whole call; q [M, ...]."""
    heads = torch.randint(q.shape[0], (k,), generator=generator, device=q.device)
    return q[heads].min(0).values


class EXPOAgent(Agent):
    """Base flow (online + EMA), edit policy, temperature, critic pair, and their optimizers."""

    name = "expo"
    metric_names = (
        "critic_loss", "edit_loss", "bc_loss", "alpha_loss", "log_alpha", "edit_entropy",
        "q_mean", "target_q_mean", "edit_q_mean",
    )  # fmt: skip
    modes = ("rollout", "eval", "otf")

    def __init__(
        self,
        actor: GCP,
        critic_cfg: CriticConfig,
        cfg: EXPOConfig,
        target_actor: GCP | None = None,
        seed: int = 0,
        init_seed: int | None = None,
    ) -> None:
        cfg.validate()
        if actor.cfg.kind != "flow" or not hasattr(actor, "velocity"):
            raise ConfigError(
                f"expo needs a flow GCP (its Base sampler integrates the velocity), got {actor.cfg.kind!r}"
            )
        self.cfg = cfg
        self.actor = actor
        self.target_actor = (target_actor if target_actor is not None else copy.deepcopy(actor)).requires_grad_(False)
        dev = next(actor.parameters()).device
        self.H, self.D = actor.cfg.H, actor.chunk_dim
        if critic_cfg.chunk_dim != self.D or critic_cfg.obs_dim != actor.cfg.obs_dim:
            raise ConfigError(
                f"critic (obs_dim {critic_cfg.obs_dim}, chunk_dim {critic_cfg.chunk_dim}) does not match the actor "
                f"(obs_dim {actor.cfg.obs_dim}, chunk_dim {self.D})"
            )
        self.critic = CriticPair(critic_cfg).to(dev)
        # Edit policy input [obs, A]: Dense -> LayerNorm -> ReLU per hidden layer, mean and log-std heads. Init:
        # the trunk uses mlp_trunk's fan-avg uniform, the heads torch's default (Flax: lecun-normal, zero bias).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed if init_seed is None else init_seed)
            trunk = mlp_trunk(actor.cfg.obs_dim + self.D, list(cfg.edit_hidden), layer_norm=True, activation=nn.ReLU)
            self.edit = GaussianPolicy(trunk, cfg.edit_hidden[-1], self.D).to(dev)
        self.temperature = Temperature(cfg.init_temperature, cfg.log_alpha_max).to(dev)
        self.target_entropy = -self.D / 2 if cfg.edit_target_entropy is None else float(cfg.edit_target_entropy)
        self.actor_opt = torch.optim.AdamW(actor.parameters(), lr=cfg.actor_lr, weight_decay=cfg.actor_weight_decay)
        self.critic_opt = torch.optim.AdamW(
            self.critic.online.parameters(), lr=cfg.critic_lr, weight_decay=cfg.critic_weight_decay
        )
        self.edit_opt = torch.optim.AdamW(self.edit.parameters(), lr=cfg.edit_lr, weight_decay=cfg.edit_weight_decay)
        self.alpha_opt = torch.optim.Adam(self.temperature.parameters(), lr=cfg.alpha_lr)
        self.step = 0
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    # ---- samplers --------------------------------------------------------------------------------------
    @torch.no_grad()
    def base_sample(self, obs: torch.Tensor) -> torch.Tensor:
        """Base(s) [B, D] from the target flow theta_bar (spec 3.1): x_0 ~ N(0, I); per step
        x <- clip(x + v(s, x, t_i)/K) then x <- x + 0.01 eps (after the clip); finally clip(x, -1, 1)."""
        flow, c = self.target_actor, self.cfg
        B, K = obs.shape[0], flow.cfg.K
        g = self.generator
        x = torch.randn(B, self.D, generator=g, device=obs.device, dtype=obs.dtype)
        for i in range(K):
            tau = torch.full((B,), i / K, device=obs.device, dtype=obs.dtype)
            x = x + flow.velocity(obs, x, tau) / K
            if c.clip_intermediate:
                x = x.clamp(-1.0, 1.0)
            if c.base_noise_std > 0:
                x = x + c.base_noise_std * torch.randn(B, self.D, generator=g, device=obs.device, dtype=obs.dtype)
        return x.clamp(-1.0, 1.0)

    def edit_sample(self, obs: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised edit e = B tanh(u), u ~ pi_e(.|s, A), and its log-density l [B], which includes both
        the tanh Jacobian and the scale's -D log B (spec 3.5.3)."""
        return self.edit.dist(torch.cat([obs, base], dim=-1), self.cfg.edit_bound).rsample(self.generator)

    @torch.no_grad()
    def otf(self, obs: torch.Tensor) -> OTFResult:
        """OTF(s) (spec 3.2): N base chunks from theta_bar, the first M edited with sampled edits (not re-clipped),
        scored by the target critic's Qsub with one random head pair for the whole call; the argmax per state."""
        B, N, M, D = obs.shape[0], self.cfg.n_base, self.cfg.n_edit, self.D
        base = self.base_sample(obs.repeat_interleave(N, dim=0)).view(B, N, D)
        cands = base
        if M > 0:
            to_edit = base[:, :M].reshape(B * M, D)
            e, _ = self.edit_sample(obs.repeat_interleave(M, dim=0), to_edit)
            cands = torch.cat([base, (to_edit + e).view(B, M, D)], dim=1)
        n = N + M
        q = self.critic.target(obs.repeat_interleave(n, dim=0), cands.reshape(B * n, D))  # [heads, B*n]
        best = subsample_min(q, self.generator, self.cfg.min_heads).view(B, n).argmax(1)
        return OTFResult(cands[torch.arange(B, device=obs.device), best], cands, best)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str = "rollout") -> torch.Tensor:
        """Action chunks [N, H, d_a]. "rollout" and "otf": OTF with the target critic (the code's rollouts and
        ``eval_sde/``); "eval": Base(s) alone from the target flow, with its 0.01 noise (the code's ``eval/``)."""
        if mode in ("rollout", "otf"):
            chunk = self.otf(obs).chunk
        elif mode == "eval":
            chunk = self.base_sample(obs)
        else:
            raise ConfigError(f"act mode must be one of {', '.join(self.modes)}, got {mode!r}")
        return chunk.view(obs.shape[0], self.H, -1)

    # ---- losses (each from the pre-step agent) ---------------------------------------------------------
    @torch.no_grad()
    def td_target(self, batch: SequenceBatch) -> torch.Tensor:
        """y = R + gamma^n m Qsub_phi_bar(s', OTF(s')) with n = 1 (code) or H; a fresh head pair (spec 3.3)."""
        c = self.cfg
        next_chunk = self.otf(batch.next_obs).chunk
        q_next = subsample_min(self.critic.target(batch.next_obs, next_chunk), self.generator, c.min_heads)
        n = 1 if c.bootstrap_exponent == 1 else self.H
        return batch.R + (c.gamma**n) * batch.mask * q_next

    def critic_loss(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """mean over heads and batch of (Q_m(s, A_executed) - y)^2, with no valid mask (as the code)."""
        y = self.td_target(batch)
        q = self.critic.online(batch.obs, batch.actions)
        loss = critic_loss(q, y, torch.ones_like(y))
        return loss, {"q_mean": q.detach().mean(), "target_q_mean": y.mean()}

    def edit_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """L_e = mean[alpha_sg * l - Qsub_phi(s, A + e)] with A = Base(s) from theta_bar and the online critic
        (frozen here: the edit loss moves only pi_e); returns (loss, l detached, metrics)."""
        base = self.base_sample(obs)
        e, log_prob = self.edit_sample(obs, base)
        with frozen(self.critic.online):
            q = subsample_min(self.critic.online(obs, base + e), self.generator, self.cfg.min_heads)
        loss = (self.temperature.alpha.detach() * log_prob - q).mean()
        return loss, log_prob.detach(), {"edit_q_mean": q.detach().mean(), "edit_entropy": -log_prob.detach().mean()}

    def alpha_step(self, log_prob: torch.Tensor) -> dict[str, torch.Tensor]:
        """The temperature update alone (for tests and diagnostics): L_alpha = alpha (H_bar - H_tgt) on the given
        edit log-probs, one Adam step, then the optional cap on log alpha."""
        loss = self.temperature.loss(log_prob, self.target_entropy)
        optimizer_step("temperature loss", self.alpha_opt, loss, self.temperature.parameters(), math.inf)
        self.temperature.cap_()
        return {"alpha_loss": loss.detach(), "log_alpha": self.temperature.log_alpha.detach().clone()}

    # ---- the update ------------------------------------------------------------------------------------
    def ready(self, replay: ReplayBuffer) -> bool:
        """The official gate: replay >= batch_size * UTD * H transitions (spec 0)."""
        return replay.size >= self.cfg.batch_size * self.cfg.update_gate_utd * self.H

    def update(self, replay: ReplayBuffer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One full EXPO step on a fresh replay batch (the success view is never used: use_success_buffer=false)."""
        return self.update_on(replay.sample(self.cfg.batch_size, self.H, self.cfg.gamma, generator=generator))

    def update_on(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """Critic, edit, alpha and base-BC losses and gradients, all from the pre-step agent (spec 3.3); then,
        only if every loss and gradient is finite, the four optimizer steps; then the two EMAs.

        Taking every gradient before any step is what makes the update Jacobi-style: the edit loss sees the
        pre-step critic and alpha, the critic's OTF the pre-step edit policy. It also means a non-finite loss
        stops the run with the whole agent at its last good state, not half-updated.
        """
        c = self.cfg
        critic_l, m_critic = self.critic_loss(batch)
        edit_l, log_prob, m_edit = self.edit_loss(batch.obs)
        alpha_l = self.temperature.loss(log_prob, self.target_entropy)
        bc_l = self.actor.bc_loss(batch.obs, batch.actions, batch.valid, generator=self.generator)
        steps = (  # (name, optimizer, loss, parameters, global-norm clip)
            ("critic loss", self.critic_opt, critic_l, list(self.critic.online.parameters()), c.grad_clip),
            ("edit loss", self.edit_opt, edit_l, list(self.edit.parameters()), c.grad_clip),
            ("temperature loss", self.alpha_opt, alpha_l, list(self.temperature.parameters()), math.inf),  # no clip
            ("base BC loss", self.actor_opt, bc_l, list(self.actor.parameters()), c.grad_clip),
        )
        norms = []
        for _, opt, loss, params, clip in steps:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(torch.nn.utils.clip_grad_norm_(params, clip))
        for (name, _, loss, _, _), gn in zip(steps, norms, strict=True):
            check_finite_step(name, loss, gn)
        for _, opt, _, _, _ in steps:
            opt.step()
        self.temperature.cap_()
        ema_update_(self.target_actor, self.actor, c.tau_actor)
        self.critic.ema_(c.tau_critic)
        self.step += 1
        m_alpha = {"alpha_loss": alpha_l.detach(), "log_alpha": self.temperature.log_alpha.detach().clone()}
        return {
            "critic_loss": critic_l.detach(),
            "edit_loss": edit_l.detach(),
            "bc_loss": bc_l.detach(),
            **m_alpha,
            **m_critic,
            **m_edit,
        }

    # ---- persistence -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {
            "actor": self.actor,
            "target_actor": self.target_actor,
            "critic": self.critic.online,
            "target_critic": self.critic.target,
            "edit": self.edit,
            "temperature": self.temperature,
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "edit_opt": self.edit_opt,
            "alpha_opt": self.alpha_opt,
        }

    def generators(self) -> dict[str, torch.Generator]:
        return {"explore": self.generator}

    def deploy_modules(self) -> dict[str, nn.Module]:
        """OTF ("otf" mode) also needs the edit policy and the target critic; "eval" needs the target flow only."""
        return {"edit": self.edit, "target_critic": self.critic.target}


def build(actor: GCP, target_actor: GCP, critic: CriticPair, cfg: EXPOConfig, seeds: RunSeeds) -> EXPOAgent:
    """The agent from the BC actor pair and the fit_critic stage's critic (architecture and weights); the edit
    policy is initialised from the "init" stream, the sampling noise from "explore"."""
    dev = next(actor.parameters()).device
    agent = EXPOAgent(actor, critic.online.cfg, cfg, target_actor=target_actor, init_seed=seeds.int_seed("init"))
    agent.critic.load_state_dict(critic.state_dict())
    agent.generator = seeds.torch_generator("explore", dev)
    return agent


DEPLOY_MODES = ("ode", "sde", "eval", "otf")


def _critic_config_from(tensors: dict[str, torch.Tensor], prefix: str, obs_dim: int) -> CriticConfig:
    """The critic architecture from its stored weights: EnsembleLinear weights are [M, in, out]."""
    layers = sorted(
        (int(k[len(prefix) :].split(".")[0]), v.shape) for k, v in tensors.items()
        if k.startswith(prefix) and k.endswith(".weight")
    )  # fmt: skip
    if not layers:
        raise ConfigError(f"an EXPO checkpoint needs the target critic under '{prefix}*' for mode 'otf'")
    M, in_dim = layers[0][1][0], layers[0][1][1]
    norm_prefix = prefix.replace(".linears.", ".norms.")
    return CriticConfig(
        obs_dim=obs_dim,
        chunk_dim=in_dim - obs_dim,
        M=M,
        hidden=[shape[2] for _, shape in layers],
        layer_norm=any(k.startswith(norm_prefix) for k in tensors),
    )


def deploy(
    actor: GCP,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    mode: str = "eval",
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The evaluation policy of a fine-tuned checkpoint: obs [N, obs_dim] -> chunks [N, H, d_a].

    "ode" / "sde": ``actor``'s own samplers, exactly as any algorithm's checkpoint (the project's common
    evaluation). "eval": EXPO's Base(s) from the EMA flow (``target_actor.*``), the code's ``eval/``. "otf": OTF
    with the deployed edit policy and target critic (``deploy.edit.*``, ``deploy.target_critic.*``), the code's
    ``eval_sde/``.
    """
    if mode not in DEPLOY_MODES:
        raise ConfigError(f"EXPO deploy mode must be one of {', '.join(DEPLOY_MODES)}, got {mode!r}")
    if mode in ("ode", "sde"):
        return lambda obs: actor.sample(obs, deterministic=mode == "ode", generator=generator).actions
    cfg_dict = config.get("algo_config")
    if not isinstance(cfg_dict, dict):
        raise ConfigError("an EXPO checkpoint needs config['algo_config'] (the asdict of EXPOConfig)")
    known = {f.name for f in dataclasses.fields(EXPOConfig)}
    cfg = EXPOConfig(**{k: v for k, v in cfg_dict.items() if k in known})
    dev = next(actor.parameters()).device
    target = copy.deepcopy(actor)
    load_module_tensors("target_actor", target, tensors)
    critic_cfg = _critic_config_from(tensors, "deploy.target_critic.net.linears.", actor.cfg.obs_dim)
    agent = EXPOAgent(copy.deepcopy(target), critic_cfg, cfg, target_actor=target)
    if mode == "otf":
        load_module_tensors("deploy.edit", agent.edit, tensors)
        load_module_tensors("deploy.target_critic", agent.critic.target, tensors)
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(int(torch.randint(2**31, ())))
    agent.generator = generator
    return lambda obs: agent.act(obs, mode)


register(
    AlgoSpec(
        name="expo",
        summary="EXPO: on-the-fly best-of-(N+M) over noisy base-flow samples and bounded SAC edits, base flow by BC",
        config=EXPOConfig,
        build=build,
        gcp_kinds=("flow",),
        deploy=deploy,
    )
)
