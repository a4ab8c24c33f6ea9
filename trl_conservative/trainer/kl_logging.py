"""The KL monitoring part of `ConservativeDPOTrainer`: the exact token KL on TRL's own forwards, the log-ratio
drift signals, and the sequence KL sampled at each evaluation (see `trl_conservative.kl`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.utils import logging

from trl_conservative.kl.measures import (
    KLSums,
    LogitTransform,
    exact_token_kl_chunked,
    kl_metrics,
    logit_transform_for,
    logratio_sums,
)
from trl_conservative.kl.sampling import backbone_of, causal_lm_of, sequence_kl_rows, summarize_rows
from trl_conservative.kl.settings import KLSettings
from trl_conservative.metric_names import KL_SEQUENCE, SAMPLED_KL_STDERR, SAMPLED_LENGTH, SAMPLED_TRUNCATED

from .taps import ForwardTap, HiddenCapture, hook_hidden
from .trl_compat import DPOTrainer, is_peft_model

__all__ = ["KLLoggingTrainer"]

logger = logging.get_logger(__name__)


class KLLoggingTrainer(DPOTrainer):
    """`DPOTrainer` plus the KL measures; `ConservativeDPOTrainer` sets `kl`, `_kl_exact_off`, `_kl_sequence_off`
    and `_non_finite_noted` in its `__init__` and calls `_log_kl` from its loss."""

    kl: KLSettings
    reference_free: bool
    _kl_exact_off: str | None
    _kl_sequence_off: str | None
    _kl_transforms: tuple[LogitTransform, LogitTransform]
    _non_finite_noted: set[str]

    def _in_training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    # --- the token KL and the log-ratios --------------------------------------------------------------------------------------
    def _kl_exact_unavailable(self) -> str | None:
        """Why `kl/exact` cannot be computed in this setup (None when it can, or when it is off)."""
        if self.kl.exact_steps == 0:
            return None
        if self.reference_free:
            return "every selected loss is reference-free, so no reference model is loaded"
        if self.precompute_ref_logps and self.ref_model is None and not is_peft_model(self.model):
            return (
                "precompute_ref_log_probs=True without a ref_model keeps only the reference's sequence log-prob "
                "sums, not its token distributions"
            )
        models = [self.model] if self.ref_model is None else [self.model, self.ref_model]
        transforms = []
        for model in models:
            causal_lm = causal_lm_of(self.accelerator.unwrap_model(model))
            if backbone_of(causal_lm) is causal_lm:
                return f"{type(causal_lm).__name__} exposes no backbone under base_model_prefix"
            try:
                transforms.append(logit_transform_for(causal_lm.config))
            except ValueError as exc:
                return str(exc)
        self._kl_transforms: tuple[LogitTransform, LogitTransform] = (transforms[0], transforms[-1])
        return None

    def _sequence_kl_unavailable(self) -> str | None:
        """Why `kl/sequence` cannot be computed in this setup (None when it can, or when it is off)."""
        if self.kl.sequence_prompts == 0:
            return None
        if self.reference_free:
            return "every selected loss is reference-free, so no reference model is loaded"
        if self.ref_model is None and not is_peft_model(self.model) and self.precompute_ref_logps:
            return (
                "precompute_ref_log_probs=True without a ref_model keeps no reference model to sample against"
            )
        return None

    def _warn_kl_limits(self) -> None:
        """Say once, on the main process, which KL measures this setup cannot log."""
        if not self.accelerator.is_main_process:
            return
        missing, logged = [], []
        if self._kl_exact_off is not None:
            missing.append(f"kl/exact ({self._kl_exact_off})")
        if self._kl_sequence_off is not None:
            missing.append(f"kl/sequence ({self._kl_sequence_off})")
        if self.reference_free and self.kl.drift:
            missing.append("logratio/* (every selected loss is reference-free: no reference)")
        if self.precompute_ref_logps and self.kl.drift and not self.reference_free:
            if self.ld_alpha is None:
                logged.append("logratio/*, from the precomputed reference sums")
            else:
                missing.append("logratio/* (the precomputed reference sums are weighted by ld_alpha)")
        if not missing:
            return
        if self.reference_free:
            fix = (
                "There is no reference to compare with: set kl_exact_steps=0, kl_sequence_prompts=0 and "
                "kl_drift=False to silence this."
            )
        elif self.precompute_ref_logps:
            fix = "To get every measure, pass ref_model=... or set precompute_ref_log_probs=False."
        else:
            fix = "Set kl_exact_steps=0 to silence this."
        logger.warning(
            f"KL monitoring: not logged: {'; '.join(missing)}."
            + (f" Logged: {'; '.join(logged)}." if logged else "")
            + f" {fix}"
        )

    def _kl_exact_due(self) -> bool:
        """Exact KL on every evaluation batch, and in training on the last step of each window of N steps.

        The step being computed is `global_step + 1` (the counter moves after the optimizer step), so steps
        N, 2N, ... compute it: their log, at that same step, describes the policy of that window, never an older one.
        """
        if self.kl.exact_steps == 0 or self._kl_exact_off is not None:
            return False
        return not self._in_training() or (self.state.global_step + 1) % self.kl.exact_steps == 0

    def _log_kl(self, inputs: dict[str, Any], tap: ForwardTap, *, exact: bool) -> None:
        """Append the `kl/...` and `logratio/...` metrics of this batch, reduced over all processes' global batch."""
        mask = inputs["completion_mask"][:, 1:]
        seq_len = mask.size(1)
        sums = KLSums(tokens=mask.sum(dim=1).float())
        if self.kl.drift:
            policy_logps = tap.policy[0].log_probs[:, -seq_len:]
            if not self.precompute_ref_logps:
                ref_out = tap.reference[0] if tap.reference else tap.policy[1]
                sums = KLSums(
                    tokens=sums.tokens,
                    logratio=logratio_sums(policy_logps, ref_out.log_probs[:, -seq_len:], mask),
                )
            elif self.ld_alpha is None:
                # sum_t l_t over a completion is its sequence log-ratio s(y) - s_ref(y): the sums suffice.
                ref_sums = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).float()
                policy_sums = torch.where(mask.bool(), policy_logps.detach().float(), 0.0).sum(dim=1)
                sums = KLSums(tokens=sums.tokens, logratio=policy_sums - ref_sums.to(policy_sums.device))
        if exact:
            sums = KLSums(
                tokens=sums.tokens, logratio=sums.logratio, exact=self._exact_kl_rows(inputs, tap, mask)
            )
        if sums.logratio is None and sums.exact is None:
            return
        names, table = sums.pair_table()
        # One row per pair: `gather_for_metrics` drops the pairs accelerate repeats in the last eval batch.
        table = self.accelerator.gather_for_metrics(table)
        self._append_diagnostics(kl_metrics(names, table))

    def _append_diagnostics(self, metrics: dict[str, float]) -> None:
        """Append diagnostic metrics to TRL's per-mode lists; a non-finite one is kept and warned about once.

        Diagnostics never stop training (the NaN guard watches the loss and the weights only).
        """
        mode = "train" if self._in_training() else "eval"
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
            if not math.isfinite(value) and name not in self._non_finite_noted:
                self._non_finite_noted.add(name)
                if self.accelerator.is_main_process:
                    logger.warning(
                        f"Diagnostic metric {name} is {value} at step {self.state.global_step} ({mode}); it is logged "
                        "as it is and training goes on (warned once per metric)."
                    )

    # --- the sequence KL on the policy's own samples, at evaluation ------------------------------------------
    def evaluation_loop(self, dataloader: Any, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.evaluation_loop`, then the sampled sequence KL on this evaluation set's prompts."""
        output = super().evaluation_loop(dataloader, *args, **kwargs)
        if self.kl.sequence_prompts > 0 and self._kl_sequence_off is None:
            prompts = _eval_prompts(getattr(dataloader, "dataset", None), self.kl.sequence_prompts)
            if prompts:
                self._log_sequence_kl(prompts)
        return output

    def _log_sequence_kl(self, prompts: list[list[int]]) -> None:
        """Sample from the policy on `prompts` (split over processes) and append `kl/sequence` and `sampled/*`."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        k, batch = self.kl.sequence_samples, int(self.args.per_device_eval_batch_size)
        mine = list(range(rank, len(prompts), world))
        per_process = math.ceil(len(prompts) / world) * k
        tokenizer = self.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        reference = self.ref_model  # None with PEFT: the policy with its adapter disabled
        table = sequence_kl_rows(
            self.model,  # type: ignore[arg-type]  # set once the trainer is built
            reference,
            prompts,
            mine,
            max_new_tokens=self.kl.sequence_max_new_tokens,
            samples_per_prompt=k,
            seed=int(self.args.seed),
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
            pad_token_id=getattr(tokenizer, "pad_token_id", None),
            batch_size=batch,
            synced=world > 1,
            batches=math.ceil(per_process / batch) if world > 1 else None,
        )
        if world > 1:  # each process filled its own prompts' rows; the sum is the full table on every process
            table = self.accelerator.reduce(table.to(self.accelerator.device), reduction="sum").cpu()
        result = summarize_rows(table)
        self._append_diagnostics(
            {
                KL_SEQUENCE: result.mean,
                SAMPLED_KL_STDERR: result.stderr,
                SAMPLED_TRUNCATED: result.truncated,
                SAMPLED_LENGTH: result.mean_length,
            }
        )

    def _exact_kl_rows(self, inputs: dict[str, Any], tap: ForwardTap, mask: torch.Tensor) -> torch.Tensor:
        policy = tap.policy_hidden[0]
        if tap.reference_hidden:
            reference = tap.reference_hidden[0]
        elif not self.precompute_ref_logps:
            reference = tap.policy_hidden[1]  # PEFT: the same backbone, run again with the adapter disabled
        else:
            reference = self._reference_hidden(inputs)
        seq_len = mask.size(1)
        policy_transform, ref_transform = self._kl_transforms
        from trl_conservative.kl.sharded_head import full_heads

        # The hooks captured the heads during the forward; under ZeRO-3 / FSDP they are sharded again by now.
        # Gathering is collective: every rank computes the exact KL on the same steps.
        heads = [(policy.weight, policy.bias), (reference.weight, reference.bias)]
        with full_heads(heads, models=(self.model_wrapped, self.model, self.ref_model)) as whole:
            (policy_weight, policy_bias), (ref_weight, ref_bias) = whole
            # Hidden state t scores token t + 1; prompt-learning PEFT prepends virtual tokens, so count from the end.
            return exact_token_kl_chunked(
                policy.hidden[:, -seq_len - 1 : -1],
                reference.hidden[:, -seq_len - 1 : -1],
                mask,
                policy_weight=policy_weight,
                ref_weight=ref_weight,
                policy_bias=policy_bias,
                ref_bias=ref_bias,
                chunk_size=self.kl.chunk_size,
                policy_transform=policy_transform,
                ref_transform=ref_transform,
            )

    def _reference_hidden(self, inputs: dict[str, Any]) -> HiddenCapture:
        """With precomputed reference log-probs TRL runs no reference forward: run one (exact-KL steps only)."""
        reference = self.ref_model if self.ref_model is not None else self.model
        sink: list[HiddenCapture] = []
        handle = hook_hidden(self.accelerator.unwrap_model(reference), sink)
        try:
            self.compute_ref_log_probs(reference, inputs)  # no_grad, autocast, and the PEFT adapter disabled
        finally:
            handle.remove()
        return sink[0]


def _eval_prompts(dataset: Any, limit: int) -> list[list[int]]:
    """The first `limit` distinct `prompt_ids` of a tokenized (map-style) evaluation set, in order."""
    if dataset is None or not hasattr(dataset, "column_names") or "prompt_ids" not in dataset.column_names:
        return []
    prompts: dict[tuple[int, ...], None] = {}
    for row in dataset.select_columns(["prompt_ids"]):
        prompt = tuple(int(t) for t in row["prompt_ids"])
        if prompt:
            prompts.setdefault(prompt, None)
        if len(prompts) >= limit:
            break
    return [list(p) for p in prompts]
