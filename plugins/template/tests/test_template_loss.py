"""The template plugin's tests: keep them when you copy the template, and change the expected values."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
import trl_conservative_template
from trl_conservative_template import TemplateLoss

from trl_conservative import loss_info
from trl_conservative.testing import KnownPoint, conformance_checks, make_inputs, train_two_steps

LOSS = TemplateLoss()

# Values of the loss you can work out by hand: they catch a wrong sign or a misplaced beta.
KNOWN_POINTS = [
    KnownPoint.from_margin(0.0, loss=math.log(2)),  # sigma(0) = 1/2
    KnownPoint.from_margin(10 * math.log(3), beta=0.1, loss=-math.log(0.75)),  # sigma(log 3) = 3/4
    KnownPoint.from_margin(0.0, params={"margin": math.log(3)}, loss=-math.log(0.25)),  # sigma(-log 3) = 1/4
    KnownPoint(
        loss=math.log(2), chosen_logps=-3.0, ref_chosen_logps=-3.0, chosen_reward=0.0, rejected_reward=0.0
    ),
]


@pytest.mark.parametrize("check", conformance_checks(LOSS, known_points=KNOWN_POINTS), ids=str)
def test_conformance(check) -> None:  # type: ignore[no-untyped-def]
    check.run()


def test_formula_equals_the_paper_equation_in_float64() -> None:
    inputs = make_inputs(LOSS, 64, seed=1, scale=20.0, params={"margin": 0.3})
    got = LOSS(inputs).losses
    h = (inputs.chosen_logratios - inputs.rejected_logratios).tolist()
    expected = [math.log1p(math.exp(-(inputs.beta * x - 0.3))) for x in h]  # -log sigma(z) = log(1 + e^-z)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)


def test_the_installed_entry_point_registers_the_loss() -> None:
    module = trl_conservative_template.__name__
    found = {
        (ep.name, ep.dist.name, ep.dist.version): ep
        for ep in importlib.metadata.entry_points(group="trl_conservative")
        if ep.value == module and ep.dist is not None
    }
    assert len(found) == 1, (
        f"expected one entry point naming {module!r}, found {sorted(found)}: pip install -e ."
    )
    ep = next(iter(found.values()))
    assert ep.dist is not None
    info = loss_info(LOSS.name)
    assert info.source == f"{ep.dist.name} (plugin {ep.name!r})"
    assert info.version == ep.dist.version == trl_conservative_template.__version__
    assert [p.name for p in info.params] == ["margin"]


@pytest.mark.slow
def test_trains_two_steps_like_dpo_at_margin_zero(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ours = train_two_steps(LOSS.name, tmp_path / "template")
    dpo = train_two_steps("sigmoid", tmp_path / "dpo")
    assert len(ours.losses) == 2 and all(math.isfinite(x) for x in ours.losses)
    assert ours.losses == pytest.approx(dpo.losses, abs=1e-6)
    assert ours.changed_parameters > 0.5
