"""Training without a reference model, when every selected loss declares `needs_reference = False`.

TRL 1.16 loads a reference model (unless PEFT or precomputed reference log-probs are used) and runs it on every
batch. When the loss plan is reference-free (every `loss_type` entry is a registry loss with
`needs_reference = False`, e.g. SimPO), `ConservativeDPOTrainer` instead:
  1. keeps TRL's constructor from loading one: it sees `precompute_ref_log_probs=True` while it runs (the
     caller's value is restored right after) and the trainer's `_precompute_ref_logps` returns the dataset
     untouched, so nothing is precomputed either;
  2. releases a `ref_model` the caller passed;
  3. on each batch hands TRL zero reference log-probs as if precomputed, so TRL runs the policy forward only;
  4. logs the loss's own rewards as `rewards/*` (`reward_metrics.py`), where TRL would log beta * (logps - 0).
KL-to-reference monitoring is off in this mode: there is no reference to compare with.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from trl_conservative.errors import ConfigError

__all__ = [
    "bind_trainer_args",
    "check_reference_free_args",
    "reference_forward_skipped",
    "reference_not_loaded",
    "with_zero_reference",
]


def check_reference_free_args(args: Any, loss_names: list[str]) -> None:
    """Reject settings that need a reference model, naming the reference-free losses that make it absent."""
    if getattr(args, "sync_ref_model", False):
        raise ConfigError(
            f"sync_ref_model=True updates a reference model, but every selected loss ({', '.join(loss_names)}) "
            "is reference-free, so none is loaded. Set sync_ref_model=False."
        )


def bind_trainer_args(init: Any, *pargs: Any, **kwargs: Any) -> Mapping[str, Any]:
    """`DPOTrainer.__init__`'s arguments by name (positional ones included), defaults left out."""
    bound = inspect.signature(init).bind_partial(None, *pargs, **kwargs)
    return bound.arguments


def _is_vision(dataset: Any) -> bool:
    try:
        sample = next(iter(dataset))
    except (StopIteration, TypeError):
        return False
    return isinstance(sample, Mapping) and ("image" in sample or "images" in sample)


@contextlib.contextmanager
def reference_not_loaded(args: Any, bound: Mapping[str, Any]) -> Iterator[None]:
    """While TRL's constructor runs, make it believe reference log-probs are precomputed, so it loads no model.

    It does not when TRL would load no reference anyway (PEFT, an explicit `ref_model`) or would reject the
    setting (vision datasets do not support precomputed log-probs).
    """
    from .trl_compat import trains_peft

    skip = (
        bound.get("ref_model") is None and not trains_peft(bound) and not _is_vision(bound.get("train_dataset"))
    )
    if not skip:
        yield
        return
    original = args.precompute_ref_log_probs
    args.precompute_ref_log_probs = True
    try:
        yield
    finally:
        args.precompute_ref_log_probs = original


def with_zero_reference(inputs: dict[str, Any], n_pairs: int) -> dict[str, Any]:
    """A copy of the batch with zero `ref_chosen_logps`/`ref_rejected_logps`, which TRL reads when precomputed."""
    device = next(v.device for v in inputs.values() if isinstance(v, torch.Tensor))
    zeros = torch.zeros(n_pairs, device=device)
    return {**inputs, "ref_chosen_logps": zeros, "ref_rejected_logps": zeros}


@contextlib.contextmanager
def reference_forward_skipped(trainer: Any) -> Iterator[None]:
    """Make TRL's `_compute_loss` read the (zero) reference log-probs from the batch instead of running a model."""
    original = trainer.precompute_ref_logps
    trainer.precompute_ref_logps = True
    try:
        yield
    finally:
        trainer.precompute_ref_logps = original
