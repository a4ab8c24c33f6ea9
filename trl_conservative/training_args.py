"""Reading a `TrainingArguments` (or a `DPOConfig`) the one way every module does: `plain` (an enum setting's value)
and `evaluates` (whether the run evaluates). No torch, TRL or transformers import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluates", "plain"]


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
