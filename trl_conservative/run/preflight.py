"""The checks `trl-conservative run` makes after parsing and before it writes anything or loads weights.

In order: the resume flags (no contradictions), the folder to resume from (`--resume`: an unfinished end of the run,
else its newest checkpoint; or `--resume_from_checkpoint`), the output folder (`output_dir.py`: writable, not
another run's; a resumed checkpoint must be the same run), the resume itself (`resume.py`: a finished run, missing
optimizer/scheduler/RNG state, settings that differ from the run's), the preference rows (`validate.py`), and,
with the model's tokenizer, prompts that would leave no completion token. Each failure is a
`ConfigError` (exit status 2) and leaves the output folder untouched. `record_run` then writes the run's identity
and run id once the trainer is built and the folder is locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.reliability.checkpoints import resolve_resume
from trl_conservative.reliability.lock import RunLock
from trl_conservative.reliability.output_dir import (
    check_output_dir,
    check_resume,
    checkpoint_stamp,
    new_run_id,
    read_identity,
    write_identity,
)
from trl_conservative.run.settings import identity_of

from .remote_code import custom_code_problem
from .resume import ResumePlan, check_resume_flags, plan_resume, unfinished_end
from .validate import validate_preference_data

__all__ = [
    "Preflight",
    "checkpoint_load_error",
    "claim_output_dir",
    "own_latest_checkpoint",
    "preflight",
    "record_run",
]


@dataclass
class Preflight:
    """What the checks decided: the (possibly row-filtered) data, the checkpoint to resume from, the identity and
    the run id (the resumed run's, or a new one)."""

    data: Any  # run_data.PreferenceData
    resume: str | None
    identity: dict[str, Any]
    run_id: str = ""
    folder_existed: bool = (
        True  # whether output_dir existed before this run (else a refused start removes it)
    )
    plan: ResumePlan | None = (
        None  # how the resume goes on (train on, weights only, or only finish the run's end)
    )


def preflight(
    spec: Any,
    data: Any,
    model_path: str,
    *,
    trust_remote_code: bool,
    revision: str | None = None,
    log: Callable[[str], None] = print,
) -> Preflight:
    """Run every check (see the module docstring); returns the data to train on and the resume checkpoint.

    `trust_remote_code` and `revision` are the run's (`remote_code_allowed`, the model's init arguments).
    """
    training, script = spec.training, spec.script
    output_dir = str(training.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # the main process, the one that takes the lock
        RunLock(output_dir, "").probe()  # a folder another run is using: said first, before any loading
    check_resume_flags(spec)
    latest = bool(getattr(script, "resume", False))
    # --resume: the run's unfinished end (its trained model saved, its report not) comes before its checkpoints.
    unfinished = unfinished_end(output_dir) if latest and not training.resume_from_checkpoint else None
    resume = (
        unfinished[0] if unfinished else resolve_resume(output_dir, training.resume_from_checkpoint, latest)
    )
    identity = identity_of(spec, data.name)
    check_output_dir(
        output_dir,
        identity,
        resuming=resume is not None,
        overwrite=bool(getattr(script, "overwrite_output_dir", False)),
    )
    run_id = None
    plan = None
    if resume is not None:
        if not training.resume_from_checkpoint and unfinished is None:  # the run's own latest checkpoint
            resume = own_latest_checkpoint(output_dir, resume)
        run_id = check_resume(output_dir, resume, identity)
        plan = plan_resume(spec, resume, run_id, scheduler_lrs=_scheduler_lrs)
        resume = plan.source
    if not trust_remote_code:
        error = custom_code_problem(model_path)
        if error is not None:
            raise error
    vision_problem = _vision_data_problem(data, model_path, revision=revision, trust_remote_code=trust_remote_code)
    if vision_problem is not None:
        raise ConfigError(vision_problem)
    drop = bool(getattr(script, "drop_bad_rows", False))
    tokenizer = None
    if training.max_length is not None:
        tokenizer = _tokenizer(model_path, revision=revision, trust_remote_code=trust_remote_code, log=log)
    splits = {
        "train": (data.train, script.dataset_train_split),
        "eval": (data.eval, script.dataset_test_split),
    }
    for attribute, (split, split_name) in splits.items():
        if split is None:
            continue
        checked = validate_preference_data(
            split,
            name=data.name,
            split=split_name,
            tokenizer=tokenizer,
            max_length=training.max_length,
            truncation_mode=training.truncation_mode,
            drop_bad_rows=drop,
            max_prompt_length=getattr(training, "max_prompt_length", None),  # TRL 0.2x
        )
        setattr(data, attribute, checked)
    if plan is not None:
        log(plan.note)
    return Preflight(
        data=data,
        resume=resume,
        identity=identity,
        run_id=run_id or new_run_id(),
        folder_existed=os.path.exists(output_dir),
        plan=plan,
    )


def _scheduler_lrs(checkpoint: str) -> list[float] | None:
    """The base learning rates a checkpoint's `scheduler.pt` holds (plain tensor data only), or None."""
    import pickle

    import torch

    path = os.path.join(checkpoint, "scheduler.pt")
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise checkpoint_load_error(checkpoint, exc) or exc from None
    except (OSError, RuntimeError, ValueError, EOFError):
        return None
    lrs = state.get("base_lrs") if isinstance(state, dict) else None
    return [float(x) for x in lrs] if isinstance(lrs, list) and lrs else None


def own_latest_checkpoint(output_dir: str, latest: str) -> str:
    """The newest complete checkpoint stamped with the run id recorded in `output_dir` (else `latest`).

    After `--overwrite_output_dir` the folder may still hold higher-numbered checkpoints of the replaced run.
    """
    from trl_conservative.reliability.checkpoints import checkpoint_problem, list_checkpoints

    recorded = read_identity(output_dir)
    run_id = recorded.get("run_id") if recorded else None
    if not run_id:
        return latest
    for path in reversed(list_checkpoints(output_dir)):
        stamp = checkpoint_stamp(path)
        if checkpoint_problem(path) is None and stamp is not None and stamp.get("run_id") == run_id:
            return str(path)
    return latest


def _vision_data_problem(data: Any, model_path: str, *, revision: str | None, trust_remote_code: bool) -> str | None:
    """The refusal for image columns beside a text-only model, before its weights load, else None.

    TRL takes a dataset as a vision one when its rows hold `image` or `images`, and refuses it when the model's
    processing class (what `AutoProcessor` loads for it) is a tokenizer, but only once the model is loaded.
    """
    columns = set(getattr(data.train, "column_names", None) or ())
    found = sorted(columns & {"image", "images"})
    if not found:
        return None
    from transformers import AutoProcessor, ProcessorMixin

    try:
        processor = AutoProcessor.from_pretrained(model_path, revision=revision, trust_remote_code=trust_remote_code)  # type: ignore[no-untyped-call]
    except (OSError, ValueError):  # no processor here: TRL will load (and judge) it as it does
        return None
    if isinstance(processor, ProcessorMixin):
        return None
    return (
        f"dataset {data.name!r} has the column {found[0]!r} (TRL trains it as a vision dataset), but {model_path!r} is a "
        f"text-only model: it has no image processor ({type(processor).__name__}). Use a vision-language model, or "
        f"remove the {' and '.join(repr(c) for c in found)} column."
    )


def _tokenizer(
    model_path: str, *, revision: str | None, trust_remote_code: bool, log: Callable[[str], None]
) -> Any:
    """The model's tokenizer, to count prompt tokens; None (check skipped) when it cannot be loaded here."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            model_path,
            revision=revision,
            # Explicitly False, never None: None makes transformers ask on a terminal whether to run remote code.
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        log(
            f"Prompt-length check skipped: the tokenizer of {model_path!r} did not load here ({type(exc).__name__})."
        )
        return None


def record_run(trainer: Any, output_dir: str, identity: dict[str, Any], run_id: str | None = None) -> None:
    """Write the run's identity and id into `output_dir` (main process), so the next run knows whose folder it is."""
    if trainer.is_world_process_zero():
        write_identity(output_dir, identity, run_id)


def claim_output_dir(
    trainer: Any, spec: Any, checked: Preflight, *, log: Callable[[str], None] = print
) -> Any:
    """Lock `output_dir` for this run (main process; `lock.RunLock`), then check the folder again under the lock.

    The second check catches a run that finished in the folder after `preflight` looked. Returns the lock, or None
    on the other processes.
    """
    if not trainer.is_world_process_zero():
        return None
    output_dir = str(spec.training.output_dir)
    lock = RunLock(output_dir, checked.run_id).acquire(log=log)
    try:
        check_output_dir(
            output_dir,
            checked.identity,
            resuming=checked.resume is not None,
            overwrite=bool(getattr(spec.script, "overwrite_output_dir", False)),
        )
    except BaseException:
        lock.release()
        raise
    return lock


def checkpoint_load_error(checkpoint: str | None, exc: Exception) -> ConfigError | None:
    """A one-line `ConfigError` when resuming met a checkpoint file that is not plain tensor data, else None.

    transformers loads a checkpoint's optimizer, scheduler and RNG files with `torch.load(weights_only=True)`,
    which refuses pickled code (`pickle.UnpicklingError`) instead of running it.
    """
    import pickle

    if checkpoint is None or not isinstance(exc, pickle.UnpicklingError):
        return None
    detail = " ".join(str(exc).split())[:200]
    return ConfigError(
        f"Checkpoint {checkpoint!r} holds a file that is not plain tensor data, so it was not loaded (unpickling it "
        f"could run code): {detail}. Resume only from checkpoints you trust, or start a new run."
    )
