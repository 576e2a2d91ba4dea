"""finetune.algo and finetune.agent: the registry entry's config class validates the agent section; unknown
algorithms list the registered ones; another algorithm's key names that algorithm; an algorithm that cannot
fine-tune the BC checkpoint's GCP kind says so before any environment starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ogpo.algos import algorithms
from ogpo.critic import CriticConfig, CriticPair
from ogpo.errors import ConfigError
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig
from ogpo.policy_io import save_critic, save_policy
from stages.finetune import load_finetune_params

ROOT = Path(__file__).resolve().parents[2]


def params(tmp_path: Path, **finetune) -> Path:
    doc = yaml.safe_load((ROOT / "profiles/tiny.yaml").read_text())
    doc["finetune"].update(finetune)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_default_profile_selects_ogpo_ca_with_its_named_fields(tmp_path):
    p, spec, cfg = load_finetune_params(params(tmp_path))
    assert spec.name == p.algo == "ogpo+ca"
    assert cfg.success_bc is True and cfg.advantage == "conservative" and cfg.G == 4


def test_unknown_algorithm_lists_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_finetune_params(params(tmp_path, algo="sac"))
    msg = str(e.value)
    assert "finetune.algo 'sac' is not a registered algorithm" in msg
    for name in algorithms():
        assert name in msg


def test_key_of_another_algorithm_names_that_algorithm(tmp_path):
    others = {n: s for n, s in algorithms().items() if not n.startswith("ogpo")}
    if not others:
        pytest.skip("only the OGPO family is registered")
    name = next(iter(others))
    with pytest.raises(ConfigError) as e:
        load_finetune_params(params(tmp_path, algo=name, agent={"best_of_n_heads_typo": 1, "G": 4}))
    assert f"finetune.agent.G is an option of ogpo, ogpo+, ogpo+ca, not of {name}" in str(e.value)


def test_typo_gets_a_did_you_mean_and_variant_points_at_algo(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean finetune\.agent\.best_of_n"):
        load_finetune_params(params(tmp_path, agent={"best_of_m": 4}))
    with pytest.raises(ConfigError, match="finetune.agent.variant was replaced by finetune.algo"):
        load_finetune_params(params(tmp_path, agent={"variant": "ogpo+"}))
    with pytest.raises(ConfigError, match="finetune.agent.G must be"):
        load_finetune_params(params(tmp_path, agent={"G": 1}))


def test_every_registered_algorithm_loads_with_its_defaults(tmp_path):
    for name, spec in algorithms().items():
        p, got, cfg = load_finetune_params(params(tmp_path, algo=name, agent={}))
        assert got is spec and isinstance(cfg, spec.config)


def _run_finetune(ws: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "stages.finetune"], cwd=ws, env=env, capture_output=True, text=True, timeout=120
    )


def test_algorithm_that_cannot_use_the_gcp_kind_fails_before_any_env_starts(tmp_path):
    restricted = {n: s for n, s in algorithms().items() if len(s.gcp_kinds) == 1}
    if not restricted:
        pytest.skip("every registered algorithm takes both GCP kinds")
    name, spec = next(iter(restricted.items()))
    other = "flow" if spec.gcp_kinds[0] == "diffusion" else "diffusion"
    gcfg = GCPConfig(kind=other, obs_dim=19, act_dim=7, H=4, K=3, hidden=[8])
    actor = make_gcp(gcfg)
    save_policy(tmp_path / "models/bc", actor, actor, {"task": "lift"})
    save_critic(tmp_path / "models/critic", CriticPair(CriticConfig(obs_dim=19, chunk_dim=28, M=2, hidden=[8])), {})
    params(tmp_path, algo=name, agent={})
    out = _run_finetune(tmp_path)
    assert out.returncode == 1, out.stderr
    assert f"algorithm {name!r} cannot fine-tune a {other!r} GCP" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "models/finetuned").exists() and not (tmp_path / "plots").exists()


def test_resume_fingerprint_ignores_where_and_how_wide_it_runs(monkeypatch):
    """A saved state resumes on another device or thread count (changing threads to speed up a stopped run must
    not throw its progress away), but not with other training params."""
    import stages.finetune as ft
    from ogpo.algos.ogpo import OGPOConfig

    monkeypatch.setattr(ft, "file_sha256", lambda path: "same-input")
    base = ft._fingerprint(ft.FinetuneParams(), OGPOConfig())
    assert ft._fingerprint(ft.FinetuneParams(threads=2, device="cpu", state_dir="elsewhere"), OGPOConfig()) == base
    assert ft._fingerprint(ft.FinetuneParams(seed=1), OGPOConfig()) != base
    assert ft._fingerprint(ft.FinetuneParams(), OGPOConfig(actor_lr=1e-4)) != base
