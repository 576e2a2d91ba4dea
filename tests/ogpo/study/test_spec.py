"""The study file's checks: every bad study is refused with one message before any run starts."""

from __future__ import annotations

import pytest

from ogpo.errors import ConfigError
from ogpo.study.spec import StudySpec


def spec(**kw) -> StudySpec:
    base = dict(name="s", task="toy", algorithms=["ogpo+ca", "qc"], seeds=[0, 1], budget=4000, eval_every=1000,
                overrides={"ogpo+ca": {}, "qc": {"batch_size": 64}})  # fmt: skip
    return StudySpec(**(base | kw))


def test_a_good_study_lists_its_runs_and_evaluation_points():
    s = spec()
    s.validate()
    assert s.runs() == [("ogpo+ca", 0), ("ogpo+ca", 1), ("qc", 0), ("qc", 1)]
    assert s.eval_points() == [1000, 2000, 3000, 4000]
    assert spec(budget=2500).eval_points() == [1000, 2000, 2500]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(algorithms=["ogpo+ca", "sac9"], overrides={"ogpo+ca": {}, "sac9": {}}),
            "'sac9' not registered; registered: ",
        ),
        (dict(seeds=[]), "seeds must list at least one seed"),
        (dict(seeds=[0, 0]), "seeds must be distinct"),
        (dict(eval_every=5000), "eval_every 5000 is past the budget 4000"),
        (dict(budget=0), "budget must be >= 1"),
        (
            dict(algorithms=["expo", "dppo"], overrides={"expo": {}, "dppo": {}}),
            "algorithms need different GCP kinds (expo: flow; dppo: diffusion)",
        ),
        (dict(algorithms=["ogpo+ca", "dppo"], overrides={"ogpo+ca": {}, "dppo": {}}), "gcp_kind 'flow': dppo cannot"),
        (dict(overrides={"ogpo+ca": {}}), "overrides has no entry for 'qc'"),
        (dict(overrides={"ogpo+ca": {}, "qc": {}, "dsrl": {}}), "overrides names 'dsrl', not in algorithms"),
        (dict(overrides={"ogpo+ca": {"G": 4}, "qc": {"G": 4}}), "overrides.qc.G is not an option of qc"),
        (dict(name="My Study"), "name 'My Study' must be lower-case"),
    ],
)
def test_bad_studies_are_refused_with_one_message(change, message):
    with pytest.raises(ConfigError) as err:
        spec(**change).validate()
    assert message in str(err.value)


def test_a_diffusion_study_may_hold_dppo():
    spec(algorithms=["ogpo+ca", "dppo"], overrides={"ogpo+ca": {}, "dppo": {}}, gcp_kind="diffusion").validate()
