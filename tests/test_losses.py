"""Each built-in loss equals its paper formula, computed independently here in float64."""

from __future__ import annotations

import math

import pytest
import torch

from trl_conservative import LossInputs, LossOutput, get_loss

pytestmark = pytest.mark.core


def _inputs(
    seed: int = 0, batch: int = 64, beta: float = 0.1, eps: float = 0.0, grad: bool = False
) -> LossInputs:
    g = torch.Generator().manual_seed(seed)

    def logps() -> torch.Tensor:
        return (-torch.rand(batch, generator=g, dtype=torch.float64) * 40).requires_grad_(grad)

    return LossInputs(
        chosen_logps=logps(),
        rejected_logps=logps(),
        ref_chosen_logps=logps().detach(),
        ref_rejected_logps=logps().detach(),
        chosen_lengths=torch.randint(0, 30, (batch,), generator=g),
        rejected_lengths=torch.randint(1, 30, (batch,), generator=g),
        beta=beta,
        label_smoothing=eps,
    )


def _h(x: LossInputs) -> list[float]:
    return [
        (cw - rcw) - (cl - rcl)
        for cw, rcw, cl, rcl in zip(
            x.chosen_logps.tolist(),
            x.ref_chosen_logps.tolist(),
            x.rejected_logps.tolist(),
            x.ref_rejected_logps.tolist(),
            strict=True,
        )
    ]


def _log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_sigmoid_is_dpo_eq7(beta: float) -> None:
    x = _inputs(seed=1, beta=beta)
    out = get_loss("sigmoid")(x)
    expected = [-_log_sigmoid(beta * h) for h in _h(x)]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25, 0.49])
def test_cdpo_is_mitchell_eq3(eps: float) -> None:
    beta = 0.2
    x = _inputs(seed=2, beta=beta, eps=eps)
    out = get_loss("cdpo")(x)
    expected = [-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h) for h in _h(x)]
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)


def test_cdpo_at_eps_zero_equals_sigmoid_exactly() -> None:
    x = _inputs(seed=3, eps=0.0)
    assert torch.equal(get_loss("cdpo")(x).losses, get_loss("sigmoid")(x).losses)


def test_sigmoid_with_label_smoothing_is_cdpo() -> None:
    x = _inputs(seed=4, eps=0.2)
    assert torch.equal(get_loss("sigmoid")(x).losses, get_loss("cdpo")(x).losses)
    assert not torch.allclose(get_loss("sigmoid")(x).losses, get_loss("sigmoid")(_inputs(seed=4)).losses)


def test_cdpo_gradient_vanishes_where_sigma_equals_one_minus_eps() -> None:
    eps, beta = 0.1, 1.0
    h_star = math.log((1 - eps) / eps) / beta  # sigma(beta h*) = 1 - eps
    chosen = torch.tensor([h_star], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    x = LossInputs(
        chosen_logps=chosen,
        rejected_logps=zero,
        ref_chosen_logps=zero,
        ref_rejected_logps=zero,
        chosen_lengths=torch.ones(1),
        rejected_lengths=torch.ones(1),
        beta=beta,
        label_smoothing=eps,
    )
    get_loss("cdpo")(x).losses.sum().backward()
    assert chosen.grad is not None and abs(chosen.grad.item()) < 1e-12


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_is_azar_eq17_with_token_averaging(beta: float) -> None:
    x = _inputs(seed=5, beta=beta)
    out = get_loss("ipo")(x)
    expected = []
    for cw, rcw, cl, rcl, lw, ll in zip(
        x.chosen_logps.tolist(),
        x.ref_chosen_logps.tolist(),
        x.rejected_logps.tolist(),
        x.ref_rejected_logps.tolist(),
        x.chosen_lengths.tolist(),
        x.rejected_lengths.tolist(),
        strict=True,
    ):
        h_bar = (cw - rcw) / max(lw, 1) - (cl - rcl) / max(ll, 1)
        expected.append((h_bar - 1 / (2 * beta)) ** 2)
    torch.testing.assert_close(out.losses, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)


def test_ipo_all_truncated_completion_is_finite() -> None:
    x = _inputs(seed=6)
    x = LossInputs(**{**x.__dict__, "chosen_lengths": torch.zeros(64), "rejected_lengths": torch.zeros(64)})
    assert torch.isfinite(get_loss("ipo")(x).losses).all()


@pytest.mark.parametrize("name", ["sigmoid", "cdpo", "ipo"])
def test_rewards_are_beta_times_summed_logratio_and_detached(name: str) -> None:
    x = _inputs(seed=7, beta=0.3, eps=0.1, grad=True)
    out = get_loss(name)(x)
    assert isinstance(out, LossOutput)
    assert out.losses.shape == (64,) and out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    torch.testing.assert_close(out.chosen_rewards, 0.3 * (x.chosen_logps - x.ref_chosen_logps).detach())
    torch.testing.assert_close(out.rejected_rewards, 0.3 * (x.rejected_logps - x.ref_rejected_logps).detach())
    out.losses.sum().backward()
    assert x.chosen_logps.grad is not None and torch.isfinite(x.chosen_logps.grad).all()


@pytest.mark.parametrize("name", ["sigmoid", "cdpo", "ipo"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_is_kept(name: str, dtype: torch.dtype) -> None:
    x = _inputs(seed=8)
    x = LossInputs(**{k: (v.to(dtype) if k.endswith("logps") else v) for k, v in x.__dict__.items()})
    assert get_loss(name)(x).losses.dtype == dtype


def test_loss_inputs_is_frozen_and_keyword_only() -> None:
    x = _inputs()
    with pytest.raises(AttributeError):
        x.beta = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        LossInputs(x.chosen_logps)  # type: ignore[misc,call-arg]
    assert dict(x.params) == {}
