"""The TRL 1.16 adapter: registry losses and KL taps on TRL's private `DPOTrainer._compute_loss`.

TRL 1.16 computes the DPO loss in `_compute_loss`, policy and reference through the fused LM head. We keep that
method as it is (fused LM head, reference handling, PEFT, metrics, accelerate) and only:
  1. hand TRL the `loss_type` entries it computes natively (e.g. `hinge`), with their weights;
  2. tap the policy's and the reference's forward outputs while TRL runs (forward hooks), so no forward is
     repeated and no `[2B, L, V]` logits tensor is built;
  3. add our registry losses, computed from the tapped per-token log-probs, to TRL's loss;
  4. log the exact token KL (`kl/exact...`) from the backbones' final hidden states tapped on the steps that
     compute it, and the log-ratio drift signals (`logratio/...`) from the tapped per-token log-probs.
`tests/test_trl_contract.py` fails loudly when the installed TRL no longer has the shape relied on here.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from typing import Any

import torch

from trl_conservative.kl.measures import logratio_sums
from trl_conservative.losses.contract import LossInputs
from trl_conservative.losses.plan import LossPlan

from .kl_logging import KLLoggingTrainer
from .pair_scoring import PairScoring
from .quiet import quietly
from .reference_free import reference_forward_skipped, with_zero_reference
from .reward_metrics import replace_reward_metrics
from .taps import ForwardTap, tap_forwards

__all__ = ["FusedHeadAdapter"]


class FusedHeadAdapter(PairScoring, KLLoggingTrainer):
    """What `ConservativeDPOTrainer` does on TRL 1.16 (see the module docstring)."""

    PROMPT_COLUMN = "prompt_ids"
    PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
    loss_plan: LossPlan

    # --- set-up -------------------------------------------------------------------------------------------
    def _hand_losses_to_trl(self) -> None:
        """TRL's `_compute_loss` loops over `loss_types`: give it only the terms it computes natively."""
        self.loss_types = [e.name for e in self.loss_plan.native]
        self.loss_weights = [e.weight for e in self.loss_plan.native]

    def _set_citations(self, citations: list[str]) -> None:
        """TRL 1.16's own model card cites `_paper["citation"]`: DPO's and the selected losses' papers."""
        self._paper = {**self._paper, "citation": "\n\n".join(citations)}

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        if self.no_reference:  # no selected loss reads reference log-probs: compute none
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # --- metrics ------------------------------------------------------------------------------------------
    def _metric_series(self, mode: str) -> MutableMapping[str, list[float]]:
        return self._metrics[mode]  # type: ignore[no-any-return]  # "eval" keys get their prefix at log time

    def _drift_limits(self) -> tuple[str | None, str | None]:
        if not self.precompute_ref_logps:
            return None, None
        if self.ld_alpha is None:
            return None, "logratio/*, from the precomputed reference sums"
        return "the precomputed reference sums are weighted by ld_alpha", None

    # --- the loss -----------------------------------------------------------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        exact = self._kl_exact_due()
        scoring = self._pair_rows is not None
        if not self.loss_plan.custom and not self.kl.drift and not exact and not scoring:
            return super()._compute_loss(model, inputs, return_outputs)
        policy = self.accelerator.unwrap_model(model)
        skip_reference: Any = contextlib.nullcontext()
        if self.no_reference:  # TRL reads zero reference log-probs from the batch instead of running a model
            n_pairs = inputs["input_ids"].size(0) // 2
            inputs, skip_reference = with_zero_reference(inputs, n_pairs), reference_forward_skipped(self)
        with tap_forwards(policy, self.ref_model, hidden=exact) as tap, skip_reference:
            result = super()._compute_loss(model, inputs, return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        base = self._loss_inputs(inputs, tap) if self.loss_plan.custom or scoring else None
        if base is not None and scoring:
            reference = not self.no_reference
            self._record_pair_scores(
                base.chosen_logps,
                base.rejected_logps,
                base.ref_chosen_logps if reference else None,
                base.ref_rejected_logps if reference else None,
            )
        if base is not None and self.loss_plan.custom:
            loss = loss + self._custom_loss(base)
        if not self.no_reference:
            self._log_kl(inputs, tap, exact=exact)
        return (loss, outputs) if return_outputs else loss

    def _loss_inputs(self, inputs: dict[str, Any], tap: ForwardTap) -> LossInputs:
        completion_mask = inputs["completion_mask"]
        seq_len = completion_mask.size(1) - 1
        # The first policy call is TRL's policy forward (a later one may be the PEFT reference, adapter off).
        logps = tap.policy[0].log_probs[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.no_reference:
            ref_chosen_logps, ref_rejected_logps = (
                torch.zeros_like(chosen_logps),
                torch.zeros_like(rejected_logps),
            )
        elif self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_out = tap.reference[0] if tap.reference else tap.policy[1]
            ref_chosen_logps, ref_rejected_logps = ref_out.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        chosen_lengths, rejected_lengths = completion_mask.sum(dim=1).chunk(2, dim=0)
        return LossInputs(
            chosen_logps=chosen_logps,
            rejected_logps=rejected_logps,
            ref_chosen_logps=ref_chosen_logps,
            ref_rejected_logps=ref_rejected_logps,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            beta=float(self.beta),
            label_smoothing=float(self.label_smoothing),
        )

    def _custom_loss(self, base: LossInputs) -> torch.Tensor:
        total: torch.Tensor | float = 0.0
        for entry in self.loss_plan.custom:
            assert entry.info is not None
            output = entry.info.loss(entry.inputs_for(base))
            if entry is self.loss_plan.custom[0] and not self.loss_plan.native:
                # Log this loss's own rewards (SimPO's differ from TRL's beta * log-ratio).
                mode = "train" if self._in_training() else "eval"
                replace_reward_metrics(self._metrics[mode], output, self.accelerator.gather)
            total = total + output.losses.mean() * entry.weight
        assert isinstance(total, torch.Tensor)
        return total

    # --- the KL measures ----------------------------------------------------------------------------------
    def _log_kl(self, inputs: dict[str, Any], tap: ForwardTap, *, exact: bool) -> None:
        mask = inputs["completion_mask"][:, 1:]
        seq_len = mask.size(1)
        logratio = None
        if self.kl.drift:
            policy_logps = tap.policy[0].log_probs[:, -seq_len:]
            if not self.precompute_ref_logps:
                ref_out = tap.reference[0] if tap.reference else tap.policy[1]
                logratio = logratio_sums(policy_logps, ref_out.log_probs[:, -seq_len:], mask)
            elif self.ld_alpha is None:
                # sum_t l_t over a completion is its sequence log-ratio s(y) - s_ref(y): the sums suffice.
                ref_sums = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).float()
                policy_sums = torch.where(mask.bool(), policy_logps.detach().float(), 0.0).sum(dim=1)
                logratio = policy_sums - ref_sums.to(policy_sums.device)
        exact_rows = None
        if exact:
            policy, reference = self._hidden_pair(tap, inputs)
            exact_rows = self._exact_kl_rows(policy, reference, mask)
        self._log_kl_rows(mask.sum(dim=1), logratio, exact_rows)

    def _reference_forward(self, reference: Any, batch: dict[str, Any]) -> None:
        self.compute_ref_log_probs(reference, batch)

    @quietly  # TRL's forwards use transformers' deprecated gradient_checkpointing names (quiet.py)
    def pair_logps(
        self, model: Any, batch: dict[str, Any], *, reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs `([B], [B])` of a collated batch's chosen and rejected completions under
        `model` (adapter on), or with `reference=True` under the reference (its model, or the adapter disabled);
        through TRL's fused LM head, no gradient."""
        if reference:
            ref = self.ref_model if self.ref_model is not None else model
            chosen, rejected = self.compute_ref_log_probs(ref, batch)
            return chosen, rejected
        kwargs = {
            k: v
            for k, v in batch.items()
            if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
        }
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        with torch.no_grad(), self.accelerator.autocast():
            per_token = model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True).log_probs
        seq_len = batch["completion_mask"].size(1) - 1
        chosen, rejected = per_token[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        return chosen, rejected
