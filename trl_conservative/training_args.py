"""Reading a `TrainingArguments` (or a `DPOConfig`) the one way every module does: `plain` (an enum setting's value),
`evaluates` (whether the run evaluates), `weights_in_effect` (the loss weights) and `is_number` (a numeric value,
never a bool). No torch, TRL or transformers
import (`trl-conservative report` reads a finished run's settings with them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

__all__ = ["evaluates", "is_number", "plain", "weights_in_effect"]


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether a setting's or a record's value is a number: an int or a float, never a bool (a bool is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plain(value: Any) -> Any:
    """An enum setting's value (`IntervalStrategy.STEPS` -> "steps"), anything else unchanged.

    transformers and TRL keep some settings as enums on one release and as strings on another.
    """
    return getattr(value, "value", value)


def evaluates(args: Any) -> bool:
    """Whether the run evaluates: an `eval_strategy` other than "no", or `eval_on_start` alone.

    The data loader then needs a held-out split, and the KL monitor's `metric="auto"` watches an evaluation metric.
    """
    strategy = getattr(args, "eval_strategy", "no")
    return str(plain(strategy)) != "no" or bool(getattr(args, "eval_on_start", False))


def weights_in_effect(weights: Sequence[float] | None, loss_types: Sequence[str]) -> list[float]:
    """The weight of each `loss_type` entry: `loss_weights` when it has one per entry, else 1.0 each.

    `losses.plan.check_loss_weights` refuses a count that does not match before training; a finished run's record
    that does not match is read as equal weights.
    """
    if weights is None or len(weights) != len(loss_types):
        return [1.0] * len(loss_types)
    return [float(w) for w in weights]
