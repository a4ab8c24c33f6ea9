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
    "TrainCounters",
    "checkpoint_problem",
    "checkpoint_step",
    "halted_message",
    "latest_checkpoint",
    "list_checkpoints",
    "resolve_resume",
    "restore_callback_states",
    "resume_command",
    "stored_attribute",
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
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not _has_sharded_weights(folder):
        return "holds no model weights"
    from trl_conservative.run.files import safetensors_problem

    for weights in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(weights) if weights.is_file() else "is a folder, not a file"
        if problem is not None:
            return f"has a weights file {weights.name} that {problem}"
    return None


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


def resume_command(argv: Sequence[str], checkpoint: str, *, program: str = "trl-conservative run") -> str:
    """The command that resumes a CLI run: its arguments, without earlier resume flags, plus the checkpoint."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in ("--resume_from_checkpoint", "--resume"):
            # `--resume` may be followed by an explicit true/false value.
            skip = "=" not in arg and (flag == "--resume_from_checkpoint" or _next_is_bool(argv, arg))
            continue
        kept.append(arg)
    return shlex.join([*program.split(), *kept, "--resume_from_checkpoint", checkpoint])


def halted_message(error: TrainingHalted, run_argv: Sequence[str]) -> str:
    """One line for `trl-conservative run`: why training stopped, and the exact command that resumes it."""
    if isinstance(error, TrainingInterrupted) and error.checkpoint:
        name = signal.Signals(error.signal_number).name
        return (
            f"training interrupted by {name} at step {error.step}: saved checkpoint {error.checkpoint}. "
            f"Resume with: {resume_command(run_argv, error.checkpoint)}"
        )
    text = " ".join(str(error).split())
    if error.checkpoint and not isinstance(error, TrainingInterrupted):
        text += f" Resume (after the fix) with: {resume_command(run_argv, error.checkpoint)}"
    return text


def _next_is_bool(argv: Sequence[str], arg: str) -> bool:
    i = list(argv).index(arg)
    return i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false", "1", "0", "yes", "no")


def restore_callback_states(callbacks: Iterable[Any], stored: Mapping[str, Any]) -> list[str]:
    """Restore, in place, trl-conservative callbacks from the `stateful_callbacks` of a `trainer_state.json`.

    Only callbacks defined in this package are touched (others follow transformers'
    `restore_callback_states_from_checkpoint`). A stored state whose `args` differ from the callback's (a
    threshold changed between the runs) is not restored, with a warning. Returns the restored class names.
    """
    restored = []
    by_name: dict[str, list[Any]] = {}
    for callback in callbacks:
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
