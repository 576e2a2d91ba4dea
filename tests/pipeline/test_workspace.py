"""Stage-graph ordering, repro output parsing, failure classification and params overrides."""

import pytest

from ogpo.errors import ConfigError, StorageError
from pipeline import workspace
from pipeline.workspace import CmdResult, StageError, TransientError, Workspace

GRAPH = {
    "ingest": [],
    "pretrain_bc": ["ingest"],
    "fit_critic": ["ingest", "pretrain_bc"],
    "finetune@0": ["fit_critic", "pretrain_bc"],
    "finetune@1": ["fit_critic", "pretrain_bc"],
    "evaluate": ["finetune@0", "finetune@1", "pretrain_bc"],
}


def test_topo_order_puts_upstream_first():
    order = workspace.topo_order(GRAPH)
    for stage, ups in GRAPH.items():
        assert all(order.index(u) < order.index(stage) for u in ups)


def test_upstream_closure_and_unknown_stage():
    assert workspace.upstream_closure(GRAPH, ["fit_critic"]) == {"ingest", "pretrain_bc", "fit_critic"}
    with pytest.raises(ConfigError, match="finetun"):
        workspace.upstream_closure(GRAPH, ["finetun"])


def test_cycle_is_rejected():
    with pytest.raises(ConfigError, match="cycle"):
        workspace.topo_order({"a": ["b"], "b": ["a"]})


def test_parse_repro_output():
    out = (
        "Stage 'ingest' is cached - skipping run, checking out outputs\n"
        "Stage 'pretrain_bc' didn't change, skipping\n"
        "Running stage 'finetune@0':\n> python -m stages.finetune\n"
    )
    assert workspace.parse_repro(out) == (["finetune@0"], ["ingest"], ["pretrain_bc"])


@pytest.mark.parametrize(
    ("output", "kind", "needle"),
    [
        ("ERROR: unexpected error - Forbidden: An error occurred (403) when calling HeadObject", StorageError,
         "credentials"),
        ("ERROR: unexpected error - The specified bucket does not exist: (NoSuchBucket)", StorageError, "bucket"),
        ('ERROR: failed to transfer - Could not connect to the endpoint URL: "http://127.0.0.1:1/x"',
         TransientError, "retry"),
        ("Traceback ...\nValueError: finetune.G must be >= 2", StageError, "finetune.G"),
    ],
)  # fmt: skip
def test_failures_are_classified(output, kind, needle):
    err = workspace.classify_failure("dvc push", CmdResult(["dvc"], 1, output, 0.1))
    assert type(err) is kind and needle in str(err)
    if kind is StorageError:
        assert not isinstance(err, TransientError)


def test_overrides_set_known_keys_and_reject_unknown(tmp_path):
    (tmp_path / "params.yaml").write_text("finetune:\n  steps: 100\n  lr: 0.1\n")
    ws = Workspace(path=tmp_path, sha="0" * 40)
    workspace.apply_overrides(ws, {"finetune.steps": 7})
    assert "steps: 7" in (tmp_path / "params.yaml").read_text()
    with pytest.raises(ConfigError, match="finetune.stepz"):
        workspace.apply_overrides(ws, {"finetune.stepz": 1})
    with pytest.raises(ConfigError, match="nosection"):
        workspace.apply_overrides(ws, {"nosection.x": 1})
