"""QC: Q-chunking with Best-of-N extraction, the variant the OGPO paper runs (baselines spec 2).

What is trained (spec 2.1): the flow v_theta (the BC checkpoint's online GCP; QC has no EMA actor), the critic
ensemble Q_phi(s, A) over flattened action chunks, and its EMA target phi_bar. One Adam optimizer holds both
(constant LR, one global-norm clip over both), and one step minimises L_Q + L_pi.

"BoN-8 exploration + SFT on online replay, alpha 0" (spec 2.2) means, in code:
- BoN_N(s): N independent initial noises, N deterministic ODE chunks A_j = clip(ODE_K(v_theta; s, z_j), -1, 1)
  from the online flow, scored by the mean over all M *online* heads, argmax. It chooses the executed chunk in
  rollouts and the next chunk A' inside the critic's own TD target. The critic is used for nothing else.
- Critic: y = R + gamma^H m mean_m Q_bar_m(s', A'), A' = BoN_N(s') (chosen by the online critic, scored by the
  target); L_Q = mean_{m,b} valid_{b,H-1} (Q_m(s_b, A_b) - y_b)^2.
- Actor: L_pi = flow-matching BC on the success-buffer batch once that view is active (``success_bc``, Square),
  else on the ordinary replay batch. There is no Q term: the official ``alpha`` multiplies a distillation term
  that is identically 0 with ``bon_sft=false``, so it is inert and not a field here. The policy improves only by
  distilling the Q-filtered replay back into the flow.
- Evaluation ("eval", what the official ``eval/`` logs): one ODE chunk from the online flow, no BoN. "bon"
  evaluates BoN_N as well (the BC phase's ``eval_sde``); "rollout" is BoN_N.

The official QC also fits its critic on the demos during its own BC phase (spec 2.2, pitfall 3). Here every
algorithm starts from the shared BC checkpoint and the fit_critic stage's critic; ``pretrain_critic`` is that
BC-phase critic fitting (BoN TD on demo sequences, flow untouched) for a caller that wants it.

Everything is batched: the N candidates of B states are one ODE call on B*N rows and one critic call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ogpo.algos.base import Agent, AlgoSpec, RunSeeds, register
from ogpo.algos.common import optimizer_step, sample_with_success
from ogpo.checks import check_positive_int
from ogpo.critic import CriticConfig, CriticEnsemble, CriticPair, critic_loss, td_target
from ogpo.data.replay import ReplayBuffer, SequenceBatch
from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP

BON_CRITICS = ("online", "target")
BON_AGGS = ("mean", "min", "subsample")
BON_SUBSAMPLES = ("per_candidate", "per_call")


@dataclass
class QCConfig:
    """Defaults: the official Square script (spec 2.4 table; Tool Hang / Transport values in the comments)."""

    best_of_n: int = 8  # N = actor_num_samples, rollout and TD BoN (Tool Hang, Transport: 32)
    batch_size: int = 256  # sequences per step; the update gate is batch_size * H transitions (spec 2.4)
    gamma: float = 0.99  # per env step; the TD bootstraps with gamma^H (Tool Hang, Transport: 0.999)
    tau_critic: float = 0.005  # critic EMA (Tool Hang: 0.05)
    lr: float = 3e-4  # one Adam for flow + critic, constant; no re-warmup (spec 2.1, pitfall 6)
    grad_clip: float = 1000.0  # one global-norm clip over flow + critic (spec 2.1)
    success_bc: bool = True  # use_success_buffer: BC on the success view once active (Tool Hang, Transport: off)
    # The BoN selector (spec 2.5): the official QC scores with the online critic, mean of all heads.
    bon_critic: Literal["online", "target"] = "online"
    bon_agg: Literal["mean", "min", "subsample"] = "mean"
    bon_subsample: Literal["per_candidate", "per_call"] = "per_candidate"  # head draw for bon_agg="subsample"
    bon_heads: int = 2  # heads per subsample (min over them)

    def validate(self) -> None:
        check_positive_int("best_of_n", self.best_of_n)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("bon_heads", self.bon_heads)
        for name, allowed in (("bon_critic", BON_CRITICS), ("bon_agg", BON_AGGS), ("bon_subsample", BON_SUBSAMPLES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("lr", "tau_critic", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.tau_critic <= 1:
            raise ConfigError(f"tau_critic must be <= 1, got {self.tau_critic!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}")


# The Best-of-N operator -----------------------------------------------------------------------------------------


def bon_scores(
    q: torch.Tensor, agg: str, heads: int = 2, per_call: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-candidate scores [B, n] from all heads' values q [M, B, n].

    mean / min over all heads, or "subsample": the min over ``heads`` heads drawn uniformly with replacement,
    either once for the whole call or independently per (state, candidate) (spec 2.5)."""
    if agg == "mean":
        return q.mean(0)
    if agg == "min":
        return q.min(0).values
    if agg != "subsample":
        raise ConfigError(f"bon_agg must be one of {', '.join(BON_AGGS)}, got {agg!r}")
    M, B, n = q.shape
    shape = (heads, 1, 1) if per_call else (heads, B, n)
    idx = torch.randint(M, shape, generator=generator, device=q.device).expand(heads, B, n)
    return q.gather(0, idx).min(0).values


@dataclass
class BoNChoice:
    """What BoN_N picked: chunks [B, H, d_a], every candidate's score [B, n], and the chosen index [B]."""

    chunks: torch.Tensor
    scores: torch.Tensor
    index: torch.Tensor

    @property
    def selected_gap(self) -> torch.Tensor:
        """Mean over states of (selected score - mean candidate score): how much the selector filters."""
        return (self.scores.max(-1).values - self.scores.mean(-1)).mean()


@torch.no_grad()
def best_of_n(
    actor: GCP,
    critic: CriticEnsemble,
    obs: torch.Tensor,
    n: int,
    agg: str = "mean",
    heads: int = 2,
    per_call: bool = False,
    generator: torch.Generator | None = None,
) -> BoNChoice:
    """BoN_N(s) for obs [B, obs_dim]: n independent ODE chunks from ``actor`` per state, the argmax of
    ``critic``'s aggregated score (spec 2.3). The only randomness is the n initial noises (one per row)."""
    B = obs.shape[0]
    obs_rep = obs.repeat_interleave(n, dim=0)
    cand = actor.sample(obs_rep, deterministic=True, generator=generator).actions  # [B*n, H, d_a], clipped
    q = critic(obs_rep, cand).view(-1, B, n)  # [M, B, n]
    scores = bon_scores(q, agg, heads, per_call, generator)
    index = scores.argmax(-1)
    chunks = cand.view(B, n, *cand.shape[1:])[torch.arange(B, device=obs.device), index]
    return BoNChoice(chunks=chunks, scores=scores, index=index)


# The agent -------------------------------------------------------------------------------------------------------


class QCAgent(Agent):
    """The flow (trained by SFT on replay), the critic pair, one joint Adam, and the exploration RNG."""

    name = "qc"
    metric_names = (
        "critic_loss",  # L_Q on the replay batch
        "bc_loss",  # L_pi: flow matching on the success batch (once active) or the replay batch
        "q_mean",  # mean online Q of the replay chunks
        "target_mean",  # mean TD target y
        "q_selected_gap",  # TD BoN at s': selected minus mean candidate score (online critic)
        "success_bc",  # 1 when the BC batch came from the success view
        "grad_norm",  # pre-clip global norm over flow + critic
    )
    modes = ("rollout", "eval", "bon")

    def __init__(self, actor: GCP, critic_cfg: CriticConfig, cfg: QCConfig, seed: int = 0) -> None:
        cfg.validate()
        self.cfg = cfg
        self.actor = actor.requires_grad_(True)
        # QC has no EMA actor (spec 2.6 pitfall 5): rollouts, TD and eval all use the online flow, and both policy
        # slots of the fine-tuned checkpoint hold it.
        self.target_actor = actor
        dev = next(actor.parameters()).device
        self.critic = CriticPair(critic_cfg).to(dev)
        self.H = actor.cfg.H
        # One optimizer, one clip (spec 2.1): optax.adam defaults (b1 0.9, b2 0.999, eps 1e-8), no weight decay.
        self.opt = torch.optim.Adam([*actor.parameters(), *self.critic.online.parameters()], lr=cfg.lr, eps=1e-8)
        self.step = 0
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)

    @property
    def selector(self) -> CriticEnsemble:
        return self.critic.online if self.cfg.bon_critic == "online" else self.critic.target

    def bon(self, obs: torch.Tensor, n: int | None = None) -> BoNChoice:
        c = self.cfg
        return best_of_n(
            self.actor, self.selector, obs, n or c.best_of_n, c.bon_agg, c.bon_heads,
            c.bon_subsample == "per_call", self.generator,
        )  # fmt: skip

    # ---- acting ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, mode: str = "rollout") -> torch.Tensor:
        """Chunks [N, H, d_a]. "rollout" and "bon": BoN_N of the online flow's ODE chunks; "eval": one ODE
        chunk from the online flow (the official eval/, spec 2.5)."""
        if mode == "eval" or (mode in ("rollout", "bon") and self.cfg.best_of_n == 1):
            return self.actor.sample(obs, deterministic=True, generator=self.generator).actions
        if mode not in ("rollout", "bon"):
            raise ConfigError(f"act mode must be one of {', '.join(self.modes)}, got {mode!r}")
        return self.bon(obs).chunks

    # ---- learning --------------------------------------------------------------------------------------
    def bon_td_target(self, batch: SequenceBatch) -> tuple[torch.Tensor, BoNChoice]:
        """y = R + gamma^H m mean_m Q_bar_m(s', A') with A' = BoN_N(s') under the pre-step weights (spec 2.3):
        the selector (online critic by default) picks A', the target critic scores it (through ``td_target``)."""
        choice = self.bon(batch.next_obs)
        y = td_target(
            self.critic.target, choice.chunks.reshape(len(batch), 1, -1), batch.next_obs, batch.R, batch.mask,
            self.cfg.gamma, self.H,
        )  # fmt: skip
        return y, choice

    def critic_terms(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_Q = mean_{m,b} valid_{b,H-1} (Q_m(s_b, A_b) - y_b)^2 and its metrics."""
        y, choice = self.bon_td_target(batch)
        q = self.critic.online(batch.obs, batch.actions)  # [M, B]
        loss = critic_loss(q, y, batch.valid[:, -1])
        info = {"q_mean": q.detach().mean(), "target_mean": y.mean(), "q_selected_gap": choice.selected_gap}
        return loss, info

    def update(self, replay: ReplayBuffer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One joint step on a replay batch (+ a success batch once that view is active and ``success_bc``)."""
        c = self.cfg
        if c.success_bc:
            batch, succ = sample_with_success(replay, c.batch_size, self.H, c.gamma, generator)
        else:
            batch, succ = replay.sample(c.batch_size, self.H, c.gamma, generator=generator), None
        return self.update_on(batch, succ)

    def update_on(self, batch: SequenceBatch, success_batch: SequenceBatch | None = None) -> dict[str, torch.Tensor]:
        """One Adam step on L_Q(batch) + L_pi(success_batch if given and success_bc, else batch), then the
        critic EMA. The two losses touch disjoint parameters but share the global-norm clip (spec 2.1)."""
        c = self.cfg
        lq, info = self.critic_terms(batch)
        use_success = c.success_bc and success_batch is not None
        bc_batch = success_batch if use_success else batch
        lpi = self.actor.bc_loss(bc_batch.obs, bc_batch.actions, bc_batch.valid, generator=self.generator)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        gn = optimizer_step("qc loss", self.opt, lq + lpi, params, c.grad_clip)
        self.critic.ema_(c.tau_critic)
        self.step += 1
        return {
            "critic_loss": lq.detach(),
            "bc_loss": lpi.detach(),
            "success_bc": torch.tensor(float(use_success)),
            "grad_norm": gn.detach(),
            **info,
        }

    # ---- persistence -----------------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "critic": self.critic.online, "target_critic": self.critic.target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def generators(self) -> dict[str, torch.Generator]:
        return {"explore": self.generator}


def pretrain_critic(agent: QCAgent, demos: ReplayBuffer, steps: int, generator: torch.Generator) -> list[float]:
    """QC's BC-phase critic fitting (spec 2.2, pitfall 3) from a fixed BC flow: ``steps`` steps of the same BoN
    TD loss on demo sequences, through the agent's optimizer (so its critic moments carry into online training,
    as in the official single optimizer) and with the online EMA rate. The flow is not trained here: every
    algorithm shares the BC checkpoint. Returns the critic losses."""
    check_positive_int("steps", steps, minimum=0)
    c = agent.cfg
    params = list(agent.critic.online.parameters())
    losses = []
    for _ in range(steps):
        batch = demos.sample(c.batch_size, agent.H, c.gamma, generator=generator)
        loss, _ = agent.critic_terms(batch)
        optimizer_step("qc critic pretraining loss", agent.opt, loss, params, c.grad_clip)
        agent.critic.ema_(c.tau_critic)
        losses.append(float(loss.detach()))
    return losses


def build(actor: GCP, target_actor: GCP, critic: CriticPair, cfg: QCConfig, seeds: RunSeeds) -> QCAgent:
    """The agent from the BC checkpoint's online flow and the fit_critic stage's critic (architecture and
    weights). ``target_actor`` (the BC EMA) is not used: QC trains and evaluates one flow."""
    agent = QCAgent(actor, critic.online.cfg, cfg)
    agent.critic.load_state_dict(critic.state_dict())
    agent.generator = seeds.torch_generator("explore", next(actor.parameters()).device)
    return agent


register(
    AlgoSpec(
        name="qc",
        summary="QC: Best-of-N chunk selection by the critic (rollouts and TD target), flow trained by SFT on replay",
        config=QCConfig,
        build=build,
        gcp_kinds=("flow", "diffusion"),  # the paper's QC is a flow; a diffusion GCP uses its DDIM map as the ODE
    )
)
