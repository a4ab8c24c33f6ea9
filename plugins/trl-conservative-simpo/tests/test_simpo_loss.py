"""SimPO: the paper's equation, its reward, its `gamma` parameter, and the conformance kit."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
import trl_conservative_simpo
from trl_conservative_simpo import SimPOLoss

from trl_conservative import ConservativeDPOConfig, LossParamError, loss_info
from trl_conservative.testing import KnownPoint, check_loss, make_inputs

LOSS = SimPOLoss()


def _paper_simpo(s_w: float, n_w: int, s_l: float, n_l: int, beta: float, gamma: float) -> float:
    """Meng et al. (2024), Eq. 6: -log sigma(beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma)."""
    z = beta * s_w / n_w - beta * s_l / n_l - gamma
    return math.log1p(math.exp(-z)) if z >= 0 else -z + math.log1p(math.exp(z))


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (10.0, 1.6), (0.1, 0.0), (2.5, -0.3)])
def test_formula_equals_the_paper_equation_in_float64(beta: float, gamma: float) -> None:
    inputs = make_inputs(LOSS, 64, seed=5, scale=5.0, beta=beta, label_smoothing=0.0, params={"gamma": gamma})
    out = LOSS(inputs)
    rows = zip(
        inputs.chosen_logps.tolist(),
        inputs.chosen_lengths.tolist(),
        inputs.rejected_logps.tolist(),
        inputs.rejected_lengths.tolist(),
        strict=True,
    )
    expected = torch.tensor([_paper_simpo(*row, beta, gamma) for row in rows], dtype=torch.float64)
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=1e-6)
    # Eq. 4: the reward is beta times the average log-likelihood, with no reference.
    avg_w = inputs.chosen_logps.detach() / inputs.chosen_lengths.to(torch.float64)
    torch.testing.assert_close(out.chosen_rewards, beta * avg_w, rtol=0, atol=1e-12)


def test_label_smoothing_is_the_released_trainers_conservative_form() -> None:
    eps = 0.1
    inputs = make_inputs(LOSS, 16, seed=2, beta=2.0, label_smoothing=eps)
    z = (
        2.0 * inputs.chosen_logps / inputs.chosen_lengths
        - 2.0 * inputs.rejected_logps / inputs.rejected_lengths
        - 0.5
    ).detach()
    expected = -(1 - eps) * torch.nn.functional.logsigmoid(z) - eps * torch.nn.functional.logsigmoid(-z)
    torch.testing.assert_close(LOSS(inputs).losses, expected, rtol=0, atol=1e-12)


def test_conformance_kit_passes_including_reference_free() -> None:
    checked = check_loss(
        LOSS,
        known_points=[
            # equal average log-likelihoods: -log sigma(-gamma) = log(1 + e^gamma)
            KnownPoint(
                loss=math.log1p(math.exp(0.5)),
                chosen_logps=-6.0,
                chosen_length=3,
                rejected_logps=-8.0,
                rejected_length=4,
                beta=2.0,
                chosen_reward=-4.0,
                rejected_reward=-4.0,
            ),
            # gap beta * (avg_w - avg_l) = 2 * (-1 + 2) = 2 = gamma + log 3 at gamma = 2 - log 3: loss -log(3/4)
            KnownPoint(
                loss=-math.log(0.75),
                chosen_logps=-2.0,
                chosen_length=2,
                rejected_logps=-10.0,
                rejected_length=5,
                beta=2.0,
                params={"gamma": 2 - math.log(3)},
            ),
            # the reference is ignored
            KnownPoint(loss=math.log1p(math.exp(0.5)), ref_chosen_logps=-50.0, ref_rejected_logps=3.0),
        ],
    )
    assert "reference_free" in checked


def test_gamma_is_declared_validated_and_defaults_to_half() -> None:
    info = loss_info("simpo")
    assert [(p.name, p.type, p.default) for p in info.params] == [("gamma", float, 0.5)]
    assert not info.needs_reference
    cfg = ConservativeDPOConfig(output_dir="unused", use_cpu=True, report_to="none", loss_type="simpo")
    assert cfg.loss_type in (["simpo"], "simpo")  # TRL 1.16 keeps a list, TRL 0.2x a lone name as a string
    with pytest.raises(LossParamError, match=r"loss_params\['gamma'\] for loss 'simpo'.*expected float"):
        ConservativeDPOConfig(
            output_dir="unused",
            use_cpu=True,
            report_to="none",
            loss_type="simpo",
            loss_params={"gamma": "big"},
        )


def test_registered_through_the_installed_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="trl_conservative")
    assert [ep.value for ep in entry_points if ep.name == "simpo"] == ["trl_conservative_simpo"]
    info = loss_info("simpo")
    assert info.source == "trl-conservative-simpo (plugin 'simpo')"
    assert info.version == trl_conservative_simpo.__version__
    assert info.citation is not None and "2405.14734" in info.citation
