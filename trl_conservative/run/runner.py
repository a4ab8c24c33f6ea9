"""`run_training`: what `trl-conservative run` does once its settings are parsed: plan, then act.

Order matters: every setting was checked when it was parsed (`settings_check.py`); `plan.plan_run` resolves and
checks the model path, the dataset, the resume and the rows (a `ConfigError` leaves the output folder untouched);
`execute` then builds the trainer (what transformers, TRL or PEFT refuse there is a one-line `ConfigError` too;
`refusals.py`), the main process locks `output_dir` for the rest of the run (`lock.RunLock`) and records the run id,
and the trainer trains.

The end of the run (`end_of_run.py`) saves the trained weights first: into a staging folder, with the run's
`trainer_state.json` written last, whose files are then renamed into place. SIGINT/SIGTERM wait for that save; a
failed save (a full disk) is tried again when there is room, else the weights go to another file system with room,
else the run holds them in memory and waits for space. Then the main process writes the suspected-flip list, the
model card, `trainer_state.json`, the curves PNG and last `run_summary.json`, each atomically (`atomic.py`); a signal
or a failed write there stops the run with one line naming what is missing and the command that finishes it.
`--resume true` recognises such an unfinished end (`resume.py`) and finishes it without training.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trl_conservative.errors import ConfigError, TrainingHalted, TrainingInterrupted
from trl_conservative.reliability import atomic
from trl_conservative.reliability.checkpoints import weights_only_view
from trl_conservative.reliability.lock import LOCK_FILE
from trl_conservative.reliability.output_dir import IDENTITY_FILE
from trl_conservative.report.summary import RunSummary

from .args import RunSpec, one_line
from .finish import end_of_run, finish_cut_off_end, save_final_model
from .plan import RunPlan, plan_run
from .preflight import checkpoint_load_error, claim_output_dir, record_run
from .refusals import raised_here, refused_by_library
from .remote_code import remote_code_error
from .resume import ResumePlan

__all__ = [
    "build_trainer",
    "execute",
    "run_training",
    "save_final_model",
    "start_error",
]


def run_training(
    spec: RunSpec, *, log: Callable[[str], None] = print, console: Any = None
) -> RunSummary | None:
    """Train as configured; returns the run's summary on the main process, None on the others."""
    return execute(plan_run(spec, log=log, console=console), log=log)


def execute(plan: RunPlan, *, log: Callable[[str], None] = print) -> RunSummary | None:
    """Act on `plan`: build the trainer, lock `output_dir` (main process), train, and write the end of the run."""
    spec = plan.spec
    with _torch_threads(plan.torch_threads):
        trainer = build_trainer(plan)
        lock = claim_output_dir(trainer, spec, plan.checked, log=log)  # held until the report is written
        try:
            return _train_and_report(trainer, plan, log=log)
        except TrainingHalted as exc:
            if getattr(
                spec.script, "overwrite_output_dir", False
            ):  # a config file setting it would contradict --resume
                exc.command_extra = ("--overwrite_output_dir", "false")  # type: ignore[attr-defined]
            raise
        finally:
            if lock is not None:
                lock.release()


def build_trainer(plan: RunPlan) -> Any:
    """The `ConservativeDPOTrainer` of `plan`; what transformers, TRL or PEFT refuse while building it is one line."""
    from trl_conservative.trainer.trainer import ConservativeDPOTrainer

    training, source = plan.spec.training, plan.model
    kwargs = dict(plan.trainer_kwargs)
    model: Any = source.path
    # TRL 0.2x warns of model_init_kwargs given with a model instance (they were used here, not ignored).
    training.model_init_kwargs = None if source.load_here else source.init_kwargs
    try:
        if source.load_here:
            # TRL 0.24-0.28 load a model path's config without trust_remote_code and take its class from transformers
            # by name, and TRL 0.2x loads the tokenizer without it: a model with its own code loads here instead.
            from transformers import AutoTokenizer

            kwargs["processing_class"] = AutoTokenizer.from_pretrained(
                source.path,
                revision=source.init_kwargs.get("revision"),
                trust_remote_code=source.trust_remote_code,
            )
            model = load_model_by_path(
                source.path, source.init_kwargs, trust_remote_code=source.trust_remote_code
            )
        return ConservativeDPOTrainer(
            model=model,
            args=training,
            train_dataset=plan.data.train,
            eval_dataset=plan.data.eval,
            peft_config=plan.peft_config,
            callbacks=plan.callbacks,
            **kwargs,
        )
    except ConfigError:
        raise
    except OSError as exc:  # transformers' way of saying a model or tokenizer could not be found or read
        if raised_here(exc):
            raise
        raise ConfigError(
            f"Could not load model {source.name!r}: {one_line(str(exc))[:300]} Fix model_name_or_path."
        ) from None
    except (ValueError, TypeError, ImportError) as exc:
        # custom model code without --trust_remote_code true, or a setting TRL, PEFT or transformers refuse
        error = remote_code_error(source.name, exc)
        if error is None and refused_by_library(exc, (ValueError, TypeError, ImportError)):
            error = ConfigError(
                f"These settings could not build the trainer: {type(exc).__name__}: {one_line(str(exc))[:300]} "
                "Fix the setting it names (`trl-conservative run --help` lists them)."
            )
        if error is None:
            raise
        raise error from None
    finally:
        training.model_init_kwargs = source.init_kwargs  # the run's record of them


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (None: unchanged), restored after it."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    trainer: Any, plan: RunPlan, *, log: Callable[[str], None] = print
) -> RunSummary | None:
    """Train (or only finish a run whose end was cut off), then the end of the run, with the output folder locked."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    spec, data, checked, guard = plan.spec, plan.data, plan.checked, plan.guard
    training, script = spec.training, spec.script
    record = Path(str(training.output_dir)) / IDENTITY_FILE
    previous_record = record.read_bytes() if record.is_file() else None
    record_run(trainer, str(training.output_dir), checked.identity, checked.run_id)
    if script.live:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    resume: ResumePlan | None = checked.plan
    with guard.installed(main_process=trainer.is_world_process_zero()):
        if resume is not None and resume.finish:
            return finish_cut_off_end(trainer, spec, data, resume, guard, log=log)
        weights_only = resume is not None and resume.weights_only
        view = weights_only_view(checked.resume) if weights_only and checked.resume else None
        started_at = time.monotonic()
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
            error = checkpoint_load_error(checked.resume, exc) or start_error(
                exc, resume=checked.resume, started=plan.started.began
            )
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
        runtime = time.monotonic() - started_at
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
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*") if p.name != LOCK_FILE):
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)


def start_error(exc: Exception, *, resume: str | None, started: bool) -> ConfigError | None:
    """A one-line `ConfigError` for a setting refused while `train()` sets up a new run, else None.

    transformers builds the data loader, the optimizer and the scheduler in `train()`, before `on_train_begin`
    (`started`), so settings they refuse (`lr_scheduler_kwargs` a schedule does not take, malformed `optim_args`, an
    optimizer whose package is missing, ...) fail there, not when the trainer is built. What fails once training has
    begun (a training step: our loss code, the KL logging, running out of memory), an exception raised by this
    package, and any failure while resuming keep their traceback.
    """
    if (
        resume is not None
        or started
        or not refused_by_library(exc, (ValueError, TypeError, ImportError, OSError))
    ):
        return None
    return ConfigError(
        f"These settings could not start training: {type(exc).__name__}: {one_line(str(exc))[:300]} Fix the "
        "setting it names (`trl-conservative run --help` lists them)."
    )
