"""The TRL 0.23-0.28 adapter: registry losses in TRL's `DPOTrainer.dpo_loss`, KL taps on its forwards.

On this line (the stack of the reference recipe) `get_batch_loss_metrics` runs `concatenated_forward` for the
policy (and the reference, unless its log-probs are in the batch), then calls `dpo_loss(chosen_logps,
rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type, model_output)` once per `loss_type` entry and sums
`losses * weight`. We keep all of that and only:
  1. hand TRL every `loss_type` entry, ours under a prefixed name (`trl_conservative:cdpo`), so TRL's own name
     checks never fire for them (`"ipo" in self.loss_type` would average every sequence log-prob by its length);
  2. compute ours in `dpo_loss` from the same sequence log-prob sums, with completion lengths read from the batch
     (what survives TRL's `max_length` truncation);
  3. log `rewards/*` as on TRL 1.16: a lone registry loss's own rewards, else beta * log-ratio;
  4. log the log-ratio drift signals from the sums, and on exact-KL steps the exact token KL from the backbones'
     final hidden states, tapped during TRL's own forwards.
TRL keeps batch metrics in `_stored_metrics[mode]` (eval keys prefixed `eval_`), averaged at each log.
`tests/test_trl_contract.py` pins the TRL source relied on here when this line is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from trl_conservative.errors import ConfigError
from trl_conservative.losses.contract import LossInputs, LossOutput
from trl_conservative.losses.plan import LossPlan, ResolvedLoss

from .kl_logging import KLLoggingTrainer
from .pair_scoring import PairScoring
from .quiet import quietly
from .reference_free import with_zero_reference
from .reward_metrics import reward_metrics
from .taps import ForwardTap, tap_forwards

__all__ = ["CUSTOM_PREFIX", "DpoLossAdapter", "completion_positions", "surviving_lengths"]

# Registry losses go into TRL's `loss_type` list under this prefix.
CUSTOM_PREFIX = "trl_conservative:"


def surviving_lengths(
    batch: dict[str, Any], max_length: int | None, truncation_mode: str, encoder_decoder: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row `[2B]` (chosen rows, then rejected rows): completion tokens TRL scores, and real tokens in the row.

    TRL 0.2x joins each left-padded prompt (p tokens) with its right-padded completion (c tokens), flushes the row
    left and, when the batch is wider than `max_length` = L, truncates it: `keep_start` keeps the first L tokens
    (the completion keeps min(c, L - p)), `keep_end` the last L (it keeps min(c, L)). Rows that fit are untouched.
    """
    prompt = batch["prompt_attention_mask"].sum(dim=1)
    completion = torch.cat(
        [batch["chosen_attention_mask"].sum(dim=1), batch["rejected_attention_mask"].sum(dim=1)]
    )
    prompt = torch.cat([prompt, prompt])
    if encoder_decoder:  # the completion is the decoder's input, never truncated with the prompt
        return completion, completion
    total = prompt + completion
    if max_length is None:
        return completion, total
    if truncation_mode == "keep_start":
        kept = torch.minimum(completion, (max_length - prompt).clamp(min=0))
    elif truncation_mode == "keep_end":
        kept = completion.clamp(max=max_length)
    else:
        raise ConfigError(f"truncation_mode={truncation_mode!r}: use 'keep_start' or 'keep_end'.")
    return kept, total.clamp(max=max_length)


def completion_positions(completion: torch.Tensor, real: torch.Tensor, width: int) -> torch.Tensor:
    """`[R, width - 1]` mask of the hidden positions t whose next token t + 1 is a scored completion token.

    Rows are flushed left: row i's real tokens are 0 .. real_i - 1, its completion the last completion_i of them.
    """
    t = torch.arange(width - 1, device=completion.device).unsqueeze(0)
    start = (real - completion).unsqueeze(1)
    return (t + 1 >= start) & (t + 1 < real.unsqueeze(1))


@dataclass
class _Batch:
    """What one `get_batch_loss_metrics` call learns while TRL runs."""

    lengths: torch.Tensor  # [2B] completion tokens scored
    real: torch.Tensor  # [2B] real tokens in the flushed row
    scores: tuple[torch.Tensor, ...] | None = None  # the four sequence log-prob sums dpo_loss got
    own_rewards: dict[str, LossOutput] = field(default_factory=dict)


class DpoLossAdapter(PairScoring, KLLoggingTrainer):
    """What `ConservativeDPOTrainer` does on TRL 0.23-0.28 (see the module docstring)."""

    PROMPT_COLUMN = "prompt_input_ids"
    PAIR_COLUMNS = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
    loss_plan: LossPlan
    _batch: _Batch | None = None
    # Set by TRL 0.2x's `DPOTrainer.__init__` (mypy sees TRL 1.16's class, which has none of them).
    is_encoder_decoder: bool
    max_length: int | None
    truncation_mode: str
    precompute_ref_log_probs: bool
    _stored_metrics: Any

    # TRL 1.16's attribute names, which the shared code reads.
    @property
    def precompute_ref_logps(self) -> bool:
        return bool(self.precompute_ref_log_probs)

    @precompute_ref_logps.setter
    def precompute_ref_logps(self, value: bool) -> None:
        self.precompute_ref_log_probs = value

    @property
    def ld_alpha(self) -> float | None:  # type: ignore[override]
        return getattr(self.args, "ld_alpha", None)

    # --- set-up -------------------------------------------------------------------------------------------
    def _hand_losses_to_trl(self) -> None:
        custom = self.loss_plan.custom
        liger = [f for f in ("use_liger_loss", "use_liger_kernel") if getattr(self.args, f, False)]
        # resolve_losses refuses it when the config is built; a config changed afterwards lands here.
        if custom and liger:
            raise ConfigError(
                f"{liger[0]}=True computes TRL's own fused loss, so the registry losses "
                f"{[e.name for e in custom]} cannot run. Set {liger[0]}=False, or use TRL's own loss names."
            )
        self._custom_entries: dict[str, ResolvedLoss] = {CUSTOM_PREFIX + e.name: e for e in custom}
        self.loss_type = [
            e.name if e.info is None else CUSTOM_PREFIX + e.name for e in self.loss_plan.entries
        ]
        self.loss_weights = [e.weight for e in self.loss_plan.entries]

    def _set_citations(self, citations: list[str]) -> None:
        """TRL 0.2x's model card is replaced by ours (`create_model_card`), which cites the losses itself."""

    def _exact_kl_blocker(self) -> str | None:
        if self.is_encoder_decoder:
            return "encoder-decoder models are not supported by the exact token KL"
        if getattr(self, "padding_free", False):
            return "padding_free=True flattens the batch, which the exact token KL does not unflatten on TRL 0.2x"
        if getattr(self, "is_vision_model", False):
            return "vision models' hidden states include image tokens the exact token KL does not align on TRL 0.2x"
        return None

    def _sequence_kl_unavailable(self) -> str | None:
        if self.kl.sequence_prompts > 0 and getattr(self, "ref_adapter_name", None):
            return (
                "ref_adapter_name makes the reference a second adapter, which the sampler does not switch to"
            )
        if self.kl.sequence_prompts > 0 and self.is_encoder_decoder:
            return "encoder-decoder models are not supported by the sequence KL sampler"
        return super()._sequence_kl_unavailable()

    def _drift_limits(self) -> tuple[str | None, str | None]:
        if self.ld_alpha is not None:
            return "TRL 0.2x weights the policy's sequence log-probs by ld_alpha", None
        if self.precompute_ref_logps:
            return None, "logratio/*, from the precomputed reference sums"
        return None, None

    # --- metrics ------------------------------------------------------------------------------------------
    def _metric_series(self, mode: str) -> MutableMapping[str, list[float]]:
        return self._stored_metrics[mode]  # type: ignore[no-any-return]

    def _metric_key(self, mode: str, name: str) -> str:
        return f"eval_{name}" if mode == "eval" else name

    # --- the loss -----------------------------------------------------------------------------------------
    def get_batch_loss_metrics(
        self, model: Any, batch: dict[str, Any], train_eval: str = "train"
    ) -> tuple[torch.Tensor, dict[str, float]]:
        exact = self._kl_exact_due()
        drift = self.kl.drift and not self.no_reference
        scoring = self._pair_rows is not None
        if not self.loss_plan.custom and not drift and not exact and not scoring:
            return cast(Any, super()).get_batch_loss_metrics(model, batch, train_eval)  # type: ignore[no-any-return]
        if self.no_reference:  # TRL reads reference log-probs from the batch when they are there: zeros
            batch = with_zero_reference(batch, batch["prompt_input_ids"].size(0))
        lengths, real = surviving_lengths(
            batch, self.max_length, self.truncation_mode, encoder_decoder=self.is_encoder_decoder
        )
        self._batch = _Batch(lengths=lengths, real=real)
        taps: Any = contextlib.nullcontext(ForwardTap())
        if exact:
            taps = tap_forwards(
                self.accelerator.unwrap_model(model), self.ref_model, outputs=False, hidden=True
            )
        try:
            with taps as tap:
                loss, metrics = cast(Any, super()).get_batch_loss_metrics(model, batch, train_eval)
            record = self._batch
        finally:
            self._batch = None
        if record.scores is None:  # TRL's liger path calls no dpo_loss
            return loss, metrics
        if scoring:
            chosen, rejected, ref_chosen, ref_rejected = record.scores
            reference = not (self.no_reference or getattr(self.args, "reference_free", False))
            self._record_pair_scores(
                chosen, rejected, ref_chosen if reference else None, ref_rejected if reference else None
            )
        if self.loss_plan.custom:
            self._log_rewards(metrics, record, train_eval)
        if not self.no_reference:
            self._log_kl(batch, record, tap if exact else None)
        return loss, metrics

    def dpo_loss(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        loss_type: str = "sigmoid",
        model_output: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        record = self._batch
        if record is not None and record.scores is None:
            record.scores = (chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
        entry = self._custom_entries.get(loss_type)
        if entry is None:  # one of TRL's own losses
            return cast(Any, super()).dpo_loss(  # type: ignore[no-any-return]
                chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type, model_output
            )
        if record is None:
            raise RuntimeError(
                f"dpo_loss({loss_type!r}) was called outside get_batch_loss_metrics, so the completion lengths "
                "of the batch are unknown. Call get_batch_loss_metrics(model, batch)."
            )
        assert entry.info is not None
        device = self.accelerator.device
        chosen_logps, rejected_logps = chosen_logps.to(device), rejected_logps.to(device)
        if self.no_reference or getattr(self.args, "reference_free", False):
            ref_chosen_logps, ref_rejected_logps = (
                torch.zeros_like(chosen_logps),
                torch.zeros_like(rejected_logps),
            )
        chosen_lengths, rejected_lengths = record.lengths.to(device).chunk(2)
        base = LossInputs(
            chosen_logps=chosen_logps,
            rejected_logps=rejected_logps,
            ref_chosen_logps=ref_chosen_logps.to(device),
            ref_rejected_logps=ref_rejected_logps.to(device),
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            beta=float(self.beta),
            label_smoothing=float(self.label_smoothing),
        )
        output = entry.info.loss(entry.inputs_for(base))
        record.own_rewards.setdefault(loss_type, output)
        return output.losses, output.chosen_rewards.detach(), output.rejected_rewards.detach()

    def _log_rewards(self, metrics: dict[str, float], record: _Batch, mode: str) -> None:
        """`rewards/*` as TRL 1.16 logs them: a lone registry loss's own rewards, else beta * log-ratio.

        With TRL 0.2x's `reference_free=True` the losses see a zero reference, but the rewards, as TRL's own, still
        measure the policy against the reference model.
        """
        assert record.scores is not None
        trl_reference_free = bool(getattr(self.args, "reference_free", False))
        if not self.loss_plan.native and not trl_reference_free:
            first = record.own_rewards[CUSTOM_PREFIX + self.loss_plan.custom[0].name]
            chosen, rejected = first.chosen_rewards.detach(), first.rejected_rewards.detach()
        else:
            policy_chosen, policy_rejected, ref_chosen, ref_rejected = (s.detach() for s in record.scores)
            device = policy_chosen.device
            chosen = self.beta * (policy_chosen - ref_chosen.to(device))
            rejected = self.beta * (policy_rejected - ref_rejected.to(device))
        gather = self.accelerator.gather_for_metrics
        values = reward_metrics(gather(chosen.float()), gather(rejected.float()))
        metrics.update({self._metric_key(mode, name): value for name, value in values.items()})

    # --- the KL measures ----------------------------------------------------------------------------------
    def _log_kl(self, batch: dict[str, Any], record: _Batch, tap: ForwardTap | None) -> None:
        assert record.scores is not None
        logratio = None
        if self.kl.drift and self.ld_alpha is None:
            policy_chosen, policy_rejected, ref_chosen, ref_rejected = (
                s.detach().float() for s in record.scores
            )
            policy = torch.cat([policy_chosen, policy_rejected])
            logratio = policy - torch.cat([ref_chosen, ref_rejected]).to(policy.device)
        exact_rows = None
        if tap is not None:
            policy_hidden, reference = self._hidden_pair(tap, batch)
            width = policy_hidden.hidden.size(1)
            mask = completion_positions(
                record.lengths.to(policy_hidden.hidden.device),
                record.real.to(policy_hidden.hidden.device),
                width,
            )
            exact_rows = self._exact_kl_rows(policy_hidden, reference, mask)
        self._log_kl_rows(record.lengths, logratio, exact_rows)

    def _reference_forward(self, reference: Any, batch: dict[str, Any]) -> None:
        # TRL 0.2x takes the batch only and picks the reference itself (the ref_model, or the adapter disabled).
        cast(Any, self).compute_ref_log_probs(batch)

    @quietly  # TRL's forwards use transformers' deprecated gradient_checkpointing names (quiet.py)
    def pair_logps(
        self, model: Any, batch: dict[str, Any], *, reference: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs `([B], [B])` of a collated batch's chosen and rejected completions under
        `model` (adapter on), or with `reference=True` under the reference (its model, or the adapter disabled);
        through TRL's own forward (which truncates to `max_length` as in training), no gradient."""
        if reference:
            chosen, rejected = cast(Any, self).compute_ref_log_probs(batch)
            return chosen, rejected
        with torch.no_grad(), self.accelerator.autocast():
            output = cast(Any, self).concatenated_forward(model, batch)
        return output["chosen_logps"], output["rejected_logps"]
