"""What a study is: one task, several algorithms (each with its own option overrides), several seeds, one
env-step budget and one evaluation schedule.

A study file (``studies/<name>/study.yaml``) has one section ``study`` that parses into :class:`StudySpec`
(``stages.study`` parses it with the params machinery: types, unknown keys and ranges first, then
:meth:`StudySpec.validate` for what depends on several fields or on the algorithm registry). Every run of a
study starts from the same BC checkpoint and critic init, so every algorithm of a study must be able to
fine-tune one GCP kind: a study mixing, say, DPPO (diffusion only) and EXPO (flow only) is refused before any
run starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ogpo.algos import algorithms
from ogpo.errors import ConfigError

NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


@dataclass
class StudySpec:
    """Section ``study`` of a study file. ``overrides[algo]`` holds that algorithm's ``finetune.agent`` options
    (validated by its config class); an algorithm without an entry runs its defaults (the official scripts')."""

    name: str
    task: str  # "toy" (in-process) or a robosuite task (the pipeline's BC and critic checkpoints)
    algorithms: list[str]
    seeds: list[int]
    budget: int  # env steps per run
    eval_every: int  # env steps between evaluations (the curve's points; the last one is the budget)
    eval_episodes: int = 64  # episodes per curve point
    final_episodes: int = 200  # episodes of the final evaluation (and of the step-0 BC evaluation)
    gcp_kind: str | None = None  # the BC checkpoint's GCP kind; None = the task's (toy: flow; robosuite: its BC)
    reference: str = "ogpo+ca"  # probability of improvement is over this algorithm
    bc_seed: int = 0  # the shared BC start's seed (toy: demos and BC training)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        if not NAME.match(self.name):
            raise ConfigError(f"name {self.name!r} must be lower-case letters, digits, '_' or '-' (it names files)")
        registered = algorithms()
        unknown = [a for a in self.algorithms if a not in registered]
        if unknown:
            raise ConfigError(
                f"algorithms: {', '.join(map(repr, unknown))} not registered; registered: {', '.join(registered)}"
            )
        if not self.algorithms:
            raise ConfigError("algorithms must name at least one algorithm")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError("algorithms lists an algorithm twice")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds must be distinct integers >= 0, got {self.seeds}")
        for key in ("budget", "eval_every", "eval_episodes", "final_episodes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_every > self.budget:
            raise ConfigError(
                f"eval_every {self.eval_every} is past the budget {self.budget}: the study would have no "
                "evaluation point before the end"
            )
        stray = [a for a in self.overrides if a not in self.algorithms]
        if stray:
            raise ConfigError(f"overrides names {', '.join(map(repr, stray))}, not in algorithms {self.algorithms}")
        missing = [a for a in self.algorithms if a not in self.overrides]
        if missing:  # dvc.yaml tracks each run's own entry, so that editing one algorithm re-runs only its runs
            raise ConfigError(
                f"overrides has no entry for {', '.join(map(repr, missing))}: give every algorithm one "
                "({} runs its defaults)"
            )
        for algo, opts in self.overrides.items():
            if not isinstance(opts, dict):
                raise ConfigError(f"overrides.{algo} must be a mapping of {algo}'s options")
            own = {f.name for f in dataclasses.fields(registered[algo].config)}
            foreign = [k for k in opts if k not in own]
            if foreign:
                raise ConfigError(
                    f"overrides.{algo}.{foreign[0]} is not an option of {algo}; its options: {', '.join(sorted(own))}"
                )
            try:
                registered[algo].make_config(**opts)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"overrides.{algo}: {exc}") from None
        self.check_gcp_kind(self.gcp_kind or (None if self.task != "toy" else "flow"))

    def check_gcp_kind(self, kind: str | None) -> None:
        """Every algorithm must fine-tune the one BC checkpoint's GCP kind (``kind``; None: any shared kind)."""
        registered = algorithms()
        kinds = {a: set(registered[a].gcp_kinds) for a in self.algorithms}
        common = set.intersection(*kinds.values())
        if not common:
            detail = "; ".join(f"{a}: {'/'.join(sorted(k))}" for a, k in kinds.items())
            raise ConfigError(
                f"algorithms need different GCP kinds ({detail}) but a study fine-tunes one BC checkpoint: "
                "split it into one study per kind"
            )
        if kind is not None and kind not in common:
            cannot = [a for a, k in kinds.items() if kind not in k]
            raise ConfigError(f"gcp_kind {kind!r}: {', '.join(cannot)} cannot fine-tune a {kind} GCP")

    def runs(self) -> list[tuple[str, int]]:
        """Every (algorithm, seed) run of the study, in file order."""
        return [(a, s) for a in self.algorithms for s in self.seeds]

    def eval_points(self) -> list[int]:
        """The env steps of the curve's evaluations (the trainer's schedule: every ``eval_every`` and the end)."""
        points = list(range(self.eval_every, self.budget + 1, self.eval_every))
        return points if points and points[-1] == self.budget else [*points, self.budget]
