"""`LossPlan`: the checked loss settings of a config (`resolve_losses`), and who computes each loss term.

TRL options its own `_compute_loss` applies to the sequence scores before the loss (`ld_alpha`,
`f_divergence_type`, `use_weighting`) cannot be honoured by our losses, which receive raw summed log-probs: with
them, `sigmoid` at eps = 0 runs on TRL's own code and any other registry loss is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from trl_conservative.errors import ConfigError, LossParamError, UnknownLossError
from trl_conservative.losses.contract import LossInputs
from trl_conservative.registry.registry import LossInfo, get_registry

__all__ = ["LossPlan", "ResolvedLoss", "resolve_losses"]


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
    divergence = getattr(divergence, "value", divergence)  # an Enum on TRL 0.2x, a string on TRL 1.16
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


def resolve_losses(args: Any) -> LossPlan:
    """Check the loss settings of a `DPOConfig` (or ours) and decide who computes each loss term.

    Raises `ConfigError` (a ValueError) naming the bad value and the fix. Runs before any weights load.
    """
    from trl_conservative.trainer.trl_compat import trl_native_losses

    beta = args.beta
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}. A usual value is 0.1.")
    eps = args.label_smoothing
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 <= eps < 0.5:
        raise ConfigError(
            f"label_smoothing (the cDPO label-flip rate eps) must lie in [0, 0.5), got {eps!r}. "
            "Use 0 for plain DPO, or your estimate of the fraction of flipped preference labels (e.g. 0.1)."
        )
    loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    if not loss_types:
        raise ConfigError("loss_type is empty; give at least one loss, e.g. loss_type='cdpo'.")
    weights = list(args.loss_weights) if args.loss_weights is not None else [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ConfigError(
            f"loss_weights has {len(weights)} entries for {len(loss_types)} losses {loss_types}; "
            "give one weight per loss, or none for equal weights."
        )
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
