"""Learning tests (slow, fixed seeds): BC stopped at <= 50% success, then OGPO+CA with no demos in the replay
reaches >= 90% success over 200 evaluation episodes, for the flow and the diffusion GCP.

The margins are statistical, not lucky: 200 episodes put the 95% Wilson interval of a 0.93 rate at about
[0.89, 0.96], and the BC start is measured on 200 episodes as well. Curves: python -m tests.ogpo.toy_recipe.
"""

import pytest

from tests.ogpo.toy_recipe import run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "kind, steps",
    [("flow", 16_000), ("diffusion", 16_000)],
)
def test_ogpo_ca_lifts_a_weak_bc_policy_on_the_toy_task(kind, steps):
    out = run(kind, seed=0, total_env_steps=steps, verbose=True)
    assert out["bc_success"] <= 0.5, out["bc_success"]
    assert out["final_success"] >= 0.9, (out["final_success"], [r["success"] for r in out["curve"]])
