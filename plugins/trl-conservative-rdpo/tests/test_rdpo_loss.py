"""rDPO: the paper's equation, its defining property, how it differs from cDPO, and the conformance kit."""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch
import trl_conservative_rdpo
from trl_conservative_rdpo import RobustDPOLoss, robust_dpo_loss

from trl_conservative import loss_info
from trl_conservative.losses import conservative_sigmoid_loss
from trl_conservative.testing import KnownPoint, check_loss, make_inputs

LOSS = RobustDPOLoss()


def _log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def _paper_rdpo(h: float, beta: float, eps: float) -> float:
    """Chowdhury et al. (2024): [(1-eps) l(h) - eps l(-h)] / (1 - 2 eps), l(h) = -log sigma(beta h)."""
    clean, flipped = -_log_sigmoid(beta * h), -_log_sigmoid(-beta * h)
    return ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.45])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_formula_equals_the_paper_equation_in_float64(eps: float, beta: float) -> None:
    inputs = make_inputs(LOSS, 64, seed=3, scale=20.0, beta=beta, label_smoothing=eps)
    got = LOSS(inputs).losses
    h = (inputs.chosen_logratios - inputs.rejected_logratios).tolist()
    expected = torch.tensor([_paper_rdpo(x, beta, eps) for x in h], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.4])
def test_unbiased_under_label_flips(eps: float) -> None:
    # The paper's point: averaged over a flip with probability eps, rDPO is the clean DPO loss.
    h = torch.linspace(-30, 30, 61, dtype=torch.float64)
    zeros = torch.zeros_like(h)
    expected = (1 - eps) * robust_dpo_loss(h, zeros, 0.5, eps) + eps * robust_dpo_loss(-h, zeros, 0.5, eps)
    torch.testing.assert_close(expected, -torch.nn.functional.logsigmoid(0.5 * h), rtol=0, atol=1e-12)


def test_differs_from_cdpo_except_at_eps_zero() -> None:
    h, zeros = torch.tensor([-3.0, 1.0, 4.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    assert torch.equal(robust_dpo_loss(h, zeros, 1.0, 0.0), conservative_sigmoid_loss(h, zeros, 1.0, 0.0))
    rdpo, cdpo = robust_dpo_loss(h, zeros, 1.0, 0.2), conservative_sigmoid_loss(h, zeros, 1.0, 0.2)
    # Same clean term, opposite eps term, then the 1/(1-2 eps) scale.
    eps_term = 0.2 * torch.nn.functional.logsigmoid(-h)
    torch.testing.assert_close(rdpo * (1 - 0.4), cdpo + 2 * eps_term, rtol=0, atol=1e-12)
    assert not torch.allclose(rdpo, cdpo)


def test_rejects_a_flip_rate_outside_the_papers_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 0.5\), got 0.5"):
        robust_dpo_loss(torch.zeros(1), torch.zeros(1), 0.1, 0.5)


def test_conformance_kit_passes() -> None:
    eps = 0.2
    check_loss(
        LOSS,
        known_points=[
            KnownPoint.from_margin(0.0, loss=math.log(2), label_smoothing=eps),  # log 2 for any eps
            # sigma(log 3) = 3/4: [(1-eps) log(4/3) + eps log(1/4)] / (1 - 2 eps)
            KnownPoint.from_margin(
                10 * math.log(3),
                label_smoothing=eps,
                loss=((1 - eps) * math.log(4 / 3) + eps * math.log(1 / 4)) / (1 - 2 * eps),
                chosen_reward=math.log(3),
                rejected_reward=0.0,
            ),
            KnownPoint.from_margin(10 * math.log(3), loss=math.log(4 / 3)),  # eps = 0: DPO
        ],
    )


def test_registered_through_the_installed_entry_point() -> None:
    entry_points = importlib.metadata.entry_points(group="trl_conservative")
    assert [ep.value for ep in entry_points if ep.name == "rdpo"] == ["trl_conservative_rdpo"]
    info = loss_info("rdpo")
    assert info.source == "trl-conservative-rdpo (plugin 'rdpo')"
    assert info.version == trl_conservative_rdpo.__version__
    assert info.needs_reference and info.citation is not None and "2403.00409" in info.citation
