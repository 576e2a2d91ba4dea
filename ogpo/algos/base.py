"""The seam every fine-tuning algorithm plugs into: the ``Agent`` interface and the algorithm registry.

An algorithm is one module in ``ogpo/algos/`` that defines a config class (a dataclass whose defaults are the
official scripts' values) and an ``Agent`` subclass, and registers them with ``@register``. The online
trainers, the finetune stage, the learning curves and the report work from this interface alone, so adding a
baseline is one module plus its tests.

What an agent owns: its networks, optimizers and torch RNG streams (``modules`` / ``optimizers`` /
``generators``), from which ``state_dict`` builds one flat, pickle-free snapshot (safetensors tensors + JSON
meta). What it does not own: the environments, the replay data and the loop; those belong to the trainer
(``ogpo.agents.online``), which saves them beside the agent's state so that any algorithm resumes exactly.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ogpo.checkpoint import load_module_tensors, module_tensors
from ogpo.errors import CheckpointError, ConfigError
from ogpo.gcp.base import GCP
from ogpo.state import optimizer_from_flat, optimizer_to_flat

# Seeds --------------------------------------------------------------------------------------------------------

STREAMS = ("init", "env", "eval_env", "explore", "replay")


@dataclass(frozen=True)
class RunSeeds:
    """One run seed split into independent streams (``numpy.random.SeedSequence.spawn``).

    init: network initialisation (critics, heads); env / eval_env: the training and evaluation envs' seeds and
    the trainer's env reset seeds (also after a resume); explore: the agent's sampling noise (rollouts, chains,
    BoN heads); replay: replay-batch sampling and minibatch shuffling. Two run seeds give unrelated streams; one
    seed twice gives the same ones.
    """

    seed: int

    def stream(self, name: str) -> np.random.SeedSequence:
        if name not in STREAMS:
            raise ConfigError(f"unknown seed stream {name!r}; streams: {', '.join(STREAMS)}")
        return np.random.SeedSequence(self.seed).spawn(len(STREAMS))[STREAMS.index(name)]

    def int_seed(self, name: str) -> int:
        """A 31-bit integer seed for APIs that take one (torch.manual_seed, env reset seeds)."""
        return int(self.stream(name).generate_state(1, dtype=np.uint32)[0] >> 1)

    def torch_generator(self, name: str, device: str | torch.device = "cpu") -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.int_seed(name))
        return g

    def numpy_rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng(self.stream(name))


# The agent -----------------------------------------------------------------------------------------------------

METRIC_DOC = "name -> one-line meaning; the trainer averages these over the updates between evaluations"


class Agent:
    """An online fine-tuning algorithm.

    Subclasses set ``name`` (the registry key), ``metric_names`` (the keys ``update`` returns, in curve order)
    and ``loop`` ("off_policy": the shared per-env-step trainer with a replay; "on_policy": the agent provides
    ``make_trainer``), and implement ``act`` and ``update``. ``actor`` / ``target_actor`` are the GCPs the
    fine-tuned checkpoint stores; ``deploy_modules`` adds what else a deployed policy needs (e.g. DSRL's noise
    actor).
    """

    name: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    loop: ClassVar[str] = "off_policy"
    modes: ClassVar[tuple[str, ...]] = ("rollout", "eval")

    cfg: Any
    actor: GCP
    target_actor: GCP
    H: int
    step: int = 0

    # ---- acting and learning ----------------------------------------------------------------------------
    def act(self, obs: torch.Tensor, mode: str = "rollout") -> torch.Tensor:
        """Action chunks [N, H, d_a] for obs [N, obs_dim]. "rollout" is the algorithm's behaviour policy,
        "eval" the policy its paper evaluates; an agent may accept more modes (listed in ``modes``)."""
        raise NotImplementedError

    def act_with_extras(self, obs: torch.Tensor, mode: str = "rollout") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``act`` plus per-row extras [N, dim] that the replay stores with the chunk's first step (e.g. DSRL's
        latent noise). Names and widths are ``replay_extras``."""
        return self.act(obs, mode), {}

    @property
    def replay_extras(self) -> dict[str, int]:
        """Per-chunk columns this agent needs in the replay: name -> width."""
        return {}

    def update(self, replay: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One gradient update (the algorithm's unit of UTD) on batches it samples from ``replay`` with
        ``generator``; returns scalar tensors keyed by ``metric_names`` (a subset is fine)."""
        raise NotImplementedError

    def ready(self, replay: Any) -> bool:
        """Whether the replay holds enough data to start updating (the official update gate)."""
        return replay.size >= self.cfg.batch_size * self.H

    # ---- run state ----------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def generators(self) -> dict[str, torch.Generator]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-able scalars beyond ``step`` that determine future updates."""
        return {}

    def load_extra_state(self, meta: dict[str, Any]) -> None:
        pass

    def deploy_modules(self) -> dict[str, nn.Module]:
        """Modules beyond the actor pair that a deployed (evaluated) policy needs."""
        return {}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON meta): weights, optimizer moments, RNG states and counters. No pickle."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"algo": self.name, "step": self.step, "extra": self.extra_state(), "optimizers": {}}
        for name, mod in self.modules().items():
            tensors |= module_tensors(name, mod)
        for name, opt in self.optimizers().items():
            t, m = optimizer_to_flat(name, opt)
            tensors |= t
            meta["optimizers"][name] = m
        for name, gen in self.generators().items():
            tensors[f"rng.{name}"] = gen.get_state()
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta.get("algo") != self.name:
            raise CheckpointError(f"state belongs to algorithm {meta.get('algo')!r}, not {self.name!r}")
        for name, mod in self.modules().items():
            load_module_tensors(name, mod, tensors)
        for name, opt in self.optimizers().items():
            optimizer_from_flat(name, opt, tensors, meta["optimizers"][name])
        for name, gen in self.generators().items():
            gen.set_state(tensors[f"rng.{name}"])
        self.step = int(meta["step"])
        self.load_extra_state(meta.get("extra", {}))


# The registry -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlgoSpec:
    """A registry entry: how to validate an algorithm's params section and how to build its agent.

    build(actor, target_actor, critic, cfg, seeds) -> Agent, where critic is the fit_critic stage's CriticPair
    (its architecture and initial weights; algorithms without a Q ensemble ignore it). ``gcp_kinds`` lists the
    GCP kinds the algorithm can fine-tune. ``deploy`` rebuilds an evaluation policy from a fine-tuned
    checkpoint when the GCP alone is not the deployed policy (DSRL's noise actor).
    """

    name: str
    summary: str
    config: type
    build: Callable[..., Agent]
    gcp_kinds: tuple[str, ...] = ("flow", "diffusion")
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    deploy: Callable[..., Any] | None = None

    def make_config(self, **overrides: Any) -> Any:
        """The config with this entry's defaults (e.g. ogpo+ca's variant fields) under ``overrides``."""
        return self.config(**(self.defaults | overrides))


REGISTRY: dict[str, AlgoSpec] = {}
SHARED_MODULES = {"base", "common", "sac"}  # machinery in ogpo/algos/, not algorithms


def load_registry() -> dict[str, AlgoSpec]:
    """Import every algorithm module in ``ogpo/algos/`` (each registers itself); returns the registry."""
    import ogpo.algos as package

    for mod in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if mod not in SHARED_MODULES and not mod.startswith("_"):
            importlib.import_module(f"ogpo.algos.{mod}")
    return REGISTRY


def algorithms() -> dict[str, AlgoSpec]:
    """Every registered algorithm, by name, in registration order."""
    return dict(load_registry())


def register(spec: AlgoSpec) -> AlgoSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"algorithm {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_algo(name: str) -> AlgoSpec:
    """The registry entry for ``name`` (ConfigError listing the registered algorithms)."""
    spec = load_registry().get(name)
    if spec is None:
        raise ConfigError(f"unknown algorithm {name!r}; registered: {', '.join(REGISTRY)}")
    return spec


def check_gcp_kind(spec: AlgoSpec, kind: str) -> None:
    if kind not in spec.gcp_kinds:
        raise ConfigError(
            f"algorithm {spec.name!r} cannot fine-tune a {kind!r} GCP (it needs gcp.kind: "
            f"{' or '.join(spec.gcp_kinds)}); pretrain the BC policy with that kind"
        )
