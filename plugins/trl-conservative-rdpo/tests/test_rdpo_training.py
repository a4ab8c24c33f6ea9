"""rDPO trains through the real entry point, and matches TRL's own `robust` loss step for step."""

from __future__ import annotations

import math

import pytest

from trl_conservative.testing import train_two_steps


@pytest.mark.slow
def test_two_steps_equal_trls_robust_loss(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ours = train_two_steps("rdpo", tmp_path / "rdpo", label_smoothing=0.2)
    trl = train_two_steps("robust", tmp_path / "robust", label_smoothing=0.2)  # TRL 1.16's own code path
    assert ours.trainer.loss_plan.custom[0].info.source.startswith("trl-conservative-rdpo")
    assert not trl.trainer.loss_plan.custom
    assert len(ours.losses) == 2 and all(math.isfinite(x) for x in ours.losses)
    assert ours.losses == pytest.approx(trl.losses, abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert ours.metrics[key] == pytest.approx(trl.metrics[key], abs=1e-5)
    assert ours.changed_parameters > 0.5
