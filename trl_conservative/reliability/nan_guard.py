"""The NaN guard: stop training at the first NaN or infinite loss or trained weight.

`ConservativeDPOTrainer` checks every loss its `compute_loss` returns (training and evaluation batches), before
the backward pass, and it checks the trainable weights before every save. Diagnostic metrics (`kl/*`,
`logratio/*`) are not watched: they never stop training (a non-finite one is logged and warned about once). The first non-finite value raises `NonFiniteError`, naming the step and the metric:
  - the optimizer never steps on a NaN loss, so the weights in memory are those of the last good step;
  - nothing is saved after it (the exception leaves `train()` before any checkpoint or final save), and
    `save_model` refuses to write non-finite weights (they can appear without a NaN loss: an overflowing
    gradient in bf16/fp32 turns the weights NaN at the optimizer step, and the next loss shows it);
  - the last good checkpoint on disk is named in the message, so the run can be resumed from it.
Every process takes part in each check (one all-reduced flag), so all ranks stop together.

Turn it off with `nan_guard=False`; transformers then keeps its own behaviour (`logging_nan_inf_filter` hides
non-finite losses from the logged average and training continues).

Where this differs from stock `DPOTrainer` on purpose: TRL's own `tests/test_dpo_trainer.py::test_train_model_dtype`
trains float16 weights (`model_init_kwargs={"dtype": torch.float16}`, no loss scaler) at `learning_rate=0.1`. Stock
TRL trains on into NaN: on a tiny random Qwen2 the loss is NaN from step 6 and is logged as 0.0 (grad_norm nan), and
all 27 weights end NaN; the test passes because it only asserts that every weight changed. Here the guard halts
at step 6 with `NonFiniteError` (no optimizer step on the NaN loss), so that test fails by design: it is the one
test of that module that passes for stock TRL and not for `ConservativeDPOTrainer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from trl_conservative.errors import ConfigError, NonFiniteError

from .checkpoints import latest_checkpoint

__all__ = [
    "any_process",
    "guard_enabled",
    "halt",
    "non_finite_message",
    "non_finite_parameters",
    "non_finite_value",
]


def non_finite_value(tensor: torch.Tensor) -> float | None:
    """A NaN or infinite entry of `tensor` (NaN first), or None when all are finite. One device sync."""
    tensor = tensor.detach()
    if bool(torch.isfinite(tensor).all()):
        return None
    return (
        math.nan if bool(torch.isnan(tensor).any()) else float(tensor[~torch.isfinite(tensor)].flatten()[0])
    )


def non_finite_parameters(named_parameters: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> list[str]:
    """Names of up to `limit` trainable parameters holding a NaN or infinite value (this process's shards).

    One device sync when all are finite (the usual case), so it costs a read of the weights per save.
    """
    names: list[str] = []
    flags: list[torch.Tensor] = []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        # An FSDP2 DTensor: check this rank's shard (every rank checks its own).
        local = param.to_local() if hasattr(param, "to_local") else param
        if local.numel():
            names.append(name)
            flags.append(torch.isfinite(local.detach()).all())
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for flag in flags:
        by_device.setdefault(flag.device, []).append(flag)
    if all(bool(torch.stack(group).all()) for group in by_device.values()):
        return []
    return [name for name, ok in zip(names, flags, strict=True) if not bool(ok)][:limit]


def non_finite_message(what: str, *, step: int, phase: str, output_dir: str | None, advice: str = "") -> str:
    """One line: what was non-finite and where, what was (not) saved, the last good checkpoint, the fixes."""
    last = latest_checkpoint(output_dir) if output_dir else None
    return _message(what, step=step, phase=phase, last=last, advice=advice)


def _message(what: str, *, step: int, phase: str, last: Any, advice: str) -> str:
    where = {"train": f"at step {step}", "saving": f"when saving after step {step}"}.get(
        phase, f"in {phase} after step {step}"
    )
    if last is not None:
        keep = f"The last good checkpoint is {last}; resume from it (resume_from_checkpoint) once fixed."
    else:
        keep = "No checkpoint was saved before it (save_steps keeps some to resume from)."
    fix = advice or (
        "Lower learning_rate or max_grad_norm, check the data and the loss settings, or set nan_guard=False to "
        "let transformers skip non-finite losses instead."
    )
    return f"Training halted: {what} {where}; no optimizer step or save was made with it. {keep} {fix}"


def halt(
    metric: str,
    value: float,
    *,
    step: int,
    phase: str,
    output_dir: str | None,
    what: str | None = None,
    advice: str = "",
) -> NonFiniteError:
    """The `NonFiniteError` for a non-finite `metric` (raise it); `what` overrides "<metric> is <value>"."""
    last = latest_checkpoint(output_dir) if output_dir else None  # scanned once: it warns of each broken one
    text = what or f"{metric} is {value}"
    message = _message(text, step=step, phase=phase, last=last, advice=advice)
    return NonFiniteError(
        message, metric=metric, value=value, step=step, checkpoint=str(last) if last else None
    )


def guard_enabled(args: Any, name: str) -> bool:
    """A boolean reliability setting of `args` (`nan_guard`, `save_on_interrupt`); on when `args` lacks it."""
    value = getattr(args, name, True)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    return value


def any_process(flag: bool, accelerator: Any) -> bool:
    """Whether `flag` is true on any process (all processes must call this together)."""
    if accelerator is None or getattr(accelerator, "num_processes", 1) <= 1:
        return flag
    count = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(count, reduction="sum").item() > 0)
