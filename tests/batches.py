"""Independent views of a training batch for the tests, whichever TRL line collated it.

TRL 1.16 collates `input_ids`, `attention_mask` and `completion_mask` (`[2B, T]`, chosen rows then rejected rows).
TRL 0.2x collates the parts: left-padded `prompt_input_ids`, right-padded `chosen_input_ids` / `rejected_input_ids`
with their attention masks, and joins them inside its forward, each row flushed left. `joined` rebuilds that joined
layout here, with no TRL code, so the tests' independent log-prob computations read the same tokens on both lines.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from trl_conservative.trainer.trl_compat import TRL_STACK

# transformers 4.x rounds the logged `loss` to 4 decimals (beside TRL 0.2x, and beside TRL 1.16 too); 5.x logs it whole.
LOGGED_LOSS_ABS = 1e-6 if int(transformers.__version__.split(".")[0]) >= 5 else 6e-5


def joined(
    batch: dict[str, Any], max_length: int | None = None, truncation_mode: str = "keep_end"
) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `completion_mask` `[2B, T]` for either line's batch (rows flushed left).

    With `max_length`, a TRL 0.2x row longer than it keeps its first (`keep_start`) or last (`keep_end`) tokens.
    """
    if "completion_mask" in batch:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    for side in ("chosen", "rejected"):
        prompts, prompt_masks = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        completions, completion_masks = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        for i in range(prompts.size(0)):
            prompt = prompts[i][prompt_masks[i].bool()]
            completion = completions[i][completion_masks[i].bool()]
            if max_length is not None and len(prompt) + len(completion) > max_length:
                if truncation_mode == "keep_start":
                    prompt, completion = prompt[:max_length], completion[: max(max_length - len(prompt), 0)]
                else:
                    completion = completion[-max_length:] if len(completion) > max_length else completion
                    prompt = prompt[len(prompt) - (max_length - len(completion)) :]
            rows.append((prompt, completion))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    completion_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (prompt, completion) in enumerate(rows):
        n_prompt, n = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n] = torch.cat([prompt, completion])
        attention_mask[i, :n] = 1
        completion_mask[i, n_prompt:n] = 1
    device = batch["prompt_input_ids"].device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "completion_mask": completion_mask.to(device),
    }


def sequence_logps(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference computation: full logits, float64 log-softmax, sum over completion tokens."""
    inputs = joined(batch)
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    token_logp = logp.gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
    summed = (token_logp * inputs["completion_mask"][:, 1:]).sum(dim=1)
    chosen, rejected = summed.chunk(2)
    return chosen, rejected


def completion_lengths(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion tokens per pair `([B], [B])`, chosen and rejected."""
    lengths = joined(batch)["completion_mask"].sum(1).double()
    chosen, rejected = lengths.chunk(2)
    return chosen, rejected


def trl_loss_names(trainer: Any) -> list[str]:
    """The `loss_type` entries TRL computes with its own code (ours go to TRL 0.2x under a prefix)."""
    if TRL_STACK == "fused_head":
        return list(trainer.loss_types)
    from trl_conservative.trainer.dpo_loss_adapter import CUSTOM_PREFIX

    return [name for name in trainer.loss_type if not name.startswith(CUSTOM_PREFIX)]


def metric_series(trainer: Any, mode: str) -> Any:
    """TRL's per-mode metric lists, whichever line."""
    return trainer._metric_series(mode)
