"""Find and check Trainer checkpoints; pick the one a run resumes from.

A checkpoint is a folder `output_dir/checkpoint-N`. `Trainer._save_checkpoint` writes the weights first and
`trainer_state.json` last, so a folder without `trainer_state.json` is a save that was cut off (a crash or
SIGKILL in the middle): `latest_checkpoint` skips it, where transformers' `get_last_checkpoint` would pick it and
fail to resume.

Resuming restores the weights, optimizer, scheduler, RNG states and `trainer_state.json` (global step, log history)
through transformers; our callbacks' state is restored by `callback_state.py`, and the command a user runs to resume
is written by `run/commands.py`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from transformers.utils import logging

from trl_conservative.errors import ConfigError

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE",
    "WEIGHT_FILES",
    "checkpoint_problem",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "missing_state_files",
    "resolve_resume",
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
    # transformers 4 annotates some fields that default to None without Optional (trial_params, log_history)
    defaults_none = {f.name for f in dataclasses.fields(TrainerState) if f.default is None}
    for key, value in data.items():
        if value is None and key in defaults_none:
            continue
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
