"""Progress lines (BC and fine-tuning): the ETA counts the evaluations still due, at the time the ones already run
took, and the rate leaves them out."""

import copy
import logging
import re
import time
from types import SimpleNamespace

import pytest
import torch

from ogpo.agents import progress
from ogpo.agents.bc import BCConfig, train_bc
from ogpo.agents.progress import ProgressLog, eta_text, evals_left
from ogpo.gcp import make_gcp
from ogpo.gcp.base import GCPConfig
from tests.ogpo.algos.test_ogpo import DA, H, _replay


@pytest.mark.parametrize(
    ("step", "max_steps", "every", "expected"),
    [
        (1000, 20000, 1000, 20),  # logged before the evaluation at 1000: 1000, 2000, ..., 20000
        (1500, 20000, 1000, 19),
        (20000, 20000, 1000, 1),
        (5, 25, 10, 3),  # 10, 20 and the last step 25
        (21, 25, 10, 1),
        (3, 5, 10, 1),  # eval_every past max_steps: only the last step
    ],
)
def test_evals_left_counts_the_evaluations_at_or_after_a_step(step, max_steps, every, expected):
    assert evals_left(step, max_steps, every) == expected


def test_eta_text_adds_the_evaluations_and_says_when_they_are_not_timed():
    assert eta_text(100.0, 4, [30.0, 50.0], 0.35) == (
        "at most 260s left (4 evaluations of ~40s included), less if an evaluation reaches the gate 0.35"
    )
    assert eta_text(100.0, 4, [], None) == "100s of training left plus 4 evaluations (not yet timed)"
    assert eta_text(7.0, 0, [], None) == "7s left"


def test_bc_progress_eta_includes_the_timed_evaluations(caplog):
    """Evaluations that take 1.2 s each, against a training rate of hundreds of steps/s: once one has run, the
    line's seconds left must cover the evaluations still due; before, it must say they are not timed."""
    torch.manual_seed(0)
    actor = make_gcp(GCPConfig(kind="flow", obs_dim=2, act_dim=DA, H=H, K=2, hidden=[16]))
    target = copy.deepcopy(actor).requires_grad_(False)

    def slow_eval(step: int) -> float:
        time.sleep(1.2)
        return 0.0

    cfg = BCConfig(max_steps=20, batch_size=8, eval_every=10, log_every=5, target_success=0.5, lr_warmup=0)
    with caplog.at_level(logging.INFO, logger="ogpo.agents.bc"):
        res = train_bc(actor, target, _replay(), cfg, evaluate=slow_eval)
    assert res.steps == 20 and not res.stopped_early
    messages = [r.getMessage() for r in caplog.records]
    lines = {int(m.group(1)): msg for msg in messages if (m := re.match(r"BC step (\d+)/", msg))}
    assert sorted(lines) == [5, 10, 15, 20]
    assert "2 evaluations (not yet timed)" in lines[5] and "2 evaluations (not yet timed)" in lines[10]
    for step, due in ((15, 1), (20, 1)):
        m = re.search(r"at most (\d+)s left \((\d+) evaluations of ~\d+s included\), less if .* gate 0.5", lines[step])
        assert m, lines[step]
        assert int(m.group(2)) == due
        assert int(m.group(1)) >= due  # the evaluations' 1.2 s each, not the training's milliseconds


def test_finetune_progress_rate_leaves_out_evaluations_and_eta_adds_them(monkeypatch, caplog):
    """10 env steps/s of training and one 30 s evaluation: the window with the evaluation still reads 10
    steps/s, and the ETA is the 7 s of steps left plus the 2 evaluations still due at 30 s each."""
    clock = SimpleNamespace(t=0.0)
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: clock.t))
    log = logging.getLogger("test.progress")
    p = ProgressLog(log, total=100, every=10, env_steps=0, eval_every=50)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        clock.t = 1.0
        p.tick(10, 0)
        clock.t = 2.0
        p.tick(20, 5)
        clock.t = 32.0
        p.evaluated(30.0)
        clock.t = 33.0
        p.tick(30, 10)
    first, _, third = (r.getMessage() for r in caplog.records)
    assert first == (
        "env steps 10/100  updates 0  10 steps/s  ETA 9s of training left plus 2 evaluations (not yet timed)"
    )
    assert third == "env steps 30/100  updates 10  10 steps/s  ETA 67s left (2 evaluations of ~30s included)"


def test_finetune_progress_gives_no_eta_from_a_window_without_updates(monkeypatch, caplog):
    """Before ``start_training`` the loop only collects, several times faster than it trains: a window that
    began there must not promise an ETA at its rate; the first window after it must."""
    clock = SimpleNamespace(t=0.0)
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: clock.t))
    log = logging.getLogger("test.progress.start")
    p = ProgressLog(log, total=100, every=10, env_steps=0, start_training=20)
    with caplog.at_level(logging.INFO, logger="test.progress.start"):
        for step, t in ((10, 0.1), (20, 0.2), (30, 10.2)):
            clock.t = t
            p.tick(step, max(0, step - 20))
    first, second, third = (r.getMessage() for r in caplog.records)
    assert first.endswith("100 steps/s  ETA not yet measured (collecting without updates until 20 env steps)")
    assert second.endswith("ETA not yet measured (collecting without updates until 20 env steps)")
    assert third == "env steps 30/100  updates 10  1 steps/s  ETA 70s left"
