"""`ConservativeDPOTrainer`: TRL's `DPOTrainer` with registry losses, KL monitoring, reliability and a model card.

What is the same on every supported TRL lives here; what each TRL line needs is its adapter, chosen once at import
(`trl_compat.TRL_STACK`): `fused_head.py` on TRL 1.16 (`_compute_loss` and its fused LM head), `dpo_loss_adapter.py`
on TRL 0.23-0.28 (`dpo_loss`). Both compute registry losses from TRL's own forwards (none is repeated), log the
exact token KL (`kl/exact...`) from tapped backbone hidden states and the log-ratio drift signals (`logratio/...`),
and at each evaluation the sequence KL on samples from the policy (`kl/sequence`, see `kl_logging.py`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers.utils import logging

from trl_conservative.kl.settings import KLSettings, kl_settings
from trl_conservative.losses.plan import LossPlan, resolve_losses
from trl_conservative.losses.sigmoid import DPO_CITATION
from trl_conservative.metric_names import EVAL_LOSS, LOSS
from trl_conservative.model_card.collect import card_data_from_trainer
from trl_conservative.model_card.render import render_model_card
from trl_conservative.reliability.callback_state import (
    TrainCounters,
    restore_callback_states,
    stored_attribute,
)
from trl_conservative.reliability.interrupt import InterruptCallback
from trl_conservative.reliability.nan_guard import (
    any_process,
    guard_enabled,
    halt,
    non_finite_parameters,
    non_finite_value,
)

from .kl_availability import check_monitor_metric
from .quiet import known_warnings_silenced
from .reference_free import bind_trainer_args, reference_not_loaded
from .trl_compat import TRL_STACK, DPOTrainer, trains_peft
from .validation import check_training_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
    from peft import PeftConfig, PeftModel
    from transformers import (
        BitsAndBytesConfig,
        EvalPrediction,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        ProcessorMixin,
        TrainerCallback,
    )

    from .trl_compat import DPOConfig

if TYPE_CHECKING or TRL_STACK == "fused_head":
    from .fused_head import FusedHeadAdapter as TRLAdapter
else:
    from .dpo_loss_adapter import DpoLossAdapter as TRLAdapter

__all__ = [
    "TAG",
    "ConservativeDPOTrainer",
]

logger = logging.get_logger(__name__)

TAG = "trl-conservative"


class ConservativeDPOTrainer(TRLAdapter):
    """Drop-in [`~trl.DPOTrainer`] whose `loss_type` entries may name any registered loss.

    Same constructor and config as `trl.DPOTrainer` (a plain `DPOConfig` works; [`ConservativeDPOConfig`]
    adds `loss_params` and the KL settings). Built-in `sigmoid`, `cdpo` and `ipo` and plugin losses are computed
    from the log-probs TRL's own forwards already produced (TRL 1.16: its fused LM head's per-token log-probs;
    TRL 0.23-0.28: the sequence sums `dpo_loss` receives); any other TRL loss name (hinge, robust, ...) runs on
    TRL's own code. `sigmoid` with `label_smoothing > 0` is cDPO, as it was in TRL <= 0.28.
    Logs true KLs between policy and reference: `kl/exact` (with `kl/exact_chosen`, `kl/exact_rejected`) on the
    last step of every `kl_exact_steps` window and on evaluation batches, and at each evaluation `kl/sequence`,
    the sequence KL on completions sampled from the policy; plus the log-ratio drift signals `logratio/...` on
    dataset tokens every step (see `trl_conservative.kl`).
    """

    _tag_names = ["trl", "dpo", TAG]

    # TRL's own constructor parameters, by name, for each TRL line (tests/test_signature.py compares them with the
    # installed `DPOTrainer.__init__`), so `help()`, IDEs and type checkers see them; mypy reads the TRL 1.16 one.
    if TYPE_CHECKING or TRL_STACK == "fused_head":

        def __init__(
            self,
            model: str | PreTrainedModel | PeftModel,
            ref_model: PreTrainedModel | None = None,
            args: DPOConfig | None = None,
            data_collator: Callable[[list[Any]], dict[str, Any]] | None = None,
            train_dataset: Dataset | IterableDataset | None = None,
            eval_dataset: Dataset
            | IterableDataset
            | DatasetDict
            | IterableDatasetDict
            | dict[str, Dataset | IterableDataset]
            | None = None,
            processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
            compute_metrics: Callable[[EvalPrediction], dict[str, Any]] | None = None,
            callbacks: list[TrainerCallback] | None = None,
            optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
            quantization_config: BitsAndBytesConfig | None = None,
            peft_config: PeftConfig | None = None,
        ) -> None:
            self._init_conservative(
                model,
                ref_model,
                args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )

    else:

        def __init__(
            self,
            model: str | torch.nn.Module | PreTrainedModel,
            ref_model: PreTrainedModel | torch.nn.Module | None = None,
            args: DPOConfig | None = None,
            data_collator: Callable[[list[Any]], dict[str, Any]] | None = None,
            train_dataset: Dataset | IterableDataset | None = None,
            eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
            processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
            compute_metrics: Callable[[EvalPrediction], dict[str, Any]] | None = None,
            callbacks: list[TrainerCallback] | None = None,
            optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
            optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
            preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            peft_config: PeftConfig | None = None,
        ) -> None:
            self._init_conservative(
                model,
                ref_model,
                args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                peft_config=peft_config,
            )

    __init__.__doc__ = """Build the trainer: check every setting, then `DPOTrainer.__init__` with the same arguments.

        Args:
            model: the policy to train, a model or a model name or path (loaded with `args.model_init_kwargs`).
            ref_model: the frozen reference; None uses a copy of the initial policy (or, for a PEFT model, the
                model with its adapter disabled), and none is loaded when every selected loss is reference-free.
            args: a `DPOConfig` or [`ConservativeDPOConfig`]; its `loss_type` entries may name any registered loss.
            data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks, optimizers:
                as for `trl.DPOTrainer`.
            quantization_config, peft_config (TRL 1.16), optimizer_cls_and_kwargs,
                preprocess_logits_for_metrics (TRL 0.23-0.28): as for the installed `trl.DPOTrainer`.

        Raises:
            ConfigError: before any weights load, for a setting that cannot work (an unknown loss name, a bad
                `loss_params` value, a KL monitor of a metric that will not be logged...), naming the fix.
        """

    def _init_conservative(self, model: Any, ref_model: Any, args: Any, **kwargs: Any) -> None:
        # Validate every setting before TRL loads any weights: the check `trl-conservative run` makes, same lines.
        self.loss_plan: LossPlan = check_training_settings(args) if args is not None else _default_plan()
        if args is not None:
            _check_monitors(
                args, bind_trainer_args(DPOTrainer.__init__, model, ref_model, args, **kwargs)
            )
        # Every selected loss reference-free (e.g. SimPO): no reference model is loaded or run.
        self.no_reference = not self.loss_plan.needs_reference
        if self.no_reference:  # (check_training_settings refused the settings that need a reference)
            bound = bind_trainer_args(DPOTrainer.__init__, model, ref_model, args, **kwargs)
            with reference_not_loaded(args, bound), known_warnings_silenced():
                super().__init__(model, ref_model, args, **kwargs)
            self._release_reference()
        else:
            with known_warnings_silenced():  # TRL's own use of transformers' deprecated names (quiet.py)
                super().__init__(model, ref_model, args, **kwargs)
        if args is None:
            self.loss_plan = resolve_losses(self.args)
        self._hand_losses_to_trl()
        eps = float(self.label_smoothing)
        if eps > 0 and any(e.name == "sigmoid" for e in self.loss_plan.custom):
            logger.warning(
                f"loss_type='sigmoid' with label_smoothing={eps} trains conservative DPO (cDPO, Mitchell "
                "2023), as TRL <= 0.28 did; TRL >= 0.29 silently ignores label_smoothing here. Use "
                "loss_type='cdpo' to say so explicitly."
            )
        self._set_citations([DPO_CITATION, *self._loss_citations()])
        self.kl: KLSettings = kl_settings(self.args)
        self._kl_exact_off = self._set_up_kl_exact()
        self._kl_sequence_off = self._sequence_kl_unavailable()
        self._non_finite_noted: set[str] = set()
        self._sequence_kl_noted: set[str] = set()  # evaluation sets told why they get no kl/sequence
        self._warn_kl_limits()
        # Reliability (nan_guard.py, interrupt.py, checkpoints.py): the NaN guard and SIGINT/SIGTERM checkpoints.
        self.nan_guard = guard_enabled(self.args, "nan_guard")
        self._interrupt = InterruptCallback() if guard_enabled(self.args, "save_on_interrupt") else None
        if self._interrupt is not None:
            self.add_callback(self._interrupt)
        if hasattr(self, "_total_train_tokens"):
            # TRL 1.x's running token count, which it does not checkpoint. TRL 0.2x counts none: nothing to carry,
            # and a checkpointed 0 would be a made-up count.
            self.add_callback(TrainCounters())
            self._point_counters()
        # Each training pair's margins when first trained on, from TRL's own forwards (suspected flips).
        self._start_pair_scores()

    def _release_reference(self) -> None:
        if self.ref_model is not None:
            logger.warning(
                "ref_model is not used: every selected loss is reference-free "
                f"({', '.join(e.name for e in self.loss_plan.entries)}). It was released."
            )
            self.ref_model = None
        self.precompute_ref_logps = False  # zeros are passed instead, batch by batch

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
        if self.is_world_process_zero():
            from trl_conservative.reliability import atomic

            atomic.give_plain_file_modes(saved)  # safetensors writes its files 0600
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

    # --- reliability: NaN guard, SIGINT/SIGTERM, resume (see nan_guard.py, interrupt.py, checkpoints.py) -------
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
        with (
            handlers,
            _eval_on_start_skipped(self.args, bool(resume_from_checkpoint)),
            known_warnings_silenced(),
        ):
            output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)
        if self._interrupt is not None:
            error = self._interrupt.error(self.state.max_steps)
            if error is not None:
                raise error
            if self._interrupt.signal_number is not None and self.is_world_process_zero():
                logger.warning(
                    "A signal arrived after the last optimizer step: training is complete; only the end of the run "
                    "(saving the model and the report files) is left."
                )
        return output

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """`DPOTrainer.evaluate`, without the warnings its user cannot act on (quiet.py)."""
        with known_warnings_silenced():
            return super().evaluate(*args, **kwargs)  # type: ignore[no-any-return]

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.predict`, without the warnings its user cannot act on (quiet.py)."""
        with known_warnings_silenced():
            return super().predict(*args, **kwargs)

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
        self._take_pair_rows(inputs)  # the adapter records this batch's margins under these rows
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.nan_guard:  # before the backward pass and the optimizer step
            self._check_finite(result[0] if return_outputs else result)
        return result

    def _check_finite(self, loss: torch.Tensor) -> None:
        # The loss only: diagnostics (kl/*, logratio/*) never stop training (see `_note_non_finite`).
        training = self._in_training()
        value = non_finite_value(loss)
        found = ((LOSS if training else EVAL_LOSS), value) if value is not None else None
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


def _check_monitors(args: Any, bound: Any) -> None:
    """Refuse a `KLMonitorCallback` among the callbacks that watches a KL measure this setup never logs."""
    from trl_conservative.kl.monitor import KLMonitorCallback

    monitors = [c for c in bound.get("callbacks") or () if isinstance(c, KLMonitorCallback)]
    if not monitors:
        return
    peft = trains_peft(bound)
    for monitor in monitors:
        check_monitor_metric(
            monitor.requested,
            args,
            setting="KLMonitorCallback metric",
            ref_model=bound.get("ref_model") is not None,
            peft=peft,
            any_name=True,
        )


def _default_plan() -> LossPlan:
    from trl import DPOConfig

    with known_warnings_silenced():  # TRL's default gradient_checkpointing=True, under transformers' old name
        return resolve_losses(DPOConfig(output_dir="unused", use_cpu=True, report_to="none"))
