"""The loss contract: what a loss receives, what it returns, and what it declares.

These names are public API for plugin authors. They hold plain tensors and numbers only (no TRL types),
so the same losses run on TRL 1.16's `_compute_loss` and on the older `dpo_loss` override point.
New fields are only ever added with defaults, so existing plugins keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch

from trl_conservative.errors import PluginError

__all__ = [
    "Loss",
    "LossInputs",
    "LossOutput",
    "LossParam",
    "check_loss_declaration",
    "loss_citation",
    "loss_needs_reference",
    "loss_params",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    """Per-pair quantities a preference loss is computed from.

    All tensors are `[B]`, one entry per (chosen, rejected) pair, on the policy's device and dtype.

    Args:
        chosen_logps: log pi_theta(y_w | x), summed over the chosen completion's tokens (carries gradient).
        rejected_logps: log pi_theta(y_l | x), summed over the rejected completion's tokens (carries gradient).
        ref_chosen_logps: the same under the reference model (no gradient). Zeros when the loss declared
            `needs_reference = False` and the trainer skipped the reference forward.
        ref_rejected_logps: likewise for the rejected completion.
        chosen_lengths: number of completion tokens of each chosen completion (may be 0 if truncated away).
        rejected_lengths: likewise for the rejected completion.
        beta: the DPO temperature (IPO's tau), > 0.
        label_smoothing: the assumed label-flip rate eps in [0, 0.5).
        params: the loss's own options, validated against the loss's declared `params`, defaults filled in.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    beta: float
    label_smoothing: float = 0.0
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def chosen_logratios(self) -> torch.Tensor:
        """r(y_w) = log pi_theta(y_w|x) - log pi_ref(y_w|x)."""
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> torch.Tensor:
        """r(y_l) = log pi_theta(y_l|x) - log pi_ref(y_l|x)."""
        return self.rejected_logps - self.ref_rejected_logps

    def implicit_rewards(self) -> tuple[torch.Tensor, torch.Tensor]:
        """DPO's implicit rewards (beta * r(y_w), beta * r(y_l)), detached: what `rewards/*` log for most losses."""
        return self.beta * self.chosen_logratios.detach(), self.beta * self.rejected_logratios.detach()


@dataclass(frozen=True, kw_only=True)
class LossOutput:
    """What a loss returns.

    Args:
        losses: `[B]`, the per-pair loss; the trainer takes the mean (times the loss weight).
        chosen_rewards: `[B]`, the implicit reward of the chosen completion, detached.
        rejected_rewards: `[B]`, the implicit reward of the rejected completion, detached.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class LossParam:
    """One option a loss accepts through the config's `loss_params` mapping.

    Args:
        name: the key in `loss_params`.
        type: the Python type the value must have (`float` also accepts an int).
        default: the value used when the config does not set it.
        help: one line shown by `trl-conservative losses`.
    """

    name: str
    type: type
    default: Any
    help: str = ""

    def coerce(self, value: Any) -> Any:
        """Return `value` as this parameter's type, or raise TypeError naming what was expected."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.type is bool and not isinstance(value, bool):
            raise TypeError(f"expected a bool (true/false), got {value!r}")
        if not isinstance(value, self.type):
            raise TypeError(f"expected {self.type.__name__}, got {type(value).__name__} {value!r}")
        return value


@runtime_checkable
class Loss(Protocol):
    """A preference loss.

    Required: `name` and `__call__`. Optional attributes the registry reads with defaults:
    `citation: str | None` (BibTeX), `params: tuple[LossParam, ...]` (the options it accepts),
    `needs_reference: bool` (False lets the trainer skip the reference forward; default True),
    `uses_label_smoothing: bool` (False: the loss ignores `label_smoothing`, so `trl-conservative run` refuses
    a label_smoothing > 0 with it instead of reporting an eps that was not applied; default True).
    """

    @property
    def name(self) -> str: ...

    def __call__(self, inputs: LossInputs) -> LossOutput: ...


def loss_citation(loss: Loss) -> str | None:
    """The loss's BibTeX citation, if it declares one."""
    citation = getattr(loss, "citation", None)
    return str(citation) if citation else None


def loss_params(loss: Loss) -> tuple[LossParam, ...]:
    """The parameters the loss declares (empty when it declares none)."""
    return tuple(getattr(loss, "params", ()) or ())


def loss_needs_reference(loss: Loss) -> bool:
    """Whether the loss reads the reference log-probs (True unless it says otherwise)."""
    return bool(getattr(loss, "needs_reference", True))


def check_loss_declaration(loss: object, source: str = "this plugin") -> None:
    """Raise `PluginError` unless `loss` has a usable name, is callable and declares its params properly."""
    name = getattr(loss, "name", None)
    if not isinstance(name, str) or not name or not callable(loss):
        raise PluginError(
            f"{source} registered {loss!r}, which is not a loss: a loss needs a non-empty str `name` and "
            "`__call__(inputs: LossInputs) -> LossOutput`."
        )
    if name != name.strip() or any(ch in name for ch in ", \t\n[]'\""):
        raise PluginError(
            f"{source}: loss name {name!r} cannot be used in `loss_type`; "
            "use letters, digits, '_', '-' or '.'."
        )
    needs_reference = getattr(loss, "needs_reference", True)
    if not isinstance(needs_reference, bool):
        raise PluginError(
            f"{source}: loss {name!r} has needs_reference={needs_reference!r}; it must be True or False."
        )
    seen: set[str] = set()
    for param in loss_params(loss):  # type: ignore[arg-type]
        if not isinstance(param, LossParam):
            raise PluginError(
                f"{source}: loss {name!r} declares {param!r} in `params`; use trl_conservative.LossParam."
            )
        if not param.name.isidentifier():
            raise PluginError(
                f"{source}: loss {name!r} declares parameter name {param.name!r}; use an identifier."
            )
        if param.name in seen:
            raise PluginError(f"{source}: loss {name!r} declares parameter {param.name!r} twice.")
        seen.add(param.name)
        if not isinstance(param.type, type):
            raise PluginError(
                f"{source}: parameter {param.name!r} of loss {name!r} has type {param.type!r}, not a type."
            )
        try:
            param.coerce(param.default)
        except TypeError as exc:
            raise PluginError(
                f"{source}: the default {param.default!r} of parameter {param.name!r} of loss {name!r} "
                f"is invalid: {exc}."
            ) from None
