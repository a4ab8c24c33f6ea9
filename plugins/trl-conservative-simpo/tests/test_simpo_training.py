"""SimPO trains through the real entry point with no reference model, logging its own rewards."""

from __future__ import annotations

import math

import pytest

from trl_conservative.testing import train_two_steps


@pytest.mark.slow
def test_two_steps_without_a_reference_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = train_two_steps("simpo", tmp_path, beta=2.0, loss_params={"gamma": 0.5})
    trainer = run.trainer
    assert trainer.ref_model is None
    assert not trainer.loss_plan.needs_reference
    assert trainer.loss_plan.custom[0].params == {"gamma": 0.5}
    assert len(run.losses) == 2 and all(math.isfinite(x) for x in run.losses)
    assert run.changed_parameters > 0.5
    m = run.metrics
    # SimPO's reward is beta * the AVERAGE log-prob; TRL would log beta * the summed log-prob. The toy
    # completions are 2-3 tokens long (1-2 digits plus EOS), so the average lies between sum/3 and sum/2.
    beta_sum = 2.0 * m["logps/chosen"]
    assert beta_sum / 2 <= m["rewards/chosen"] <= beta_sum / 3 + 1e-6
    assert m["rewards/margins"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"], abs=1e-5)
