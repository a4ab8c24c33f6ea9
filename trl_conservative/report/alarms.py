"""`training_alarms`: what a run's log history shows that is legal but alarming, as lines for the report's Warnings.

Pure functions over the Trainer's `log_history` (plain dicts), like the rest of `report/`; no Rich.

- A non-finite gradient norm (`grad_norm` inf or NaN): the gradient overflowed at that step. With clipping on
  (`max_grad_norm > 0`, the default) transformers scales it by max_grad_norm / inf = 0, so the step updates nothing,
  or by NaN, so the weights become NaN; without clipping the overflow reaches the weights. The run still ends
  with exit 0 unless the NaN guard meets a non-finite loss or weight.
- An evaluation loss many times its first value (`EVAL_LOSS_RISE`): training diverged on the held-out pairs (a
  learning rate of 10 takes the DPO loss from ln 2 = 0.69 to hundreds). DPO-family losses start where the policy
  is the reference (ln 2 for sigmoid and cDPO) and a run that learns brings the held-out loss down or about level;
  overfitting raises it by tens of percent, not several-fold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from trl_conservative.metric_names import EVAL_LOSS
from trl_conservative.report.formatting import fmt_number
from trl_conservative.training_args import is_number

__all__ = ["EVAL_LOSS_RISE", "GRAD_NORM", "eval_loss_alarms", "grad_norm_alarm", "training_alarms"]

GRAD_NORM = "grad_norm"  # logged by transformers' Trainer at each logging step (the norm before clipping)
EVAL_LOSS_RISE = 3.0  # an evaluation loss this many times its first value is an alarm

Point = tuple[int, float]


def _series(history: Iterable[Mapping[str, Any]], key: str) -> list[Point]:
    points = []
    for entry in history:
        value = entry.get(key)
        if is_number(value):
            points.append((int(entry.get("step", 0) or 0), float(value)))
    return points


def training_alarms(history: Iterable[Mapping[str, Any]]) -> list[str]:
    """The alarms of a log history, one line each: non-finite gradient norms, then evaluation losses that rose."""
    entries = list(history)
    found = [grad_norm_alarm(entries)]
    return [line for line in found if line is not None] + eval_loss_alarms(entries)


def grad_norm_alarm(history: Iterable[Mapping[str, Any]]) -> str | None:
    """One line when a logged `grad_norm` is inf or NaN, naming the first step and how many logs had one."""
    points = _series(history, GRAD_NORM)
    bad = [(step, value) for step, value in points if not math.isfinite(value)]
    if not bad:
        return None
    step, value = bad[0]
    more = f", and at {len(bad) - 1} more of the {len(points)} logged steps" if len(bad) > 1 else ""
    return (
        f"{GRAD_NORM} was {value} at step {step}{more}: the gradient overflowed, and clipping scales such a "
        "gradient by 0 (the step updates nothing) or by NaN (the weights become NaN). Lower learning_rate or beta, "
        "or train in float32 or bf16."
    )


def _eval_loss_keys(history: list[Mapping[str, Any]]) -> list[str]:
    """`eval_loss`, and `eval_<name>_loss` for each named evaluation set, in the order first logged."""
    keys: dict[str, None] = {}
    for entry in history:
        for key in entry:
            if key == EVAL_LOSS or (key.startswith("eval_") and key.endswith("_loss") and "/" not in key):
                keys[key] = None
    return list(keys)


def eval_loss_alarms(history: Iterable[Mapping[str, Any]], *, rise: float = EVAL_LOSS_RISE) -> list[str]:
    """One line per evaluation loss whose peak is at least `rise` times its first (positive, finite) value."""
    entries = list(history)
    found = []
    for key in _eval_loss_keys(entries):
        points = [p for p in _series(entries, key) if math.isfinite(p[1])]
        if len(points) < 2 or points[0][1] <= 0:
            continue
        (first_step, first), later = points[0], points[1:]
        peak_step, peak = max(later, key=lambda p: p[1])
        if peak < rise * first:
            continue
        last_step, last = points[-1]
        ends = (
            f", {fmt_number(last)} at the last evaluation (step {last_step})"
            if last_step != peak_step
            else ""
        )
        found.append(
            f"{key} rose to {fmt_number(peak)} at step {peak_step}, {fmt_number(peak / first)} times its first value "
            f"({fmt_number(first)} at step {first_step}){ends}: training diverged on the held-out pairs. Lower "
            "learning_rate (or raise beta), and prefer a checkpoint from before the rise."
        )
    return found
