"""`run_training`: what `trl-conservative run` does once its settings are parsed.

Order matters: every setting was checked when it was parsed (`settings_check.py`); the model path and the dataset
are resolved and checked first (a `ConfigError` leaves the output folder untouched), then the trainer is built (its
errors are one-line `ConfigError`s too), the main process locks `output_dir` for the rest of the run
(`lock.RunLock`) and records the run id, and the trainer trains and saves (the final model through a staging
folder). The main process then writes the model card, `trainer_state.json`, `run_summary.json` and the curves PNG
that the report is rendered from, each atomically (`atomic.py`).
"""

from __future__ import annotations

import inspect
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trl_conservative.demo.embedded import BUILTIN_MODEL
from trl_conservative.errors import ConfigError
from trl_conservative.reliability import atomic
from trl_conservative.reliability.lock import LOCK_FILE
from trl_conservative.reliability.output_dir import IDENTITY_FILE, RunStamp
from trl_conservative.report.summary import STATE_FILE, RunSummary
from trl_conservative.report.suspected_flips import report_suspected_flips

from .args import RunSpec, one_line
from .data import PreferenceData, load_preference_data, resolve_model
from .preflight import (
    checkpoint_load_error,
    claim_output_dir,
    preflight,
    record_run,
    remote_code_allowed,
    remote_code_error,
)
from .settings import kl_monitor_settings, run_settings

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
        return _train_and_report(trainer, spec, data, checked, log=log)
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
    trainer: Any, spec: RunSpec, data: PreferenceData, checked: Any, *, log: Callable[[str], None] = print
) -> RunSummary | None:
    """Train, save the model and write the report files (atomically), with the output folder locked."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    training, script = spec.training, spec.script
    record = Path(str(training.output_dir)) / IDENTITY_FILE
    previous_record = record.read_bytes() if record.is_file() else None
    record_run(trainer, str(training.output_dir), checked.identity, checked.run_id)
    if script.live:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=checked.resume)
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
    runtime = time.monotonic() - started

    # 3. Save the model (every process takes part, e.g. under FSDP/DeepSpeed), then the report's inputs.
    output_dir = Path(str(training.output_dir))
    save_final_model(trainer, output_dir)
    if not trainer.is_world_process_zero():
        return None
    # Label noise from the scores training recorded (an extra pass only with suspected_flips_pass).
    noise, flips, flips_s = report_suspected_flips(
        trainer,
        data.train,
        output_dir,
        top=int(getattr(script, "suspected_flips", 0) or 0),
        after_training=bool(getattr(script, "suspected_flips_pass", False)),
        log=log,
    )
    trainer.label_noise = noise  # the model card states it
    card = output_dir / "README.md"
    trainer.create_model_card(
        model_name=output_dir.name,
        dataset_name=data.name,  # the card links hub ids only; local paths and builtin: names stay plain text
    )
    with atomic.replacing(output_dir / STATE_FILE) as state_file:
        trainer.state.save_to_json(str(state_file))
    summary = RunSummary(
        settings=run_settings(spec, data),
        log_history=list(trainer.state.log_history),
        output_dir=str(output_dir),
        model_dir=str(output_dir),
        model_card=str(card) if card.is_file() else None,
        runtime_s=runtime,
        global_step=trainer.state.global_step,
        max_steps=trainer.state.max_steps,
        suspected_flips=None if flips is None else [f.to_json() for f in flips],
        suspected_flips_s=flips_s,
        label_noise=None if noise is None else noise.to_json(),
    )
    if script.plot:
        from trl_conservative.report.plot import plot_run

        with tempfile.TemporaryDirectory(prefix=atomic.TEMP_PREFIX, dir=output_dir) as stage:
            plot = plot_run(summary, stage)  # drawn aside, then moved over the old PNG in one rename
            if plot is not None:
                plot = atomic.move_into_place(plot, output_dir / plot.name)
        summary.plot = str(plot) if plot else None
    summary.save(output_dir)
    return summary


def _remove_if_empty(folder: Path) -> None:
    """Remove `folder` (created by this run) when it holds nothing but what the run itself left empty."""
    import contextlib
    import shutil

    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*") if p.name != LOCK_FILE):
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def save_final_model(trainer: Any, output_dir: Path) -> None:
    """`trainer.save_model` into a staging folder in `output_dir`, then each file renamed over the previous one.

    An interruption while the weights are written leaves the previous model files complete (and a hidden staging
    folder that the next save replaces), never a half-written `model.safetensors`.
    """
    import shutil

    stage = output_dir / f"{atomic.TEMP_PREFIX}model"
    if trainer.is_world_process_zero() and stage.exists():
        shutil.rmtree(stage)  # left by an interrupted save
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(stage))  # every process takes part (FSDP, DeepSpeed)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        atomic.move_contents_into_place(stage, output_dir)


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
