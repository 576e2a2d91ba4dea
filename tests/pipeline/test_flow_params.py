"""Typed flow parameters (one flow per use): bad deployment parameters are rejected by schema before any work."""

import os

import jsonschema
import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from pipeline.flows import full_pipeline, nightly_regression, stage, study

BAD = [
    (full_pipeline, {"profile": "huge"}),
    (full_pipeline, {"rev": "--upload-pack=evil"}),
    (full_pipeline, {"rev": "main branch"}),
    (full_pipeline, {"targets": ["finetune; rm -rf /"]}),
    (full_pipeline, {"finetune_pool": "tpu"}),
    (full_pipeline, {"seeds": []}),
    (nightly_regression, {"alpha": 0.7}),
    (nightly_regression, {"baseline_rev": "-x"}),
    (study, {"study": "../etc"}),
    (study, {"study": "Toy Study"}),
    (study, {"study": "toy", "finetune_pool": "tpu"}),
    (stage, {"rev": "HEAD", "targets": ["studies/../dvc.yaml:run"]}),
    (stage, {"rev": "HEAD", "targets": ["run@qc-0; rm -rf /"]}),
]


@pytest.mark.parametrize("flow, params", BAD)
def test_flow_rejects_bad_parameters(flow, params):
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters(params)


@pytest.mark.parametrize("flow, params", BAD)
def test_server_schema_rejects_bad_parameters(flow, params):
    """The JSON schema the server enforces (enforce_parameter_schema) rejects the same inputs."""
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(params, schema)


@pytest.mark.parametrize(
    "flow, good",
    [
        (full_pipeline, {"profile": "tiny", "rev": "v1.2/rc-1", "targets": ["finetune@0"],
                         "overrides": {"finetune.steps": 10}}),
        (nightly_regression, {"alpha": 0.01, "baseline_rev": "regression-baseline"}),
        (study, {"study": "toy", "rev": "main"}),
        (stage, {"rev": "abc123", "targets": ["studies/toy/dvc.yaml:run@ogpo+ca-0"]}),
    ],
)  # fmt: skip
def test_good_parameters_pass(flow, good):
    assert flow.validate_parameters(good)
    jsonschema.validate(good, parameter_schema(flow.fn).model_dump_for_openapi())


def test_every_flow_is_named_ogpo_and_each_deployment_runs_its_own():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    deployments = {d["name"]: d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]}
    assert {n: d["entrypoint"] for n, d in deployments.items()} == {
        "full-pipeline": "pipeline/flows.py:full_pipeline",
        "nightly-regression": "pipeline/flows.py:nightly_regression",
        "stage-gpu": "pipeline/flows.py:stage",
        "study": "pipeline/flows.py:study",
    }
    assert {f.name for f in (full_pipeline, nightly_regression, stage, study)} == {"ogpo"}


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
    assert _pool_for("studies/toy/dvc.yaml:run@ogpo+ca-0", "auto", gpu_online=True) == "gpu"
    assert _pool_for("studies/toy/dvc.yaml:start", "auto", gpu_online=True) == "cpu"
    assert _pool_for("studies/toy/dvc.yaml:aggregate", "auto", gpu_online=True) == "cpu"


def test_progress_line_counts_stages_and_gives_an_eta_at_the_rate_so_far():
    from pipeline.flows import progress_line

    assert progress_line(0, 2, 8, 5.0, 10) == "stages: 0 done, 2 running, 8 left of 10; 5 s elapsed"
    assert progress_line(5, 1, 4, 300.0, 10) == (
        "stages: 5 done, 1 running, 4 left of 10; 300 s elapsed, ETA ~5 min at the rate so far"
    )


def test_seeded_stages_are_the_seed_section_and_everything_downstream():
    from pipeline.flows import seeded_stages

    graph = {"ingest": [], "pretrain_bc": ["ingest"], "fit_critic": ["pretrain_bc"], "finetune": ["fit_critic"],
             "evaluate": ["finetune", "pretrain_bc"], "report": ["evaluate"]}  # fmt: skip
    assert seeded_stages(graph, "finetune.seed") == {"finetune", "evaluate", "report"}
    assert seeded_stages(graph, "pretrain_bc.seed") == {"pretrain_bc", "fit_critic", "finetune", "evaluate", "report"}
    with pytest.raises(Exception, match="nosuch"):
        seeded_stages(graph, "nosuch.seed")


def test_study_artifact_reads_the_summary_that_the_aggregation_writes():
    """The `ogpo-study` artifact table is built from a real summarize() output (its schema, not a guess)."""
    from ogpo.study.aggregate import summarize
    from pipeline.flows import _study_markdown
    from pipeline.tasks import StageResult

    rows = [
        {"task": "toy", "algo": algo, "seed": seed, "env_steps": step, "episodes": 20, "successes": k,
         "success_rate": k / 20, "final": int(step == 200)}
        for algo, finals in (("ogpo+ca", [18, 20]), ("qc", [10, 14]))
        for seed, k_final in enumerate(finals)
        for step, k in ((0, 6), (200, k_final))
    ]  # fmt: skip
    summary = summarize(rows, reference="ogpo+ca", reps=50, seed=0)
    results = {
        f"studies/s/dvc.yaml:run@{a}-{s}": StageResult(f"run@{a}-{s}", "f" * 40, ran, [], 1.0, {})
        for a, s, ran in (("ogpo+ca", 0, []), ("qc", 1, ["run@qc-1"]))
    }
    md = _study_markdown("s", "f" * 40, summary, results, "studies/s/ffffffffffff", "bucket")
    assert "| ogpo+ca | 2 | 95.0% [90.0%, 100.0%] | 95.0% [90.0%, 100.0%] |" in md, md
    assert "| qc | 2 | 60.0% [50.0%, 70.0%] |" in md, md
    assert "Stage runs this time: 1 of 2 (studies/s/dvc.yaml:run@qc-1)" in md, md
