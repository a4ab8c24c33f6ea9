"""The KL monitoring part of `ConservativeDPOTrainer`: the exact token KL on TRL's own forwards, the log-ratio
drift signals, and the sequence KL sampled at each evaluation (see `trl_conservative.kl`).

Shared by both TRL lines; each adapter (`fused_head.py`, `dpo_loss_adapter.py`) taps its TRL's forwards, builds the
per-row sums and calls `_log_kl_rows`, and says where TRL keeps its metric lists (`_metric_series`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, ClassVar

import torch
from transformers.utils import logging

from trl_conservative.kl.measures import (
    KLSums,
    LogitTransform,
    exact_token_kl_chunked,
    kl_metrics,
    logit_transform_for,
)
from trl_conservative.kl.sampling import backbone_of, causal_lm_of, sequence_kl_rows, summarize_rows
from trl_conservative.kl.settings import KLSettings
from trl_conservative.metric_names import KL_SEQUENCE, SAMPLED_KL_STDERR, SAMPLED_LENGTH, SAMPLED_TRUNCATED

from .taps import ForwardTap, HiddenCapture, hook_hidden
from .trl_compat import DPOTrainer, is_peft_model

__all__ = ["KLLoggingTrainer"]

logger = logging.get_logger(__name__)


class KLLoggingTrainer(DPOTrainer):
    """`DPOTrainer` plus the KL measures; `ConservativeDPOTrainer` sets `kl`, `_kl_exact_off`, `_kl_sequence_off`,
    `_non_finite_noted` and `_sequence_kl_noted` in its `__init__`; its TRL adapter calls `_log_kl_rows` from the
    loss."""

    # The tokenized dataset column holding the prompt token ids (the sequence KL samples from these prompts), and
    # the three columns of a tokenized pair (what the collator turns into a batch `pair_logps` reads): TRL names
    # them by release, so each TRL line's adapter sets them (fused_head.py, dpo_loss_adapter.py).
    PROMPT_COLUMN: ClassVar[str]
    PAIR_COLUMNS: ClassVar[tuple[str, str, str]]

    kl: KLSettings
    no_reference: bool
    _kl_exact_off: str | None
    _kl_sequence_off: str | None
    _kl_transforms: tuple[LogitTransform, LogitTransform]
    _non_finite_noted: set[str]
    _sequence_kl_noted: set[str]

    def _in_training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    # --- the token KL and the log-ratios --------------------------------------------------------------------------------------
    def _set_up_kl_exact(self) -> str | None:
        """Set up `kl/exact` (the logit transforms of the policy and the reference, `_kl_transforms`); return why
        it cannot be computed in this setup (None when it can, or when it is off)."""
        if self.kl.exact_steps == 0:
            return None
        if self.no_reference:
            return "every selected loss is reference-free, so no reference model is loaded"
        if self.precompute_ref_logps and self.ref_model is None and not is_peft_model(self.model):
            return (
                "precompute_ref_log_probs=True without a ref_model keeps only the reference's sequence log-prob "
                "sums, not its token distributions"
            )
        blocked = self._exact_kl_blocker()
        if blocked is not None:
            return blocked
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
        if self.no_reference:
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
        if self.no_reference and self.kl.drift:
            missing.append("logratio/* (every selected loss is reference-free: no reference)")
        if self.kl.drift and not self.no_reference:
            drift_missing, drift_note = self._drift_limits()
            missing += [f"logratio/* ({drift_missing})"] if drift_missing else []
            logged += [drift_note] if drift_note else []
        if not missing:
            return
        if self.no_reference:
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

    # --- what each TRL adapter says about its line -----------------------------------------------------------
    def _exact_kl_blocker(self) -> str | None:
        """Why this TRL line cannot compute `kl/exact` in this setup (None when it can)."""
        return None

    def _drift_limits(self) -> tuple[str | None, str | None]:
        """(why `logratio/*` cannot be logged, or None; a note on how it is logged, or None)."""
        return None, None

    def _metric_series(self, mode: str) -> MutableMapping[str, list[float]]:
        """TRL's per-mode lists of batch metrics, averaged at each log, keyed as TRL keys them."""
        raise NotImplementedError

    def _metric_key(self, mode: str, name: str) -> str:
        """The key `name` has in `_metric_series(mode)`."""
        return name

    def _reference_forward(self, reference: Any, batch: dict[str, Any]) -> None:
        """Run TRL's reference log-prob computation on `batch` (no_grad, autocast, the PEFT adapter disabled)."""
        raise NotImplementedError

    # --- the hidden states tapped on an exact-KL step ---------------------------------------------------------
    def _hidden_pair(self, tap: ForwardTap, batch: dict[str, Any]) -> tuple[HiddenCapture, HiddenCapture]:
        """The policy's and the reference's final hidden states for this batch, in TRL's call order."""
        policy = tap.policy_hidden[0]
        if tap.reference_hidden:
            return policy, tap.reference_hidden[0]
        if not self.precompute_ref_logps:  # PEFT: the same backbone, run again with the adapter disabled
            return policy, tap.policy_hidden[1]
        return policy, self._reference_hidden(batch)

    def _reference_hidden(self, batch: dict[str, Any]) -> HiddenCapture:
        """With precomputed reference log-probs TRL runs no reference forward: run one (exact-KL steps only)."""
        reference = self.ref_model if self.ref_model is not None else self.model
        sink: list[HiddenCapture] = []
        handle = hook_hidden(self.accelerator.unwrap_model(reference), sink)
        try:
            self._reference_forward(reference, batch)
        finally:
            handle.remove()
        return sink[0]

    # --- the token KL and the log-ratios, from the rows an adapter tapped -------------------------------------
    def _log_kl_rows(
        self, tokens: torch.Tensor, logratio: torch.Tensor | None, exact: torch.Tensor | None
    ) -> None:
        """Append the `kl/...` and `logratio/...` metrics of this batch, reduced over all processes' global batch.

        Each argument is per row, `[2B]` (chosen rows, then rejected rows): completion tokens, sequence log-ratio
        sum_t l_t, and the exact token KL summed over the row's completion contexts (None where not computed).
        """
        sums = KLSums(tokens=tokens.float(), logratio=logratio, exact=exact)
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
        series = self._metric_series(mode)
        for name, value in metrics.items():
            series[self._metric_key(mode, name)].append(value)
            if not math.isfinite(value) and name not in self._non_finite_noted:
                self._non_finite_noted.add(name)
                if self.accelerator.is_main_process:
                    logger.warning(
                        f"Diagnostic metric {name} is {value} at step {self.state.global_step} ({mode}); it is logged "
                        "as it is and training goes on (warned once per metric)."
                    )

    # --- the sequence KL on the policy's own samples, at evaluation ------------------------------------------
    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """`Trainer.get_eval_dataloader`; remembers the evaluation set it was built from (the sequence KL's prompts).

        The set is taken before accelerate shards it: every process then reads the same first rows.
        """
        source = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):  # a name in a dict of evaluation sets
            source = self.eval_dataset.get(eval_dataset) if isinstance(self.eval_dataset, dict) else None
        dataloader = super().get_eval_dataloader(eval_dataset)
        self._eval_source = (dataloader, source)
        return dataloader

    def evaluation_loop(self, dataloader: Any, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.evaluation_loop`, then the sampled sequence KL on this evaluation set's prompts."""
        output = super().evaluation_loop(dataloader, *args, **kwargs)
        if self.kl.sequence_prompts > 0 and self._kl_sequence_off is None:
            remembered = getattr(self, "_eval_source", None)
            if remembered is not None and remembered[0] is dataloader:
                dataset = remembered[1]
            else:  # `predict`, or a dataloader built elsewhere: the one it reads, unwrapped
                dataset = _unwrapped(getattr(dataloader, "dataset", None))
            prompts = _eval_prompts(dataset, self.kl.sequence_prompts, self.PROMPT_COLUMN)
            prefix = kwargs.get("metric_key_prefix", args[3] if len(args) > 3 else "eval")
            if isinstance(prompts, str):
                self._note_sequence_kl_off(str(prefix), prompts)
            elif prompts:
                try:
                    self._log_sequence_kl(prompts)
                except ValueError as exc:  # the sampler refused these prompts (e.g. longer than the context)
                    # A diagnostic never stops a run. Every process checks the same prompts, so all skip together.
                    self._note_sequence_kl_off(str(prefix), str(exc))
        return output

    def _note_sequence_kl_off(self, prefix: str, reason: str) -> None:
        """Say once per evaluation set, on the main process, why it gets no `kl/sequence`."""
        if prefix in self._sequence_kl_noted:
            return
        self._sequence_kl_noted.add(prefix)
        if self.accelerator.is_main_process:
            logger.warning(
                f"KL monitoring: kl/sequence is not logged for the evaluation set {prefix!r}: {reason}. The other "
                "evaluation metrics are. Set kl_sequence_prompts=0 to silence this."
            )

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

    def _exact_kl_rows(
        self, policy: HiddenCapture, reference: HiddenCapture, mask: torch.Tensor
    ) -> torch.Tensor:
        """The exact token KL summed per row over the positions `mask` `[R, T]` sets.

        Hidden state t scores token t + 1, and `mask` covers the last T + 1 hidden positions but the very last
        (prompt-learning PEFT prepends virtual tokens, so positions are counted from the end).
        """
        seq_len = mask.size(1)
        policy_transform, ref_transform = self._kl_transforms
        from trl_conservative.kl.sharded_head import full_heads

        # The hooks captured the heads during the forward; under ZeRO-3 / FSDP they are sharded again by now.
        # Gathering is collective: every rank computes the exact KL on the same steps.
        heads = [(policy.weight, policy.bias), (reference.weight, reference.bias)]
        # The projection is float32 even inside the trainer's mixed-precision autocast (TRL 0.2x turns bf16 on).
        no_autocast = torch.autocast(device_type=policy.hidden.device.type, enabled=False)
        with no_autocast, full_heads(heads, models=(self.model_wrapped, self.model, self.ref_model)) as whole:
            (policy_weight, policy_bias), (ref_weight, ref_bias) = whole
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


# Rows read, at most, per prompt wanted: a set whose first rows repeat a few prompts (several pairs per prompt) still
# yields its distinct prompts, and a large or streamed set is never read through.
ROWS_PER_PROMPT = 16


def _unwrapped(dataset: Any) -> Any:
    """The dataset an accelerate wrapper (`IterableDatasetShard`, ...) reads from."""
    from accelerate.data_loader import IterableDatasetShard

    while isinstance(dataset, IterableDatasetShard):
        dataset = dataset.dataset
    return dataset


def _first_rows(dataset: Any, limit: int) -> Iterator[Any]:
    """The first `limit` rows of a map-style or iterable dataset, read lazily."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and not isinstance(dataset, Mapping):
        for index in range(min(len(dataset), limit)):
            yield dataset[index]
    else:
        yield from itertools.islice(iter(dataset), limit)


def _eval_prompts(dataset: Any, limit: int, column: str) -> list[list[int]] | str:
    """The first `limit` distinct prompts (token ids in `column`) of a tokenized evaluation set, map-style or
    iterable (`datasets.Dataset`, `datasets.IterableDataset`, a torch dataset of dicts), read from its first
    `limit * ROWS_PER_PROMPT` rows at most; or why there are none (a sentence)."""
    if dataset is None:
        return "the evaluation dataloader exposes no dataset"
    if isinstance(dataset, Mapping):
        return f"the evaluation set is a {type(dataset).__name__} of sets, not one set"
    columns = getattr(dataset, "column_names", None)  # None on an IterableDataset whose features are unknown
    if isinstance(columns, list) and column not in columns:
        return f"its rows have no {column!r} column (columns: {', '.join(map(str, columns))})"
    if isinstance(columns, list) and hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns([column])  # read the prompt ids only
    if not (hasattr(dataset, "__iter__") or hasattr(dataset, "__getitem__")):
        return f"a {type(dataset).__name__} cannot be read row by row"
    prompts: dict[tuple[int, ...], None] = {}
    read = 0
    try:
        for row in _first_rows(dataset, limit * ROWS_PER_PROMPT):
            read += 1
            if not isinstance(row, Mapping) or column not in row:
                keys = f" (keys: {', '.join(map(str, row))})" if isinstance(row, Mapping) else ""
                return f"its rows have no {column!r} column{keys}"
            prompt = tuple(int(t) for t in row[column])
            if prompt:
                prompts.setdefault(prompt, None)
            if len(prompts) >= limit:
                break
    except (TypeError, NotImplementedError) as exc:  # e.g. a torch IterableDataset without __iter__
        return f"its rows could not be read ({type(exc).__name__}: {exc})"
    if not prompts:
        return (
            f"its first {read} rows hold no prompt (empty {column!r})"
            if read
            else "the evaluation set is empty"
        )
    return [list(p) for p in prompts]
