"""`ConservativeDPOTrainer`: TRL's `DPOTrainer` with registry losses. The one module that touches TRL internals.

TRL 1.16 computes the DPO loss in the private `DPOTrainer._compute_loss`. We keep that method as it is (fused
LM head, reference handling, PEFT, metrics, accelerate) and only:
  1. hand TRL the `loss_type` entries it computes natively (e.g. `hinge`), with their weights;
  2. tap the policy's and the reference's forward outputs while TRL runs (forward hooks), so no forward is
     repeated and no `[2B, L, V]` logits tensor is built;
  3. add our registry losses, computed from the tapped per-token log-probs, to TRL's loss;
  4. log the exact token KL between policy and reference (`kl/exact...`, see `kl.py`) from the backbones' final
     hidden states tapped on the steps that compute it, and log-ratio drift signals (`logratio/...`);
  5. at each evaluation, sample completions from the policy and log the sequence KL (`kl/sequence`).
`tests/test_trl_contract.py` fails loudly when the installed TRL no longer has the shape relied on here.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
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
from trl_conservative.kl.settings import KLSettings, kl_settings
from trl_conservative.losses.contract import LossInputs
from trl_conservative.losses.plan import LossPlan, resolve_losses
from trl_conservative.losses.sigmoid import DPO_CITATION
from trl_conservative.metric_names import KL_SEQUENCE, SAMPLED_KL_STDERR, SAMPLED_LENGTH, SAMPLED_TRUNCATED
from trl_conservative.model_card.collect import card_data_from_trainer
from trl_conservative.model_card.render import render_model_card
from trl_conservative.reliability.checkpoints import TrainCounters, restore_callback_states, stored_attribute
from trl_conservative.reliability.interrupt import InterruptCallback
from trl_conservative.reliability.nan_guard import (
    any_process,
    guard_enabled,
    halt,
    non_finite_parameters,
    non_finite_value,
)

from .reference_free import (
    bind_trainer_args,
    check_reference_free_args,
    reference_forward_skipped,
    reference_not_loaded,
    replace_reward_metrics,
    with_zero_reference,
)
from .taps import ForwardTap, HiddenCapture, hook_hidden, tap_forwards
from .trl_compat import DPOTrainer

__all__ = [
    "TAG",
    "ConservativeDPOTrainer",
]

logger = logging.get_logger(__name__)

TAG = "trl-conservative"


class ConservativeDPOTrainer(DPOTrainer):
    """Drop-in [`~trl.DPOTrainer`] whose `loss_type` entries may name any registered loss.

    Same constructor and config as `trl.DPOTrainer` (a plain `DPOConfig` works; [`ConservativeDPOConfig`]
    adds `loss_params` and the KL settings). Built-in `sigmoid`, `cdpo` and `ipo` and plugin losses are computed
    from the per-token log-probs TRL's fused LM head already produced; any other TRL loss name (hinge, robust,
    ...) runs on TRL's own code. `sigmoid` with `label_smoothing > 0` is cDPO, as it was in TRL <= 0.28.
    Logs true KLs between policy and reference: `kl/exact` (with `kl/exact_chosen`, `kl/exact_rejected`) on the
    last step of every `kl_exact_steps` window and on evaluation batches, and at each evaluation `kl/sequence`,
    the sequence KL on completions sampled from the policy; plus the log-ratio drift signals `logratio/...` on
    dataset tokens every step (see `trl_conservative.kl`).
    """

    _tag_names = ["trl", "dpo", TAG]

    def __init__(
        self, model: Any, ref_model: Any = None, args: Any = None, *pargs: Any, **kwargs: Any
    ) -> None:
        # Validate the loss settings before TRL loads any weights.
        self.loss_plan: LossPlan = resolve_losses(args) if args is not None else _default_plan()
        # Every selected loss reference-free (e.g. SimPO): no reference model is loaded or run.
        self.reference_free = not self.loss_plan.needs_reference
        if self.reference_free:
            check_reference_free_args(args, [e.name for e in self.loss_plan.entries])
            bound = bind_trainer_args(DPOTrainer.__init__, model, ref_model, args, *pargs, **kwargs)
            with reference_not_loaded(args, bound):
                super().__init__(model, ref_model, args, *pargs, **kwargs)
            self._release_reference()
        else:
            super().__init__(model, ref_model, args, *pargs, **kwargs)
        if args is None:
            self.loss_plan = resolve_losses(self.args)
        # TRL's `_compute_loss` loops over these: give it only the terms it computes natively.
        self.loss_types = [e.name for e in self.loss_plan.native]
        self.loss_weights = [e.weight for e in self.loss_plan.native]
        eps = float(self.label_smoothing)
        if eps > 0 and any(e.name == "sigmoid" for e in self.loss_plan.custom):
            logger.warning(
                f"loss_type='sigmoid' with label_smoothing={eps} trains conservative DPO (cDPO, Mitchell "
                "2023), as TRL <= 0.28 did; TRL >= 0.29 silently ignores label_smoothing here. Use "
                "loss_type='cdpo' to say so explicitly."
            )
        self._paper = {**self._paper, "citation": "\n\n".join([DPO_CITATION, *self._loss_citations()])}
        self.kl: KLSettings = kl_settings(self.args)
        self._kl_exact_off = self._kl_exact_unavailable()
        self._kl_sequence_off = self._sequence_kl_unavailable()
        self._non_finite_noted: set[str] = set()
        self._warn_kl_limits()
        # Reliability (guards.py, interrupt.py, checkpoints.py): the NaN guard and SIGINT/SIGTERM checkpoints.
        self.nan_guard = guard_enabled(self.args, "nan_guard")
        self._interrupt = InterruptCallback() if guard_enabled(self.args, "save_on_interrupt") else None
        if self._interrupt is not None:
            self.add_callback(self._interrupt)
        self.add_callback(TrainCounters())
        self._point_counters()

    def _release_reference(self) -> None:
        if self.ref_model is not None:
            logger.warning(
                "ref_model is not used: every selected loss is reference-free "
                f"({', '.join(e.name for e in self.loss_plan.entries)}). It was released."
            )
            self.ref_model = None
        self.precompute_ref_logps = False  # zeros are passed instead, batch by batch

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        if self.reference_free:  # no selected loss reads reference log-probs: compute none
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _loss_citations(self) -> list[str]:
        return [c for c in dict.fromkeys(self.loss_plan.citations()) if c != DPO_CITATION]

    # --- the model card -----------------------------------------------------------------------------------
    def create_model_card(  # type: ignore[override]  # TRL's signature, not transformers'
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
    ) -> None:
        """Write `output_dir/README.md` on the main process: TRL's card plus loss, settings, metrics and KL.

        TRL calls this before every checkpoint and `push_to_hub` after saving; `save_model` calls it too. Its
        quick start loads the hub id when the model was pushed, else the folder the model was last saved to.
        """
        if dataset_name is not None:
            self._card_dataset_name = dataset_name
        self._write_model_card(str(self.args.output_dir), model_name=model_name, tags=tags)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, then write the card into the saved folder (and into `output_dir`).

        With the NaN guard on, non-finite trained weights are never written: `NonFiniteError` is raised first.
        """
        if self.nan_guard:
            self._check_weights_finite(output_dir, all_processes=_internal_call)
        super().save_model(output_dir, _internal_call)
        saved = os.path.abspath(str(output_dir if output_dir is not None else self.args.output_dir))
        self._card_model_dir = saved
        self._write_model_card(saved)
        if saved != os.path.abspath(str(self.args.output_dir)):  # a checkpoint: output_dir's card shows it
            self._write_model_card(str(self.args.output_dir))

    def _write_model_card(
        self, folder: str, model_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        if not self.is_world_process_zero():
            return
        output_dir = os.path.abspath(str(self.args.output_dir))
        if model_name is None:  # as TRL's `_save_checkpoint` names it
            hub_id = self.args.hub_model_id
            model_name = hub_id.split("/")[-1] if hub_id else os.path.basename(output_dir)
        from trl_conservative.reliability import atomic

        location = str(getattr(self, "_card_model_dir", output_dir))
        if os.path.basename(location).startswith(
            atomic.TEMP_PREFIX
        ):  # `trl-conservative run` saves via a staging
            location = os.path.dirname(location)  # folder inside output_dir, then moves its files up
        data = card_data_from_trainer(
            self,
            model_name=model_name,
            model_location=self.hub_model_id or location,
            dataset_name=getattr(self, "_card_dataset_name", None),
            tags=[tags] if isinstance(tags, str) else (tags or ()),
        )
        atomic.write_text(
            os.path.join(folder, "README.md"), render_model_card(data)
        )  # never a half-written card

    # --- reliability: NaN guard, SIGINT/SIGTERM, resume (see guards.py, interrupt.py, checkpoints.py) ----------
    def train(  # type: ignore[override]
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> Any:
        """`Trainer.train`; SIGINT/SIGTERM save a checkpoint and raise `TrainingInterrupted` naming it.

        On resume, `eval_on_start` is skipped: the run already evaluated at its start, and the log history stays
        that of an uninterrupted run.
        """
        handlers: Any = contextlib.nullcontext()
        if self._interrupt is not None:
            handlers = self._interrupt.installed(main_process=self.is_world_process_zero())
        with handlers, _eval_on_start_skipped(self.args, bool(resume_from_checkpoint)):
            output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)
        if self._interrupt is not None:
            error = self._interrupt.error(self.state.max_steps)
            if error is not None:
                raise error
            if self._interrupt.signal_number is not None and self.is_world_process_zero():
                logger.warning(
                    "A signal arrived after the last optimizer step: training is complete, nothing to resume."
                )
        return output

    def _load_callback_state(self) -> None:
        # transformers restores callback state only with restore_callback_states_from_checkpoint=True, into new
        # objects; ours (KLMonitorCallback's breach count, ...) are always restored, in place.
        stored: Any = self.state.stateful_callbacks or {}  # a dict once loaded (typed as the init list)
        if not self.args.restore_callback_states_from_checkpoint:
            restore_callback_states(self.callback_handler.callbacks, stored)
        super()._load_callback_state()
        tokens = stored_attribute(stored, TrainCounters, "train_tokens")
        if tokens is not None:  # TRL's running `num_tokens` total, which it does not checkpoint itself
            self._total_train_tokens = int(tokens)
        self._point_counters()  # transformers' restore may have replaced the callback

    def _point_counters(self) -> None:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TrainCounters):
                callback.read = lambda: int(getattr(self, "_total_train_tokens", 0))

    def compute_loss(  # type: ignore[override]
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.nan_guard:  # before the backward pass and the optimizer step
            self._check_finite(result[0] if return_outputs else result)
        return result

    def _check_finite(self, loss: torch.Tensor) -> None:
        # The loss only: diagnostics (kl/*, logratio/*) never stop training (see `_note_non_finite`).
        training = self._in_training()
        value = non_finite_value(loss)
        found = (("loss" if training else "eval_loss"), value) if value is not None else None
        if any_process(found is not None, self.accelerator):
            metric, bad = found or ("the loss on another process", float("nan"))
            step = self.state.global_step + 1 if training else self.state.global_step
            phase = "train" if training else "evaluation"
            raise halt(metric, bad, step=step, phase=phase, output_dir=self.args.output_dir)

    def _check_weights_finite(self, output_dir: str | None, *, all_processes: bool) -> None:
        bad = non_finite_parameters(self.accelerator.unwrap_model(self.model).named_parameters())
        if any_process(bool(bad), self.accelerator if all_processes else None):
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            where = bad[0] + more if bad else "on another process"
            raise halt(
                "weights",
                float("nan"),
                step=self.state.global_step,
                phase="saving",
                output_dir=self.args.output_dir,
                what=f"trained weights are NaN or infinite ({where})",
                advice=f"Nothing was written to {output_dir or self.args.output_dir}. Lower learning_rate or "
                "max_grad_norm (a gradient overflowed), or use fp32/bf16 with a loss scaler.",
            )

    # --- the loss -----------------------------------------------------------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        exact = self._kl_exact_due()
        if not self.loss_plan.custom and not self.kl.drift and not exact:
            return super()._compute_loss(model, inputs, return_outputs)
        policy = self.accelerator.unwrap_model(model)
        skip_reference: Any = contextlib.nullcontext()
        if (
            self.reference_free
        ):  # TRL reads zero reference log-probs from the batch instead of running a model
            inputs, skip_reference = with_zero_reference(inputs), reference_forward_skipped(self)
        with tap_forwards(policy, self.ref_model, hidden=exact) as tap, skip_reference:
            result = super()._compute_loss(model, inputs, return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        if self.loss_plan.custom:
            loss = loss + self._custom_loss(self._loss_inputs(inputs, tap))
        if not self.reference_free:
            self._log_kl(inputs, tap, exact=exact)
        return (loss, outputs) if return_outputs else loss

    def _loss_inputs(self, inputs: dict[str, Any], tap: ForwardTap) -> LossInputs:
        completion_mask = inputs["completion_mask"]
        seq_len = completion_mask.size(1) - 1
        # The first policy call is TRL's policy forward (a later one may be the PEFT reference, adapter off).
        logps = tap.policy[0].log_probs[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.reference_free:
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
            inputs = base if not entry.params else _with_params(base, entry.params)
            output = entry.info.loss(inputs)
            if entry is self.loss_plan.custom[0] and not self.loss_plan.native:
                # Log this loss's own rewards (SimPO's differ from TRL's beta * log-ratio).
                mode = "train" if getattr(self.model, "training", False) else "eval"
                replace_reward_metrics(self._metrics[mode], output, self.accelerator.gather)
            total = total + output.losses.mean() * entry.weight
        assert isinstance(total, torch.Tensor)
        return total

    # --- KL monitoring --------------------------------------------------------------------------------------
    def _kl_exact_unavailable(self) -> str | None:
        """Why `kl/exact` cannot be computed in this setup (None when it can, or when it is off)."""
        if self.kl.exact_steps == 0:
            return None
        if self.reference_free:
            return "every selected loss is reference-free, so no reference model is loaded"
        if self.precompute_ref_logps and self.ref_model is None and not _is_peft(self.model):
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
        if self.ref_model is None and not _is_peft(self.model) and self.precompute_ref_logps:
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

    def _in_training(self) -> bool:
        return bool(getattr(self.model, "training", False))

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
        result = summarize_rows(table, max_new_tokens=self.kl.sequence_max_new_tokens)
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


@contextlib.contextmanager
def _eval_on_start_skipped(args: Any, resuming: bool) -> Iterator[None]:
    """Turn `eval_on_start` off for a resumed `train()` (the run evaluated when it started), then restore it."""
    if not (resuming and getattr(args, "eval_on_start", False)):
        yield
        return
    args.eval_on_start = False
    try:
        yield
    finally:
        args.eval_on_start = True


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


def _is_peft(model: Any) -> bool:
    from accelerate.utils import is_peft_model

    return bool(is_peft_model(model))


def _with_params(base: LossInputs, params: Any) -> LossInputs:
    from dataclasses import replace

    return replace(base, params=params)


def _default_plan() -> LossPlan:
    from trl import DPOConfig

    return resolve_losses(DPOConfig(output_dir="unused", use_cpu=True, report_to="none"))
