"""The plugin author's conformance kit: it passes correct losses and catches each kind of broken one."""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from batches import LOGGED_LOSS_ABS

from trl_conservative import LossInputs, LossOutput, LossParam, hookimpl
from trl_conservative.losses import ConservativeDPOLoss, IPOLoss, SigmoidLoss
from trl_conservative.registry import registered_plugins
from trl_conservative.testing import (
    KnownPoint,
    LossConformanceError,
    check_loss,
    conformance_checks,
    make_inputs,
    train_two_steps,
)

pytestmark = pytest.mark.core

LOG2 = KnownPoint.from_margin(0.0, loss=math.log(2))


@dataclasses.dataclass(frozen=True)
class _Dpo:
    """A correct DPO loss; the broken variants below each change one thing."""

    name: str = "dpo_kit"
    params: tuple[LossParam, ...] = ()
    needs_reference: bool = True

    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return -F.logsigmoid(inputs.beta * (inputs.chosen_logratios - inputs.rejected_logratios))

    def rewards(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            inputs.beta * inputs.chosen_logratios.detach(),
            inputs.beta * inputs.rejected_logratios.detach(),
        )

    def __call__(self, inputs: LossInputs) -> LossOutput:
        chosen, rejected = self.rewards(inputs)
        return LossOutput(losses=self.losses(inputs), chosen_rewards=chosen, rejected_rewards=rejected)


class _AttachedRewards(_Dpo):
    def rewards(self, inputs: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs.beta * inputs.chosen_logratios, inputs.beta * inputs.rejected_logratios


class _MeanNotPerPair(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return super().losses(inputs).mean()


class _Unsqueezed(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return super().losses(inputs)[:, None]


class _Float32(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return super().losses(inputs).float()


class _Detached(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return super().losses(inputs).detach()


class _HiddenParameter(_Dpo):
    scale = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return super().losses(inputs) * self.scale


class _InPlace(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        inputs.ref_chosen_logps.mul_(0.5)
        return super().losses(inputs)


class _NaNAtZeroLength(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return -F.logsigmoid(
            inputs.chosen_logps / inputs.chosen_lengths - inputs.rejected_logps / inputs.rejected_lengths
        )


class _BatchNormalised(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        h = inputs.chosen_logratios - inputs.rejected_logratios
        return -F.logsigmoid(inputs.beta * (h - h.mean()))


class _WrongSign(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return -F.logsigmoid(-inputs.beta * (inputs.chosen_logratios - inputs.rejected_logratios) + 1.0)


class _ClaimsReferenceFree(_Dpo):
    def __init__(self) -> None:
        super().__init__(needs_reference=False)


class _UndeclaredParam(_Dpo):
    def losses(self, inputs: LossInputs) -> torch.Tensor:
        return super().losses(inputs) + inputs.params["margin"]


def _bad_default() -> _Dpo:
    return _Dpo(params=(LossParam(name="margin", type=float, default="one"),))


def test_builtin_losses_pass() -> None:
    check_loss(SigmoidLoss(), known_points=[LOG2])
    check_loss(
        ConservativeDPOLoss(),
        known_points=[KnownPoint.from_margin(0.0, loss=math.log(2), label_smoothing=0.3)],
    )
    check_loss(IPOLoss(), known_points=[KnownPoint.from_margin(0.0, loss=25.0, beta=0.1)])  # (0 - 1/0.2)^2


def test_returns_the_names_of_the_checks_run() -> None:
    assert check_loss(_Dpo(), known_points=[LOG2]) == [
        "declaration",
        "shapes",
        "dtype_and_device",
        "finite",
        "policy_gradients",
        "no_hidden_parameters",
        "rewards_detached",
        "inputs_unchanged",
        "per_pair",
        "known_points",
    ]


@pytest.mark.parametrize(
    ("loss", "failed", "fragment"),
    [
        (_AttachedRewards(), ["rewards_detached"], "chosen_rewards carries gradient"),
        (_MeanNotPerPair(), ["shapes"], "losses has shape ()"),
        (_Unsqueezed(), ["shapes"], "losses has shape (1, 1), expected (1,)"),
        (_Float32(), ["dtype_and_device"], "losses is torch.float32 for torch.float64 inputs"),
        (_Detached(), ["policy_gradients"], "the losses are detached from the policy"),
        (_HiddenParameter(), ["no_hidden_parameters"], "trainable state of its own"),
        (_InPlace(), ["inputs_unchanged"], "modified inputs.ref_chosen_logps in place"),
        (_NaNAtZeroLength(), ["finite"], "not finite"),
        (_BatchNormalised(), ["per_pair"], "computed pair by pair"),
        (_WrongSign(), ["known_points"], "losses = "),
        (_ClaimsReferenceFree(), ["reference_free"], "depends on the reference log-probs"),
        (_bad_default(), ["declaration"], "default 'one' of parameter 'margin'"),
        (_Dpo(name="two words"), ["declaration"], "cannot be used in `loss_type`"),
    ],
    ids=lambda v: type(v).__name__.strip("_") if not isinstance(v, (list, str)) else None,
)
def test_a_broken_loss_fails_the_check_that_names_its_fault(
    loss: Any, failed: list[str], fragment: str
) -> None:
    with pytest.raises(LossConformanceError) as err:
        check_loss(loss, known_points=[LOG2])
    message = str(err.value)
    failed_checks = [line.split(":")[0].lstrip("- ") for line in message.splitlines()[1:]]
    assert set(failed) <= set(failed_checks), message
    assert fragment in message


def test_an_undeclared_parameter_fails_every_call() -> None:
    with pytest.raises(LossConformanceError, match=r"KeyError: 'margin'"):
        check_loss(_UndeclaredParam(), known_points=[LOG2])


def test_known_points_are_required_unless_skipped() -> None:
    with pytest.raises(LossConformanceError, match="no known points given"):
        check_loss(_Dpo())
    assert "known_points" not in check_loss(_Dpo(), skip=["known_points"])
    with pytest.raises(ValueError, match=r"unknown checks \['shape'\]"):
        check_loss(_Dpo(), skip=["shape"])


def test_conformance_checks_are_named_for_parametrize() -> None:
    checks = conformance_checks(_ClaimsReferenceFree(), known_points=[LOG2])
    assert [str(c) for c in checks][-1] == "reference_free"
    with pytest.raises(AssertionError, match="depends on the reference"):
        checks[-1].run()


def test_make_inputs_fills_declared_defaults_and_rejects_others() -> None:
    loss = _Dpo(params=(LossParam(name="margin", type=float, default=0.5),))
    inputs = make_inputs(loss, 3, params={"margin": 2})
    assert dict(inputs.params) == {"margin": 2.0} and isinstance(inputs.params["margin"], float)
    assert inputs.chosen_logps.requires_grad and not inputs.ref_chosen_logps.requires_grad
    assert (inputs.chosen_lengths >= 1).all() and inputs.chosen_logps.dtype == torch.float64
    with pytest.raises(KeyError, match="'gamma' is not a declared parameter"):
        make_inputs(loss, params={"gamma": 1.0})


@hookimpl
def _register(register: Any) -> None:
    register(_Dpo())


@pytest.mark.slow
def test_train_two_steps_trains_a_registered_loss_like_the_builtin(tmp_path: Any) -> None:
    with registered_plugins(("kit", types.SimpleNamespace(register_losses=_register))):
        ours = train_two_steps("dpo_kit", tmp_path / "kit")
    builtin = train_two_steps("sigmoid", tmp_path / "builtin")
    assert len(ours.losses) == 2
    assert ours.losses[0] == pytest.approx(math.log(2), abs=LOGGED_LOSS_ABS)  # policy == reference at step 0
    assert ours.losses == pytest.approx(builtin.losses, abs=1e-6)
    assert ours.changed_parameters > 0.5
    assert ours.metrics["rewards/margins"] == pytest.approx(builtin.metrics["rewards/margins"], abs=1e-6)
