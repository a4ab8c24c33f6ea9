"""Find, check and resume from Trainer checkpoints; restore our callbacks' state when resuming.

A checkpoint is a folder `output_dir/checkpoint-N`. `Trainer._save_checkpoint` writes the weights first and
`trainer_state.json` last, so a folder without `trainer_state.json` is a save that was cut off (a crash or
SIGKILL in the middle): `latest_checkpoint` skips it, where transformers' `get_last_checkpoint` would pick it and
fail to resume.

Resuming restores the weights, optimizer, scheduler, RNG states and `trainer_state.json` (global step, log history)
through transformers. Callback state (`ExportableState`, e.g. `KLMonitorCallback`'s consecutive-breach count) is
saved in `trainer_state.json` but restored by transformers only with `restore_callback_states_from_checkpoint=True`,
and then into new callback objects. `restore_callback_states` restores trl-conservative's own callbacks in place
whatever that flag says, provided they were built with the same arguments. `TrainCounters` carries what TRL
counts on the trainer but nobody checkpoints (the `num_tokens` total), so the logged history continues unbroken.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.trainer_callback import ExportableState, TrainerCallback
from transformers.utils import logging

from trl_conservative.errors import ConfigError, TrainingHalted, TrainingInterrupted

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE",
    "WEIGHT_FILES",
    "SettingsStamp",
    "TrainCounters",
    "checkpoint_problem",
    "checkpoint_step",
    "finish_command",
    "halted_message",
    "latest_checkpoint",
    "list_checkpoints",
    "missing_state_files",
    "resolve_resume",
    "restore_callback_states",
    "resume_command",
    "save_trainer_state",
    "stored_attribute",
    "trainer_state_problem",
    "weights_only_view",
]

logger = logging.get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
# What holds the weights in a checkpoint: full model, sharded model, or a PEFT adapter.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step N of a folder named `checkpoint-N`, else None."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be resumed from (missing, not a folder, cut-off save), or None when it can."""
    folder = Path(path)
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "is not a folder"
    if not (folder / TRAINER_STATE).is_file():
        return f"has no {TRAINER_STATE} (the save was cut off, or it is not a Trainer checkpoint)"
    damaged = trainer_state_problem(folder / TRAINER_STATE)
    if damaged is not None:
        return f"has a {TRAINER_STATE} that {damaged}"
    cut_off = _missing_shard(folder)
    if cut_off is not None:
        return cut_off
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not _has_sharded_weights(folder):
        return "holds no model weights"
    from trl_conservative.file_checks import safetensors_problem, torch_archive_problem

    for weights in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(weights) if weights.is_file() else "is a folder, not a file"
        if problem is not None:
            return f"has a weights file {weights.name} that {problem}"
    # The training state a resume loads with torch.load: a damaged file would stop the resume with a torch traceback.
    for name in (*_OPTIMIZER_FILES, _SCHEDULER_FILE, "scaler.pt", "pytorch_model.bin"):
        if (folder / name).is_file() and (problem := torch_archive_problem(folder / name)) is not None:
            return f"has a file {name} that {problem}"
    for rng in sorted(folder.glob("rng_state*.pth")):
        if rng.is_file() and (problem := torch_archive_problem(rng)) is not None:
            return f"has a file {rng.name} that {problem}"
    return None


def trainer_state_problem(path: str | os.PathLike[str]) -> str | None:
    """Why transformers could not resume from this `trainer_state.json` (not UTF-8 JSON, a field it does not know,
    a value of the wrong type), else None. `TrainerState.load_from_json` builds the state from every field as is."""
    import dataclasses
    import typing

    from transformers.trainer_callback import TrainerState

    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"cannot be read as UTF-8 JSON ({' '.join(str(exc).split())[:100]})"
    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not an object"
    try:
        hints = typing.get_type_hints(TrainerState)
    except (NameError, TypeError):  # an annotation this transformers cannot evaluate: judge the names only
        hints = {f.name: typing.Any for f in dataclasses.fields(TrainerState)}
    for key, value in data.items():
        if key not in hints:
            return f"has a field {key!r} that transformers' TrainerState does not know"
        # stateful_callbacks is annotated as a list, but transformers saves a mapping of callback name to state.
        expected = dict | None if key == "stateful_callbacks" else hints[key]
        if not _json_fits(value, expected):
            return f"has {key} = {_short(value)} where transformers expects {_type_name(expected)}"
    return None


def _json_fits(value: Any, expected: Any) -> bool:
    import types
    import typing

    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_json_fits(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if expected is list or origin is list:
        return isinstance(value, list) and (not args or all(_json_fits(item, args[0]) for item in value))
    if expected is dict or origin is dict:  # a mapping with text keys; its values are the reader's business
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True  # a type JSON cannot hold (a forward reference): not judged


def _type_name(expected: Any) -> str:
    return expected.__name__ if isinstance(expected, type) else str(expected).replace("typing.", "")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


_SHARD_RE = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.(safetensors|bin)$")


def _missing_shard(folder: Path) -> str | None:
    # A sharded save writes its shards, then the index: a cut-off one lacks the index or a shard.
    for path in sorted(folder.iterdir()):
        match = _SHARD_RE.match(path.name)
        if match is None:
            continue
        stem, total, suffix = match.group(1), int(match.group(3)), match.group(4)
        index = f"{stem}.{suffix}.index.json" if suffix == "safetensors" else f"{stem}.bin.index.json"
        if not (folder / index).is_file():
            return f"has weight shards but no {index} (the save was cut off)"
        for part in range(1, total + 1):
            shard = f"{stem}-{part:05d}-of-{total:05d}.{suffix}"
            if not (folder / shard).is_file():
                return f"lacks the weight shard {shard} (the save was cut off)"
    return None


# The training state beside the weights, as transformers saves and loads it (`Trainer._load_optimizer_and_scheduler`,
# `_load_rng_state`): the optimizer (a file, or a folder under FSDP), the scheduler, the random number generators.
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
_SCHEDULER_FILE = "scheduler.pt"


def missing_state_files(checkpoint: str | os.PathLike[str], world_size: int = 1) -> list[str]:
    """The training-state files a checkpoint lacks (`optimizer.pt`, `scheduler.pt`, `rng_state.pth`), in that order.

    A DeepSpeed checkpoint keeps optimizer and scheduler in its `global_step*` folder.
    """
    folder = Path(checkpoint)
    entries = list(folder.iterdir()) if folder.is_dir() else []
    deepspeed = any(p.is_dir() and p.name.startswith("global_step") for p in entries)
    missing = []
    optimizer = deepspeed or any((folder / name).is_file() for name in _OPTIMIZER_FILES) or any(
        p.is_dir() and "optimizer" in p.name for p in entries
    )
    if not optimizer:
        missing.append(_OPTIMIZER_FILES[0])
    if not deepspeed and not (folder / _SCHEDULER_FILE).is_file():
        missing.append(_SCHEDULER_FILE)
    rng = "rng_state.pth" if world_size <= 1 else "rng_state_0.pth"
    if not (folder / rng).is_file():
        missing.append(rng)
    return missing


def weights_only_view(checkpoint: str | os.PathLike[str]) -> str:
    """A temporary folder that shows `checkpoint` without its optimizer, scheduler and RNG state (symbolic links).

    Resuming from it restores the weights and `trainer_state.json` (step, log history, callbacks) only: the optimizer,
    the learning-rate schedule and the random state start afresh. The caller removes the folder.
    """
    import tempfile

    view = Path(tempfile.mkdtemp(prefix="trl-conservative-weights-only-"))
    for entry in Path(checkpoint).resolve().iterdir():
        name = entry.name
        training_state = (
            name in (*_OPTIMIZER_FILES, _SCHEDULER_FILE, "scaler.pt")
            or name.startswith(("rng_state", "global_step"))
            or (entry.is_dir() and "optimizer" in name)
        )
        if not training_state:
            (view / name).symlink_to(entry, target_is_directory=entry.is_dir())
    return str(view)


def _has_sharded_weights(folder: Path) -> bool:
    # FSDP (SHARDED_STATE_DICT) and DeepSpeed save their own layouts: a `pytorch_model_fsdp_*` folder or a
    # `global_step*` folder.
    return any(p.name.startswith(("pytorch_model_fsdp", "global_step")) for p in folder.iterdir())


def list_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The `checkpoint-N` folders in `output_dir`, by step (complete or not)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if p.is_dir() and (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None; cut-off saves are skipped."""
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning(f"Skipping {path}: it {problem}.")
    return None


def resolve_resume(
    output_dir: str | os.PathLike[str], resume_from_checkpoint: str | None, latest: bool
) -> str | None:
    """The checkpoint a run resumes from: `resume_from_checkpoint`, or with `latest` the newest in `output_dir`.

    Raises `ConfigError` naming the problem and the fix when the checkpoint is unusable or there is none.
    """
    if resume_from_checkpoint:
        if latest:
            raise ConfigError(
                f"Both resume (latest checkpoint) and resume_from_checkpoint={resume_from_checkpoint!r} are set; "
                "give one of them."
            )
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            others = [p.name for p in list_checkpoints(output_dir) if checkpoint_problem(p) is None]
            hint = f" Complete checkpoints in {str(output_dir)!r}: {', '.join(others)}." if others else ""
            raise ConfigError(
                f"Cannot resume from {resume_from_checkpoint!r}: it {problem}.{hint} "
                "Point resume_from_checkpoint at a checkpoint-N folder holding trainer_state.json."
            )
        return str(resume_from_checkpoint)
    if not latest:
        return None
    found = latest_checkpoint(output_dir)
    if found is None:
        raise ConfigError(
            f"resume is set but {str(output_dir)!r} holds no complete checkpoint-N folder. Check output_dir, or "
            "leave resume out to start a new run."
        )
    return str(found)


# Flags a resume command replaces: how the run was started or resumed, and the overwrite that resuming contradicts.
_RUN_START_FLAGS = ("--resume_from_checkpoint", "--resume", "--resume_weights_only", "--overwrite_output_dir")


def _without_start_flags(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    args = list(argv)
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        flag = "--" + arg.split("=", 1)[0].lstrip("-").replace("-", "_")  # --resume-from-checkpoint too
        if arg.startswith("--") and flag in _RUN_START_FLAGS:
            # The switches may be followed by an explicit true/false value; the checkpoint always by a path.
            skip = "=" not in arg and (flag == "--resume_from_checkpoint" or _is_bool_at(args, i + 1))
            continue
        kept.append(arg)
    return kept


def resume_command(
    argv: Sequence[str], checkpoint: str, *, program: str = "trl-conservative run", extra: Sequence[str] = ()
) -> str:
    """The command that resumes a CLI run: its arguments, without earlier resume (and overwrite) flags, plus the
    checkpoint. `extra` is appended (`--overwrite_output_dir false` when the config file sets it)."""
    kept = _without_start_flags(argv)
    return shlex.join([*program.split(), *kept, *extra, "--resume_from_checkpoint", checkpoint])


def finish_command(
    argv: Sequence[str],
    finish_from: str | None = None,
    *,
    program: str = "trl-conservative run",
    extra: Sequence[str] = (),
) -> str:
    """The command that finishes a run whose end was cut off: its arguments plus `--resume true` (which recognises
    the unfinished end in `output_dir`), or `--resume_from_checkpoint` the folder its weights were saved to."""
    if finish_from:
        return resume_command(argv, finish_from, program=program, extra=extra)
    return shlex.join([*program.split(), *_without_start_flags(argv), *extra, "--resume", "true"])


def halted_message(error: TrainingHalted, run_argv: Sequence[str]) -> str:
    """One line for `trl-conservative run`: why training stopped, and the exact command that resumes it."""
    from .end_of_run import RunNotFinished

    extra = tuple(getattr(error, "command_extra", ()))
    if isinstance(error, RunNotFinished):
        text = " ".join(str(error).split())
        return f"{text} Finish the save and the report with: {finish_command(run_argv, error.finish_from, extra=extra)}"
    if isinstance(error, TrainingInterrupted) and error.checkpoint:
        name = signal.Signals(error.signal_number).name
        return (
            f"training interrupted by {name} at step {error.step}: saved checkpoint {error.checkpoint}. "
            f"Resume with: {resume_command(run_argv, error.checkpoint, extra=extra)}"
        )
    text = " ".join(str(error).split())
    if error.checkpoint and not isinstance(error, TrainingInterrupted):
        text += f" Resume (after the fix) with: {resume_command(run_argv, error.checkpoint, extra=extra)}"
    return text


def _is_bool_at(argv: Sequence[str], i: int) -> bool:
    return i < len(argv) and argv[i].lower() in ("true", "false", "1", "0", "yes", "no")


def restore_callback_states(callbacks: Iterable[Any], stored: Mapping[str, Any]) -> list[str]:
    """Restore, in place, trl-conservative callbacks from the `stateful_callbacks` of a `trainer_state.json`.

    Only callbacks defined in this package are touched (others follow transformers'
    `restore_callback_states_from_checkpoint`). A stored state whose `args` differ from the callback's (a
    threshold changed between the runs) is not restored, with a warning. Returns the restored class names.
    """
    restored = []
    by_name: dict[str, list[Any]] = {}
    for callback in callbacks:
        if getattr(callback, "record_only", False):  # a record of the run (SettingsStamp), not state to restore
            continue
        if type(callback).__module__.startswith("trl_conservative.") and hasattr(callback, "state"):
            by_name.setdefault(type(callback).__name__, []).append(callback)
    for name, group in by_name.items():
        data = stored.get(name)
        if data is None:
            continue
        states = data if isinstance(data, list) else [data]
        for callback, state in zip(group, states, strict=False):
            current = callback.state()
            if state.get("args", {}) != current.get("args", {}):
                logger.warning(
                    f"Not restoring {name} from the checkpoint: it was built with {state.get('args')}, now with "
                    f"{current.get('args')}. Its counters start afresh."
                )
                continue
            for attribute, value in state.get("attributes", {}).items():
                setattr(callback, attribute, value)
            restored.append(name)
    return restored


class TrainCounters(TrainerCallback, ExportableState):
    """Run totals kept on the trainer that transformers does not checkpoint: TRL's `num_tokens` count.

    `state()` reads the live value through `read` when the trainer set it; the value is saved in every
    checkpoint's `trainer_state.json` and given back to the trainer on resume.
    """

    def __init__(self, train_tokens: int = 0) -> None:
        self.train_tokens = train_tokens
        self.read: Callable[[], int] | None = None

    def state(self) -> dict[str, Any]:
        if self.read is not None:
            self.train_tokens = int(self.read())
        return {"args": {}, "attributes": {"train_tokens": self.train_tokens}}


def stored_attribute(stored: Mapping[str, Any], callback: type, attribute: str) -> Any:
    """An attribute of the first saved state of `callback` in `stateful_callbacks`, or None."""
    data = stored.get(callback.__name__)
    if isinstance(data, list):
        data = data[0] if data else None
    return (data or {}).get("attributes", {}).get(attribute)


class SettingsStamp(TrainerCallback, ExportableState):
    """Records the run's settings (`run/resume.py: settings_record`) in every checkpoint's `trainer_state.json`.

    A resume compares them with the settings given then. A record, not state: it is never restored
    (`restore_callback_states` skips it), so each checkpoint holds the settings that were in effect when it was saved.
    """

    record_only = True

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def state(self) -> dict[str, Any]:
        return {"args": {"settings": self.settings}, "attributes": {}}


def save_trainer_state(trainer: Any, path: str | os.PathLike[str]) -> None:
    """Write `trainer.state` to `path` (atomically) with every `ExportableState` callback's state brought up to date,
    as `Trainer._save_checkpoint` does: the run stamp, the settings, the pair scores, the KL monitor's counters."""
    from . import atomic

    stored = trainer.state.stateful_callbacks
    if isinstance(stored, dict):
        states: dict[str, list[dict[str, Any]]] = {}
        for callback in [*trainer.callback_handler.callbacks, trainer.control]:
            if isinstance(callback, ExportableState):
                states.setdefault(type(callback).__name__, []).append(callback.state())
        stored.update({name: group[0] if len(group) == 1 else group for name, group in states.items()})
    with atomic.replacing(path) as temp:
        trainer.state.save_to_json(str(temp))
