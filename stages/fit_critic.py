"""Stage `fit_critic`: an initial critic ensemble for fine-tuning.

``mode: none`` (the paper's default) writes a randomly initialized ensemble; ``td_mc`` fits it offline on the
demonstrations with TD + Monte-Carlo-return regression using the BC policy's EMA actor for bootstrap chunks;
``calql`` adds Cal-QL's calibrated conservative term. Writes models/critic, plots/critic_loss.csv,
metrics/fit_critic.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ogpo.agents.offline_critic import OfflineCriticConfig, fit_critic_offline
from ogpo.critic import CriticConfig, CriticPair
from ogpo.data.demo_buffer import load_demo_buffer
from ogpo.errors import ConfigError
from ogpo.policy_io import load_policy_pair, save_critic
from stages.common import (
    Timer,
    check_device,
    check_device_name,
    git_revision,
    load_params,
    param,
    stage_main,
    write_json_atomic,
    write_text_atomic,
)
from stages.live import write_live

log = logging.getLogger("stages.fit_critic")

DATA = Path("data/demos.hdf5")
BC = Path("models/bc")
OUT = Path("models/critic")
CURVE = Path("plots/critic_loss.csv")
METRICS = Path("metrics/fit_critic.json")


@dataclass
class CriticParams:
    """Params section ``fit_critic``. M heads and hidden widths; dims come from the BC policy."""

    seed: int = param(0, ge=0)
    device: str = "cpu"
    threads: int | None = param(1, ge=1)  # torch CPU threads (1: env workers share the cores); None = all
    M: int = param(10, ge=2)
    hidden: list[int] = param(default_factory=lambda: [512, 512, 512, 512], ge=1)
    fit: OfflineCriticConfig = field(default_factory=OfflineCriticConfig)

    def validate(self) -> None:
        if not self.hidden:
            raise ConfigError("hidden must be a non-empty list of layer widths, got []")
        check_device_name(self.device)
        self.fit.validate()


def run() -> None:
    p = load_params("fit_critic", CriticParams)
    check_device(p.device, "params.yaml: fit_critic.device")
    if p.threads:
        torch.set_num_threads(p.threads)
    with Timer() as timer:
        torch.manual_seed(p.seed)
        gen = torch.Generator(device=p.device).manual_seed(p.seed)
        actor, target, bc_cfg = load_policy_pair(BC, p.device)
        cfg = CriticConfig(obs_dim=actor.cfg.obs_dim, chunk_dim=actor.chunk_dim, M=p.M, hidden=list(p.hidden))
        critic = CriticPair(cfg).to(p.device)
        rows: list[dict] = []
        if p.fit.mode != "none":
            demos, _ = load_demo_buffer(DATA, device=p.device)
            rows = fit_critic_offline(critic, target, demos, p.fit, generator=gen)
    save_critic(OUT, critic, {"task": bc_cfg["task"], "mode": p.fit.mode, "git_rev": git_revision()})
    lines = ["step,td_loss,mc_loss,cql_loss"] + [
        f"{r['step']},{r['td_loss']:.6g},{r['mc_loss']:.6g},{r['cql_loss']:.6g}" for r in rows
    ]
    write_text_atomic(CURVE, "\n".join(lines) + "\n")
    metrics = {
        "wall_time_s": round(timer.wall_time_s, 2),
        "mode": p.fit.mode,
        "updates": p.fit.steps if p.fit.mode != "none" else 0,
        "final_td_loss": rows[-1]["td_loss"] if rows else None,
    }  # params are DVC's to show (params.yaml), not echoed here
    write_json_atomic(METRICS, metrics)
    write_live("fit_critic", rows, "step", metrics)
    log.info("critic (%s, M=%d) saved to %s", p.fit.mode, p.M, OUT)


if __name__ == "__main__":
    stage_main(run)
