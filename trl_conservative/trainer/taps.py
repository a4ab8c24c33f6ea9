"""Forward hooks that record what the policy and the reference return while TRL computes one loss.

No forward is repeated: TRL's own fused-head forwards are tapped (their per-token log-probs), and on the steps that
need it the backbones' final hidden states too (the exact token KL projects them through the LM heads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from trl_conservative.kl.sampling import backbone_of, causal_lm_of

__all__ = ["ForwardTap", "HiddenCapture", "hook_hidden", "tap_forwards"]


@dataclass(frozen=True)
class HiddenCapture:
    """A backbone's final hidden states `[R, L, H]` (detached) and the LM head in use when it ran."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class ForwardTap:
    """Outputs of the model calls made while TRL computes one loss, in call order."""

    policy: list[Any] = field(default_factory=list)
    reference: list[Any] = field(default_factory=list)
    policy_hidden: list[HiddenCapture] = field(default_factory=list)
    reference_hidden: list[HiddenCapture] = field(default_factory=list)


def hook_hidden(model: Any, sink: list[HiddenCapture]) -> Any:
    causal_lm = causal_lm_of(model)

    def hook(_module: Any, _args: Any, out: Any) -> None:
        # Read the head now: with PEFT `modules_to_save`, the reference (adapter off) has its own head.
        head = causal_lm.get_output_embeddings()
        sink.append(HiddenCapture(out[0].detach(), head.weight, head.bias))

    return backbone_of(causal_lm).register_forward_hook(hook)


@contextlib.contextmanager
def tap_forwards(
    policy: torch.nn.Module, reference: torch.nn.Module | None, *, outputs: bool = True, hidden: bool = False
) -> Iterator[ForwardTap]:
    """Record what `policy` and `reference` return while the block runs (forward hooks, removed on exit).

    With `outputs=False` the model outputs are not kept (TRL 0.2x's hold full `[2B, L, V]` logits); with
    `hidden=True` each backbone call's `last_hidden_state` is recorded. With PEFT and no reference model the
    policy's backbone runs twice: the policy first, then the reference (adapter disabled).
    """
    tap = ForwardTap()
    handles = []
    if outputs:
        handles.append(policy.register_forward_hook(lambda _m, _a, out: tap.policy.append(out)))
        if reference is not None:
            handles.append(reference.register_forward_hook(lambda _m, _a, out: tap.reference.append(out)))
    if hidden:
        handles.append(hook_hidden(policy, tap.policy_hidden))
        if reference is not None:
            handles.append(hook_hidden(reference, tap.reference_hidden))
    try:
        yield tap
    finally:
        for handle in handles:
            handle.remove()
