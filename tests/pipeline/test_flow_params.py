"""Typed flow parameters: bad deployment parameters are rejected by schema before any work starts."""

import os

import jsonschema
import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from pipeline.flows import ogpo

BAD = [
    {"profile": "huge"},
    {"mode": "everything"},
    {"rev": "--upload-pack=evil"},
    {"rev": "main branch"},
    {"alpha": 0.7},
    {"targets": ["finetune; rm -rf /"]},
    {"finetune_pool": "tpu"},
]


@pytest.mark.parametrize("params", BAD)
def test_flow_rejects_bad_parameters(params):
    with pytest.raises(ParameterTypeError):
        ogpo.validate_parameters(params)


@pytest.mark.parametrize("params", BAD)
def test_server_schema_rejects_bad_parameters(params):
    """The JSON schema the server enforces (enforce_parameter_schema) rejects the same inputs."""
    schema = parameter_schema(ogpo.fn).model_dump_for_openapi()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(params, schema)


def test_good_parameters_pass():
    good = {"profile": "tiny", "rev": "v1.2/rc-1", "targets": ["finetune@0"], "alpha": 0.01,
            "overrides": {"finetune.steps": 10}}  # fmt: skip
    assert ogpo.validate_parameters(good)["profile"] == "tiny"
    jsonschema.validate(good, parameter_schema(ogpo.fn).model_dump_for_openapi())


def test_env_file_fills_only_missing_ogpo_and_aws_keys(tmp_path, monkeypatch):
    from pipeline.flows import load_env_file

    env_file = tmp_path / "stack.env"
    env_file.write_text("OGPO_S3_BUCKET=fromfile\nAWS_SECRET_ACCESS_KEY=filesecret\nPATH=/evil\n")
    monkeypatch.setenv("OGPO_ENV_FILE", str(env_file))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "already-set")
    monkeypatch.delenv("OGPO_S3_BUCKET", raising=False)
    path_before = os.environ["PATH"]
    load_env_file()
    assert os.environ["OGPO_S3_BUCKET"] == "fromfile"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "already-set" and os.environ["PATH"] == path_before


def test_finetune_goes_to_gpu_only_when_a_gpu_worker_is_online():
    from pipeline.flows import _pool_for

    assert _pool_for("finetune", "auto", gpu_online=True) == "gpu"
    assert _pool_for("finetune@seed1", "auto", gpu_online=True) == "gpu"
    assert _pool_for("finetune", "auto", gpu_online=False) == "cpu"
    assert _pool_for("evaluate", "gpu", gpu_online=True) == "cpu"
    assert _pool_for("finetune", "cpu", gpu_online=True) == "cpu"


def test_seeded_stages_are_the_seed_section_and_everything_downstream():
    from pipeline.flows import seeded_stages

    graph = {"ingest": [], "pretrain_bc": ["ingest"], "fit_critic": ["pretrain_bc"], "finetune": ["fit_critic"],
             "evaluate": ["finetune", "pretrain_bc"], "report": ["evaluate"]}  # fmt: skip
    assert seeded_stages(graph, "finetune.seed") == {"finetune", "evaluate", "report"}
    assert seeded_stages(graph, "pretrain_bc.seed") == {"pretrain_bc", "fit_critic", "finetune", "evaluate", "report"}
    with pytest.raises(Exception, match="nosuch"):
        seeded_stages(graph, "nosuch.seed")
