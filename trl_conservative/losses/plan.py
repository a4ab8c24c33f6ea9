"""`LossPlan`: the checked loss settings of a config (`resolve_losses`), and who computes each loss term.

TRL options its own `_compute_loss` applies to the sequence scores before the loss (`ld_alpha`,
`f_divergence_type`, `use_weighting`) cannot be honoured by our losses, which receive raw summed log-probs: with
them, `sigmoid` at eps = 0 runs on TRL's own code and any other registry loss is refused.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from trl_conservative.errors import ConfigError, LossParamError, UnknownLossError
from trl_conservative.losses.contract import LossInputs
from trl_conservative.registry.registry import LossInfo, get_registry
from trl_conservative.training_args import is_number, plain, weights_in_effect

__all__ = [
    "BETA_MAX",
    "LossPlan",
    "ResolvedLoss",
    "check_beta",
    "check_label_smoothing",
    "check_loss_types",
    "check_loss_weights",
    "loss_type_names",
    "resolve_losses",
]


@dataclass(frozen=True)
class ResolvedLoss:
    """One entry of `loss_type`: its weight, and our loss (None when TRL computes it natively)."""

    name: str
    weight: float
    info: LossInfo | None
    params: Mapping[str, Any]

    def inputs_for(self, base: LossInputs) -> LossInputs:
        """`base` with this entry's `loss_params` attached (unchanged when it has none)."""
        return replace(base, params=self.params) if self.params else base


@dataclass(frozen=True)
class LossPlan:
    """How the trainer computes the loss: TRL's native terms and ours, in `loss_type` order."""

    entries: tuple[ResolvedLoss, ...]

    @property
    def native(self) -> tuple[ResolvedLoss, ...]:
        return tuple(e for e in self.entries if e.info is None)

    @property
    def custom(self) -> tuple[ResolvedLoss, ...]:
        return tuple(e for e in self.entries if e.info is not None)

    @property
    def needs_reference(self) -> bool:
        return bool(self.native) or any(e.info is not None and e.info.needs_reference for e in self.entries)

    def citations(self) -> list[str]:
        return [e.info.citation for e in self.custom if e.info is not None and e.info.citation]


def _uses_trl_only_options(args: Any) -> list[str]:
    used = []
    if getattr(args, "ld_alpha", None) is not None:
        used.append(f"ld_alpha={args.ld_alpha!r}")
    divergence = getattr(args, "f_divergence_type", "reverse_kl")
    divergence = plain(divergence)  # an Enum on TRL 0.2x, a string on TRL 1.16
    if divergence != "reverse_kl":
        used.append(f"f_divergence_type={divergence!r}")
    if getattr(args, "use_weighting", False):
        used.append("use_weighting=True")
    # TRL 0.2x: Liger's fused kernel replaces the loss code altogether (`use_liger_loss` up to 0.27, then
    # `use_liger_kernel`, which on TRL 1.16 only patches the model's modules).
    if getattr(args, "use_liger_loss", False):
        used.append("use_liger_loss=True")
    if getattr(args, "use_liger_kernel", False) and _trl_stack() == "dpo_loss":
        used.append("use_liger_kernel=True")
    return used


def _trl_stack() -> str:
    from trl_conservative.trainer.trl_compat import TRL_STACK

    return TRL_STACK


# beta scales every log-probability difference h before the loss squashes it (sigma(beta * h), (h - 1/(2 beta))^2,
# ...). TRL computes the sequence log-probabilities in float32, whose rounding step at a magnitude >= 1 is at least
# 2**-23 (the float32 epsilon). From beta = 2**23 on, one rounding step of h moves beta * h by a whole nat or more:
# the loss reads rounding noise, and its gradient, beta times that of h, heads for float32's overflow (beta = 1e30
# gives an infinite gradient norm, which clipping turns into a zero update: weights identical to the reference).
BETA_MAX = 2.0**23


def check_beta(beta: Any) -> None:
    """`ConfigError` unless 0 < beta < BETA_MAX (= 2**23, 1 / float32 epsilon) and finite."""
    if not is_number(beta) or not math.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}. A usual value is 0.1.")
    if beta >= BETA_MAX:
        raise ConfigError(
            f"beta must be below 2**23 = {BETA_MAX:.0f} (1 / float32 epsilon), got {beta!r}: the losses squash beta "
            "times a difference of float32 log-probabilities, and from 2**23 on one float32 rounding step of that "
            "difference moves the product by a nat or more, so training reads rounding noise and its gradients "
            "(beta times larger) overflow. A usual value is 0.1."
        )


def check_label_smoothing(eps: Any) -> None:
    """`ConfigError` unless 0 <= label_smoothing < 0.5."""
    if not is_number(eps) or not 0.0 <= eps < 0.5:
        raise ConfigError(
            f"label_smoothing (the cDPO label-flip rate eps) must lie in [0, 0.5), got {eps!r}. "
            "Use 0 for plain DPO, or your estimate of the fraction of flipped preference labels (e.g. 0.1)."
        )


def loss_type_names(loss_type: Any) -> list[str]:
    """`loss_type` as a list of names (TRL accepts one name or a list)."""
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def check_loss_types(loss_types: list[str]) -> None:
    """`ConfigError` for an empty `loss_type`, or one naming a loss twice."""
    if not loss_types:
        raise ConfigError("loss_type is empty; give at least one loss, e.g. loss_type='cdpo'.")
    repeated = [name for name, count in Counter(loss_types).items() if count > 1]
    if repeated:
        raise ConfigError(
            f"loss_type {loss_types} lists {', '.join(map(repr, repeated))} more than once: each entry adds its "
            "loss term again, so the repeat only doubles that term's weight. List each loss once and set "
            "loss_weights to weigh them."
        )


def check_loss_weights(weights: Any, loss_types: Any) -> None:
    """`ConfigError` unless `loss_weights` is None or one finite weight > 0 per `loss_type` entry."""
    if weights is None:
        return
    if not isinstance(weights, list) or not all(is_number(w) and math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(
            "loss_weights must be a list of finite weights > 0 (a weight of 0 trains nothing, a negative one "
            f"ascends the loss), got {weights!r}. Fix loss_weights in the config or on the command line."
        )
    if loss_types is None:
        return
    losses = loss_type_names(loss_types)
    if len(weights) != len(losses):
        raise ConfigError(
            f"loss_weights {weights!r} has {len(weights)} weights for {len(losses)} losses {losses}. Give one weight "
            "per loss_type entry, in the same order, or leave loss_weights out for equal weights."
        )


def resolve_losses(args: Any) -> LossPlan:
    """Check the loss settings of a `DPOConfig` (or ours) and decide who computes each loss term.

    Raises `ConfigError` (a ValueError) naming the bad value and the fix. Runs before any weights load.
    """
    from trl_conservative.trainer.trl_compat import trl_native_losses

    check_beta(args.beta)
    eps = args.label_smoothing
    check_label_smoothing(eps)
    loss_types = loss_type_names(args.loss_type)
    check_loss_types(loss_types)
    check_loss_weights(list(args.loss_weights) if args.loss_weights is not None else None, loss_types)
    weights = weights_in_effect(args.loss_weights, loss_types)
    registry = get_registry()
    native_names = trl_native_losses()
    trl_only = _uses_trl_only_options(args)
    raw_params = dict(getattr(args, "loss_params", None) or {})
    entries: list[ResolvedLoss] = []
    accepted: dict[str, str] = {}
    for name, weight in zip(loss_types, weights, strict=True):
        if name in registry.losses:
            info = registry.losses[name]
            if trl_only and name == "sigmoid" and eps == 0:
                entries.append(
                    ResolvedLoss(name=name, weight=float(weight), info=None, params=MappingProxyType({}))
                )
                continue
            if trl_only:
                raise ConfigError(
                    f"{', '.join(trl_only)} is applied by TRL's own losses only and cannot be combined with "
                    f"loss {name!r}. Remove it, or use a TRL loss such as 'sigmoid' with label_smoothing=0."
                )
            params = _resolve_params(info, raw_params)
            for p in info.params:
                accepted[p.name] = name
            entries.append(ResolvedLoss(name=name, weight=float(weight), info=info, params=params))
        elif name in native_names:
            entries.append(
                ResolvedLoss(name=name, weight=float(weight), info=None, params=MappingProxyType({}))
            )
        else:
            raise UnknownLossError(
                registry.unknown_message(name, extra_valid=native_names) + " Fix loss_type."
            )
    unknown = sorted(set(raw_params) - set(accepted))
    if unknown:
        hint = (
            f"The selected losses accept: {', '.join(sorted(accepted))}."
            if accepted
            else f"None of the selected losses {loss_types} accepts parameters."
        )
        raise LossParamError(f"Unknown loss_params key(s) {', '.join(map(repr, unknown))}. {hint}")
    return LossPlan(entries=tuple(entries))


def _resolve_params(info: LossInfo, raw: Mapping[str, Any]) -> Mapping[str, Any]:
    values: dict[str, Any] = {}
    for param in info.params:
        if param.name not in raw:
            values[param.name] = param.default
            continue
        try:
            values[param.name] = param.coerce(raw[param.name])
        except TypeError as exc:
            raise LossParamError(
                f"loss_params[{param.name!r}] for loss {info.name!r}: {exc}. "
                f"Set it to a {param.type.__name__} ({param.help or 'see trl-conservative losses'})."
            ) from None
    return MappingProxyType(values)
