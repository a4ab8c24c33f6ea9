"""`run_training`: what `trl-conservative run` does once its settings are parsed.

Order matters: every setting was checked when it was parsed (`settings_check.py`); the model path and the dataset
are resolved and checked first (a `ConfigError` leaves the output folder untouched), then the trainer is built (its
errors are one-line `ConfigError`s too), the main process locks `output_dir` for the rest of the run
(`lock.RunLock`) and records the run id, and the trainer trains.

The end of the run (`end_of_run.py`) saves the trained weights first: into a staging folder, with the run's
`trainer_state.json` written last, whose files are then renamed into place. SIGINT/SIGTERM wait for that save; a
failed save (a full disk) is tried again when there is room, else the weights go to another file system with room,
else the run holds them in memory and waits for space. Then the main process writes the suspected-flip list, the
model card, `trainer_state.json`, the curves PNG and last `run_summary.json`, each atomically (`atomic.py`); a signal
or a failed write there stops the run with one line naming what is missing and the command that finishes it.
`--resume true` recognises such an unfinished end (`resume.py`) and finishes it without training.
"""

from __future__ import annotations

import inspect
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trl_conservative.demo.embedded import BUILTIN_MODEL
from trl_conservative.errors import ConfigError, TrainingHalted, TrainingInterrupted
from trl_conservative.reliability import atomic
from trl_conservative.reliability.checkpoints import SettingsStamp, weights_only_view
from trl_conservative.reliability.end_of_run import EndOfRunGuard
from trl_conservative.reliability.lock import LOCK_FILE
from trl_conservative.reliability.output_dir import IDENTITY_FILE, RunStamp
from trl_conservative.report.summary import RunSummary

from .args import RunSpec, one_line
from .data import PreferenceData, load_preference_data, resolve_model
from .finish import end_of_run, finish_cut_off_end, save_final_model
from .preflight import (
    checkpoint_load_error,
    claim_output_dir,
    preflight,
    record_run,
    remote_code_allowed,
    remote_code_error,
)
from .resume import ResumePlan, settings_record
from .settings import kl_monitor_settings

__all__ = [
    "run_training",
    "save_final_model",
    "start_error",
]


def run_training(
    spec: RunSpec, *, log: Callable[[str], None] = print, console: Any = None
) -> RunSummary | None:
    """Train as configured; returns the run's summary on the main process, None on the others."""
    from trl import get_peft_config, get_quantization_config

    from trl_conservative.report.live import LiveProgressCallback
    from trl_conservative.trainer.trainer import ConservativeDPOTrainer

    training, script, model_args = spec.training, spec.script, spec.model
    if str(model_args.model_name_or_path) == BUILTIN_MODEL:
        # The tiny builtin model gains nothing from intra-op threads; on a busy 2-core machine one thread is
        # about 2x faster than two (measured: 100 SFT steps 9.7 s vs 21.4 s). Not so the pretrained one.
        import torch

        torch.set_num_threads(1)
    for note in spec.notes:  # settings read under another name on the installed transformers
        log(note)
    # 1. Validate everything a user can get wrong, before anything is written to output_dir.
    model_path = resolve_model(str(model_args.model_name_or_path), log=log)
    data = load_preference_data(script, training)
    peft_config = get_peft_config(model_args)
    quantization_config = get_quantization_config(model_args)
    init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    trainer_kwargs = _trainer_kwargs(spec, init_kwargs, quantization_config)
    user_kwargs: dict[str, Any] = dict(training.model_init_kwargs or {})  # type: ignore[arg-type]
    training.model_init_kwargs = {**init_kwargs, **user_kwargs}
    # Resume checkpoint, output folder, dataset rows and prompt lengths (preflight.py).
    checked = preflight(spec, data, model_path, log=log)
    data = checked.data
    model: Any = model_path
    trusted_on_0x = not hasattr(training, "trust_remote_code") and remote_code_allowed(spec)
    if trusted_on_0x:
        # TRL 0.24-0.28 load a model path's config without trust_remote_code and take its class from transformers
        # by name, and TRL 0.2x loads the tokenizer without it: a model with its own code loads here instead.
        from transformers import AutoTokenizer

        trainer_kwargs["processing_class"] = AutoTokenizer.from_pretrained(
            model_path, revision=model_args.model_revision, trust_remote_code=remote_code_allowed(spec)
        )

    # 2. Build and train.
    # TRL 1.16 calls transformers' deprecated `is_gradient_checkpointing`: noise for a user, not their setting.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    callbacks: list[Any] = [LiveProgressCallback(console)] if script.live else []
    callbacks.append(RunStamp(checked.run_id, checked.identity))  # the run id in every checkpoint
    callbacks.append(SettingsStamp(settings_record(spec)))  # and the settings a resume is compared with
    guard = EndOfRunGuard()  # signals wait while the trained weights are saved (on_train_end onwards)
    callbacks.append(guard)
    monitor = kl_monitor_settings(script)
    if monitor is not None:
        from trl_conservative.kl.monitor import KLMonitorCallback

        callbacks.append(KLMonitorCallback(**monitor))
    init_record = training.model_init_kwargs
    try:
        if trusted_on_0x:
            model = load_model_by_path(model_path, init_record, trust_remote_code=remote_code_allowed(spec))
            training.model_init_kwargs = None  # used: not "ignored", as TRL warns on an instantiated model
        trainer = ConservativeDPOTrainer(
            model=model,
            args=training,
            train_dataset=data.train,
            eval_dataset=data.eval,
            peft_config=peft_config,
            callbacks=callbacks,
            **trainer_kwargs,
        )
    except OSError as exc:  # transformers' way of saying a model or tokenizer could not be found or read
        raise ConfigError(
            f"Could not load model {model_args.model_name_or_path!r}: {one_line(str(exc))[:300]} "
            "Fix model_name_or_path."
        ) from None
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, ImportError) as exc:
        # custom model code without --trust_remote_code true, or a setting TRL, PEFT or transformers refuse
        error = remote_code_error(str(model_args.model_name_or_path), exc)
        if error is None:
            error = ConfigError(
                f"These settings could not build the trainer: {type(exc).__name__}: {one_line(str(exc))[:300]} "
                "Fix the setting it names (`trl-conservative run --help` lists them)."
            )
        raise error from None
    finally:
        training.model_init_kwargs = init_record  # the run's record of them
    lock = claim_output_dir(trainer, spec, checked, log=log)  # held until the report is written
    try:
        return _train_and_report(trainer, spec, data, checked, guard, log=log)
    except TrainingHalted as exc:
        if getattr(
            script, "overwrite_output_dir", False
        ):  # a config file setting it would contradict --resume
            exc.command_extra = ("--overwrite_output_dir", "false")  # type: ignore[attr-defined]
        raise
    finally:
        if lock is not None:
            lock.release()


def _trainer_kwargs(spec: RunSpec, init_kwargs: dict[str, Any], quantization_config: Any) -> dict[str, Any]:
    """The trainer's keyword arguments the two TRL lines take in different places; `init_kwargs` (the model's
    `from_pretrained` arguments) is completed in place.

    TRL 1.16 takes `quantization_config` as a trainer argument and `trust_remote_code` in its config. TRL 0.2x
    has neither: both go to the model's `from_pretrained` (with a k-bit device map, as TRL 0.2x's `trl dpo` does;
    the runner loads the tokenizer itself when code is trusted).
    """
    import trl

    kwargs: dict[str, Any] = {}
    if "quantization_config" in inspect.signature(trl.DPOTrainer.__init__).parameters:
        kwargs["quantization_config"] = quantization_config
    elif quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
        init_kwargs["device_map"] = trl.get_kbit_device_map()  # type: ignore[attr-defined]  # TRL 0.2x only
    if not hasattr(spec.training, "trust_remote_code"):
        init_kwargs["trust_remote_code"] = remote_code_allowed(spec)
    return kwargs


def load_model_by_path(
    model_path: str, init_kwargs: dict[str, Any] | None, *, trust_remote_code: bool
) -> Any:
    """The causal LM at `model_path`, loaded as TRL 0.23 loads a path: `AutoModelForCausalLM.from_pretrained` with
    the model's init arguments, a dtype name turned into the torch dtype.

    The run calls it on TRL 0.2x with --trust_remote_code true, where TRL 0.24-0.28's own loader cannot run the
    model's code.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {k: v for k, v in (init_kwargs or {}).items() if k != "trust_remote_code"}
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype, None)
        if not isinstance(kwargs["dtype"], torch.dtype):
            raise ConfigError(
                f"dtype {dtype!r} is not a torch dtype. Use auto, bfloat16, float16 or float32."
            )
    return AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs)


def _train_and_report(
    trainer: Any,
    spec: RunSpec,
    data: PreferenceData,
    checked: Any,
    guard: EndOfRunGuard,
    *,
    log: Callable[[str], None] = print,
) -> RunSummary | None:
    """Train (or only finish a run whose end was cut off), then the end of the run, with the output folder locked."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    training, script = spec.training, spec.script
    record = Path(str(training.output_dir)) / IDENTITY_FILE
    previous_record = record.read_bytes() if record.is_file() else None
    record_run(trainer, str(training.output_dir), checked.identity, checked.run_id)
    if script.live:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    plan: ResumePlan | None = getattr(checked, "plan", None)
    with guard.installed(main_process=trainer.is_world_process_zero()):
        if plan is not None and plan.finish:
            return finish_cut_off_end(trainer, spec, data, plan, guard, log=log)
        view = weights_only_view(checked.resume) if plan is not None and plan.weights_only else None
        started = time.monotonic()
        in_checkpoint = None
        try:
            trainer.train(resume_from_checkpoint=view or checked.resume)
        except TrainingInterrupted as exc:
            if trainer.state.global_step < trainer.state.max_steps:
                raise
            # The signal arrived in the last step or its evaluation: training is complete, its checkpoint saved.
            guard.pending = guard.pending or exc.signal_number
            in_checkpoint = exc.checkpoint
        except Exception as exc:  # a checkpoint file that is not plain tensors: refused, not unpickled
            error = checkpoint_load_error(checked.resume, exc) or start_error(trainer, checked.resume, exc)
            if error is None:
                raise
            if trainer.is_world_process_zero():  # a refused setting leaves the folder as it was
                if previous_record is None:
                    record.unlink(missing_ok=True)
                else:
                    atomic.write_bytes(record, previous_record)
                if not checked.folder_existed:
                    _remove_if_empty(record.parent)
            raise error from None
        finally:
            if view is not None:
                shutil.rmtree(view, ignore_errors=True)
        runtime = time.monotonic() - started
        guard.saving()
        guard.pending = guard.pending or _signal_after_training(trainer)
        return end_of_run(
            trainer,
            spec,
            data,
            guard,
            runtime=runtime,
            run_id=checked.run_id,
            in_checkpoint=in_checkpoint,
            log=log,
        )


def _signal_after_training(trainer: Any) -> int | None:
    """A signal the `InterruptCallback` took after its last chance to stop training (the run then ends normally)."""
    from trl_conservative.reliability.interrupt import InterruptCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, InterruptCallback) and callback.signal_number is not None:
            return int(callback.signal_number)
    return None


def _remove_if_empty(folder: Path) -> None:
    """Remove `folder` (created by this run) when it holds nothing but what the run itself left empty."""
    import contextlib
    import shutil

    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*") if p.name != LOCK_FILE):
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def start_error(trainer: Any, resume: str | None, exc: Exception) -> ConfigError | None:
    """A one-line `ConfigError` for an error raised before the first optimizer step of a new run, else None.

    transformers builds the optimizer, the scheduler and the data loader only in `train()`, so settings they refuse
    (`lr_scheduler_kwargs` a schedule does not take, malformed `optim_args`, ...) fail there, not when the trainer
    is built. A failure after the first step (or while resuming) is not a setting problem and stays a traceback.
    """
    if resume is not None or trainer.state.global_step > 0:
        return None
    if not isinstance(exc, (ValueError, TypeError, KeyError, RuntimeError, AttributeError, OSError)):
        return None
    return ConfigError(
        f"These settings could not start training: {type(exc).__name__}: {one_line(str(exc))[:300]} Fix the "
        "setting it names (`trl-conservative run --help` lists them)."
    )
