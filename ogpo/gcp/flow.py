"""Flow-matching GCP (spec 1.2, 1.4) and the Gaussian-chain machinery it shares with the diffusion GCP.

Both GCP kinds fine-tune through the same object: a chain x_0 -> x_1 -> ... -> x_K whose every step is a
Gaussian kernel N(mu_i(theta; s, x_i), sigma_i^2 I) with a weight-free std. They differ only in how mu_i is
built from the network output, in the deterministic evaluation sampler and in the BC loss. The shared part
(sampler loop, batched chain log-prob, input checks) lives in ``GaussianChainGCP`` so that the PPO ratio means
exactly the same thing for both kinds.

Stored chain vs returned actions (spec 1.4 subtlety): the official sampler accumulates ``old_lp`` on the
pre-clip final sample but stores the clipped one, so old and new log-probs can be evaluated at different
points. Here the chain always stores the raw (pre-[-1, 1]-clip) x_K, the executed actions are returned
separately as ``clamp(x_K, -1, 1)``, and the sampler's log-prob is accumulated on exactly the stored points.
``log_prob(obs, chain)`` on the stored chain therefore reproduces the sampler's value (up to float rounding of
a batched vs. a per-step matmul), and the critic should score ``ChainSample.actions``, not ``chain[:, K]``.
"""

from __future__ import annotations

import math

import torch

from ogpo.checks import check_finite, check_positive_int, check_shape
from ogpo.errors import ConfigError
from ogpo.gcp.base import GCP, ChainSample, GCPConfig
from ogpo.nets import MLP, SinusoidalTimeEmbedding
from ogpo.precision import run_net

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_positive_float(name: str, value: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def validate_gcp_config(cfg: GCPConfig) -> None:
    """Raise ConfigError naming the first bad field (dims and K, H >= 1; positive noise settings)."""
    check_positive_int("gcp.obs_dim", cfg.obs_dim)
    check_positive_int("gcp.act_dim", cfg.act_dim)
    check_positive_int("gcp.H", cfg.H)
    check_positive_int("gcp.K", cfg.K)
    check_positive_int("gcp.time_dim", cfg.time_dim, minimum=4)
    if cfg.time_dim % 2:
        raise ConfigError(f"gcp.time_dim must be even (sin||cos halves), got {cfg.time_dim}")
    if not isinstance(cfg.hidden, list | tuple) or not cfg.hidden:
        raise ConfigError(f"gcp.hidden must be a non-empty list of layer widths, got {cfg.hidden!r}")
    for j, h in enumerate(cfg.hidden):
        check_positive_int(f"gcp.hidden[{j}]", h)
    _check_positive_float("gcp.sigma0", cfg.sigma0)
    _check_positive_float("gcp.randn_clip", cfg.randn_clip)
    _check_positive_float("gcp.min_std", cfg.min_std)


class GaussianChainGCP(GCP):
    """A GCP whose stochastic sampler is a chain of Gaussian kernels with weight-free stds.

    Subclasses register the buffers ``tau_grid`` [K] (network time input per code step i), ``std`` and
    ``log_std`` [K, 1], and implement ``_mean`` (the kernel mean from the network output) and
    ``_deterministic_step``. Schedules are [K, 1] so that ``buf[i]`` broadcasts against x [B, D] in the
    sampler and ``buf`` itself against x [B, K, D] in the batched log-prob.
    """

    kind: str = ""

    def __init__(self, cfg: GCPConfig) -> None:
        super().__init__()
        validate_gcp_config(cfg)
        if cfg.kind != self.kind:
            raise ConfigError(f"gcp.kind is {cfg.kind!r} but {type(self).__name__} needs kind {self.kind!r}")
        self.cfg = cfg
        D = cfg.H * cfg.act_dim
        self.time_emb = SinusoidalTimeEmbedding(cfg.time_dim)
        self.net = MLP(cfg.obs_dim + D + cfg.time_dim, list(cfg.hidden), D, layer_norm=False)

    # ----------------------------------------------------------------------------------------- network
    def forward(self, obs: torch.Tensor, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Network output (velocity or epsilon) for obs [N, obs_dim], x [N, H*d_a], tau [N] -> [N, H*d_a]."""
        return run_net(self, self.net, torch.cat([obs, x, self.time_emb(tau)], dim=-1))

    def _mean(self, out: torch.Tensor, x: torch.Tensor, sel: int | slice) -> torch.Tensor:
        """Kernel mean mu_i from the network output; ``sel`` (int i or slice(None)) picks schedule rows."""
        raise NotImplementedError

    def _deterministic_step(self, out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        """One step of the evaluation sampler (ODE / DDIM)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- checks
    @property
    def _dtype(self) -> torch.dtype:
        return self.tau_grid.dtype

    def _prep_obs(self, obs: torch.Tensor, validate: bool) -> torch.Tensor:
        check_shape("obs", obs, (None, self.cfg.obs_dim))
        if validate:
            check_finite("obs", obs)
        return obs.to(dtype=self._dtype)

    # ----------------------------------------------------------------------------------------- chain
    def _initial_log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """log N(x_0; 0, I) summed over the chunk: [..., D] -> [...]."""
        return -0.5 * x0.square().sum(-1) - x0.shape[-1] * LOG_SQRT_2PI

    def sample(
        self,
        obs: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        *,
        x0: torch.Tensor | None = None,
        validate: bool = True,
    ) -> ChainSample:
        """Draw one chain per row of obs [B, obs_dim] (no gradient; the chain is data for the PPO ratio).

        ``x0`` [B, H*d_a] starts the chain from a given initial noise instead of N(0, I): with
        ``deterministic=True`` the same (obs, x0) always gives the same chunk (DSRL's noise-to-action map).
        ``generator`` must live on the module's device. ``validate=False`` skips the finiteness check (its one
        host sync) for hot loops whose inputs are already known to be finite.
        """
        obs = self._prep_obs(obs, validate)
        B, K, D = obs.shape[0], self.cfg.K, self.chunk_dim
        c = self.cfg.randn_clip
        with torch.no_grad():
            if x0 is None:
                x = torch.randn(B, D, generator=generator, device=obs.device, dtype=self._dtype)
            else:
                check_shape("x0", x0, (B, D))
                x = x0.to(dtype=self._dtype)
            chain = x.new_empty(B, K + 1, D)
            chain[:, 0] = x
            emb = self.time_emb(self.tau_grid)  # [K, time_dim], once per call
            lp = None if deterministic else self._initial_log_prob(x)
            for i in range(K):
                out = run_net(self, self.net, torch.cat([obs, x, emb[i].expand(B, -1)], dim=-1))
                if deterministic:
                    x = self._deterministic_step(out, x, i)
                else:
                    mu = self._mean(out, x, i)
                    eps = torch.randn(B, D, generator=generator, device=obs.device, dtype=self._dtype)
                    x = mu + self.std[i] * eps.clamp_(-c, c)
                    z = (x - mu) / self.std[i]
                    lp = lp - 0.5 * z.square().sum(-1) - D * (self.log_std[i] + LOG_SQRT_2PI)
                chain[:, i + 1] = x
            actions = x.clamp(-1.0, 1.0).view(B, self.cfg.H, self.cfg.act_dim)
            if lp is not None:
                lp = lp / ((K + 1) * D)
        return ChainSample(actions=actions, chain=chain, log_prob=lp)

    def log_prob(self, obs: torch.Tensor, chain: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Normalized chain log-prob [B] (spec 1.4): one network pass over all B*K steps, differentiable."""
        obs = self._prep_obs(obs, validate)
        B, K, D = obs.shape[0], self.cfg.K, self.chunk_dim
        check_shape("chain", chain, (B, K + 1, D))
        if validate:
            check_finite("chain", chain)
        chain = chain.to(dtype=self._dtype)
        x = chain[:, :K]  # [B, K, D]: the states each kernel conditions on
        emb = self.time_emb(self.tau_grid)  # [K, time_dim]
        inp = torch.cat([obs.unsqueeze(1).expand(B, K, -1), x, emb.unsqueeze(0).expand(B, K, -1)], dim=-1)
        out = run_net(self, self.net, inp)  # nn.Linear flattens [B, K, in] -> one [B*K, in] matmul per layer
        mu = self._mean(out, x, slice(None))
        z = (chain[:, 1:] - mu) / self.std
        lp_steps = -0.5 * z.square().sum(-1) - D * (self.log_std.squeeze(-1) + LOG_SQRT_2PI)  # [B, K]
        return (self._initial_log_prob(chain[:, 0]) + lp_steps.sum(-1)) / ((K + 1) * D)

    # ----------------------------------------------------------------------------------------- BC
    def _prep_bc(
        self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None, validate: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Check BC inputs; return obs, flat actions [B, D] with padded steps zeroed, float mask [B, H]."""
        obs = self._prep_obs(obs, validate)
        B, H, d_a = obs.shape[0], self.cfg.H, self.cfg.act_dim
        check_shape("actions", actions, (B, H, d_a))
        if validate:
            check_finite("actions", actions)
        actions = actions.to(dtype=self._dtype)
        if mask is None:
            return obs, actions.reshape(B, H * d_a), None
        check_shape("mask", mask, (B, H))
        if validate:
            check_finite("mask", mask.float())
        mask = mask.to(dtype=self._dtype)
        # Padded steps hold whatever the replay put there (often the next episode's actions); zero them so
        # they neither enter the loss nor leak into the network input through the flattened chunk.
        return obs, (actions * mask.unsqueeze(-1)).reshape(B, H * d_a), mask

    def _masked_mean(self, sq_err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of sq_err [B, D] over valid chunk elements (mask [B, H]); no host sync."""
        if mask is None:
            return sq_err.mean()
        err = sq_err.view(-1, self.cfg.H, self.cfg.act_dim) * mask.unsqueeze(-1)
        return err.sum() / (mask.sum() * self.cfg.act_dim).clamp_min(1.0)


class FlowPolicy(GaussianChainGCP):
    """Flow-matching GCP: velocity MLP, Euler ODE for evaluation, tapered drift-corrected SDE for fine-tuning.

    Time convention (code, spec 1.2): tau = 0 is noise, tau = 1 is data, x_tau = tau*a + (1 - tau)*z.
    """

    kind = "flow"

    def __init__(self, cfg: GCPConfig) -> None:
        super().__init__(cfg)
        K = cfg.K
        t = torch.arange(K, dtype=torch.float64) / K  # t_i = i/K
        if cfg.tapered:
            std = cfg.sigma0 * torch.sqrt(1.0 - t)
            # sigma_i^2 / (2 (1 - t_i)) = sigma0^2 / 2 exactly: the score's (1 - t) cancels (spec 1.4 step 4)
            coef = torch.full_like(t, cfg.sigma0**2 / 2.0)
        else:
            std = torch.full_like(t, cfg.sigma0)
            coef = std.square() / (2.0 * (1.0 - t))  # general score (t v - x)/(1 - t); t_i < 1 always
        self.register_buffer("tau_grid", t.float(), persistent=False)
        self.register_buffer("t_col", t.float().unsqueeze(-1), persistent=False)
        self.register_buffer("coef", coef.float().unsqueeze(-1), persistent=False)
        self.register_buffer("std", std.float().unsqueeze(-1), persistent=False)
        self.register_buffer("log_std", std.log().float().unsqueeze(-1), persistent=False)

    def velocity(self, obs: torch.Tensor, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """v_theta(s, x, tau): obs [N, obs_dim], x [N, H*d_a], tau [N] in [0, 1] -> [N, H*d_a]."""
        return self(obs, x, tau)

    def _mean(self, out: torch.Tensor, x: torch.Tensor, sel: int | slice) -> torch.Tensor:
        drift = out
        if self.cfg.drift_correction:
            drift = out + self.coef[sel] * (self.t_col[sel] * out - x)
        mu = x + drift / self.cfg.K
        return mu.clamp(-1.0, 1.0) if self.cfg.clip_intermediate else mu

    def _deterministic_step(self, out: torch.Tensor, x: torch.Tensor, i: int) -> torch.Tensor:
        return x + out / self.cfg.K  # plain Euler, no intermediate clip (spec 1.2)

    def bc_loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """Flow matching: E_{tau~U[0,1], z} ||v(s, x_tau, tau) - (a - z)||^2 over valid chunk elements."""
        obs, a, mask = self._prep_bc(obs, actions, mask, validate)
        B, D = a.shape
        tau = torch.rand(B, 1, generator=generator, device=a.device, dtype=a.dtype)
        z = torch.randn(B, D, generator=generator, device=a.device, dtype=a.dtype)
        v = self(obs, tau * a + (1.0 - tau) * z, tau.squeeze(-1))
        return self._masked_mean((v - (a - z)).square(), mask)
