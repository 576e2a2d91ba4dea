"""The online loop on robosuite workers gives bit-identical results whether or not the workers run ahead
through queued chunks (queue_chunks only changes when the simulation happens, never what it computes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ogpo.agents.online import OnlineConfig, OnlineTrainer
from ogpo.algos import RunSeeds
from ogpo.algos.ogpo import OGPOAgent, OGPOConfig
from ogpo.critic import CriticConfig
from ogpo.data.replay import ReplayBuffer
from ogpo.envs.vector import make_vector_env
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig

H, OBS, ACT = 4, 19, 7


class PerStepOnly:
    """A vector env that ignores queue_chunks: every action is one round trip (the plain per-step path)."""

    def __init__(self, env) -> None:
        self._env = env

    def __getattr__(self, name: str):
        return getattr(self._env, name)

    def queue_chunks(self, env_ids, chunks) -> None:
        pass


def _train(wrap) -> tuple[list[dict], dict[str, torch.Tensor], OnlineTrainer]:
    torch.manual_seed(0)
    actor = make_gcp(GCPConfig(kind="flow", obs_dim=OBS, act_dim=ACT, H=H, K=2, hidden=[32], sigma0=0.2))
    agent = OGPOAgent(
        actor,
        CriticConfig(obs_dim=OBS, chunk_dim=H * ACT, M=2, hidden=[32]),
        OGPOConfig(G=4, ppo_batch_size=8, batch_size=4, actor_lr_schedule="constant", lr_warmup=0, best_of_n=2),
        seed=0,
    )
    env = make_vector_env("lift", 2, 0, horizon=10)
    eval_env = make_vector_env("lift", 2, 0, horizon=10)
    rows: list[dict] = []
    try:
        trainer = OnlineTrainer(
            agent, wrap(env), wrap(eval_env), ReplayBuffer(1000, OBS, ACT),
            OnlineConfig(total_env_steps=64, start_training=20, utd=0.25, eval_every=32, eval_episodes=3,
                         checkpoint_every=10**9, log_every=10**9), RunSeeds(0),
        )  # fmt: skip
        trainer.run(on_eval=rows.append)
    finally:
        env.close()
        eval_env.close()
    return rows, {k: v.clone() for k, v in actor.state_dict().items()}, trainer


@pytest.mark.slow
def test_trainer_results_do_not_depend_on_queued_chunks():
    ref_rows, ref_w, ref = _train(PerStepOnly)
    rows, w, got = _train(lambda env: env)
    assert got.updates == ref.updates > 0 and got.episodes == ref.episodes >= 4  # episodes end mid-chunk
    for r, g in zip(ref_rows, rows, strict=True):
        assert {k: v for k, v in g.items() if k != "wall_time"} == pytest.approx(
            {k: v for k, v in r.items() if k != "wall_time"}, rel=0, abs=0, nan_ok=True
        )
    for k in ref_w:
        torch.testing.assert_close(w[k], ref_w[k], rtol=0, atol=0)
    n = ref.replay.size
    assert got.replay.size == n
    np.testing.assert_array_equal(got.replay.obs[:n].cpu().numpy(), ref.replay.obs[:n].cpu().numpy())
