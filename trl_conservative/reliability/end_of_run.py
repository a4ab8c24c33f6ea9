"""The end of a run: once training is over, the trained weights are saved before anything else, and a signal or a
full disk never loses them.

`EndOfRunGuard` holds SIGINT and SIGTERM from the moment training ends (`on_train_end`, still inside `train()`)
until the trained weights are on disk: a signal then only says that the save goes on and the run stops right after
it. Once the weights are saved, a signal stops the run at once (`StopAtEndOfRun`, raised from the handler like
Python's own `KeyboardInterrupt`; every later file is written atomically, so none is left half-written). During
training the guard passes signals to the handlers it replaced (the `InterruptCallback` installs its own inside
`train()`), so training's own Ctrl-C behaviour is unchanged.

`RunNotFinished` is what the runner raises when the end of a run stops (a signal, a full disk): its one line says
where the trained weights are, what is not written yet and how much disk space that needs; the CLI adds the one
command that finishes the save and the report (`trl-conservative run ... --resume true`, or
`--resume_from_checkpoint` for weights saved outside `output_dir`).

The helpers measure what a save needs (`model_bytes`, `free_bytes`) and tell a failed write (`write_error`) from
a bug.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from transformers.trainer_callback import TrainerCallback, TrainerControl, TrainerState
from transformers.training_args import TrainingArguments

from trl_conservative.errors import TrainingHalted

from .atomic import TEMP_PREFIX
from .interrupt import Handler, install_handlers, restore_handlers

__all__ = [
    "FINAL_STAGE",
    "EndOfRunGuard",
    "RunNotFinished",
    "StopAtEndOfRun",
    "free_bytes",
    "human_bytes",
    "model_bytes",
    "write_error",
]

FINAL_STAGE = (
    f"{TEMP_PREFIX}model"  # the hidden folder in output_dir the final model is saved into, then moved up
)

# How a failed write reads when it is not an OSError: safetensors' Rust writer (SafetensorError), torch.save's
# stream writer (RuntimeError).
_WRITE_FAILURES = (
    "no space left on device",
    "os error 28",
    "storagefull",
    "disk quota exceeded",
    "file write failed",
    "read-only file system",
    "input/output error",
)


class RunNotFinished(TrainingHalted):
    """Training finished, but the end of the run (final save, model card, report files) did not.

    Attributes:
        finish_from: `None` when `trl-conservative run ... --resume true` finishes it, else the folder to pass as
            `--resume_from_checkpoint` (weights saved outside `output_dir`).
        exit_status: 128 + the signal number for a signal, else 1.
    """

    def __init__(
        self, message: str, *, finish_from: str | None = None, signal_number: int | None = None
    ) -> None:
        super().__init__(message, checkpoint=finish_from)
        self.finish_from = finish_from
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number if signal_number else 1


class StopAtEndOfRun(BaseException):  # noqa: N818  (a BaseException like KeyboardInterrupt: `except Exception` passes it)
    """Raised by `EndOfRunGuard`'s handler when a signal arrives after the trained weights were saved."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class EndOfRunGuard(TrainerCallback):
    """SIGINT/SIGTERM at the end of a run: held while the trained weights are saved, then a stop at once.

    Modes: `training` (pass each signal on to the handler it replaced), `saving` (from `on_train_end` until
    `weights_saved()`: remember the signal, the save goes on) and `saved` (raise `StopAtEndOfRun`).

    Attributes:
        pending: the first signal held while saving (None if none).
        saving_what: how the messages name the save in progress ("the trained model (2.6 MB) to 'out'").
    """

    def __init__(self) -> None:
        self.mode = "training"
        self.pending: int | None = None
        self.saving_what = "the trained model"
        self.waiting_for: str | None = None  # set while the weights wait in memory for disk space
        self.main_process = True
        self._previous: dict[int, Handler] = {}

    @contextlib.contextmanager
    def installed(self, *, main_process: bool = True) -> Iterator[EndOfRunGuard]:
        """Handle SIGINT and SIGTERM inside the block (main thread only); the previous handlers come back after."""
        self.main_process = main_process
        previous = install_handlers(self._handle)
        if previous is None:  # not the main thread
            yield self
            return
        self._previous = previous
        try:
            yield self
        finally:
            restore_handlers(self._previous)
            self._previous = {}

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.saving()
        return control

    def saving(self) -> None:
        """From here until `weights_saved()`, signals wait for the trained weights to be on disk."""
        if self.mode == "training":
            self.mode = "saving"

    def weights_saved(self) -> None:
        """The trained weights are on disk: a signal held meanwhile, or any later one, stops the run now."""
        self.mode = "saved"
        if self.pending is not None:
            raise StopAtEndOfRun(self.pending)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.mode == "training":  # as if this guard were not there
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.mode == "saved":
            raise StopAtEndOfRun(signum)
        if self.waiting_for is not None:
            self.pending = self.pending or signum
            self._say(
                f"received {name}: no longer waiting for {self.waiting_for}; the trained weights are given up."
            )
        elif self.pending is None:
            self.pending = signum
            self._say(f"received {name}: saving {self.saving_what} first, then stopping.")
        else:
            self._say(
                f"received {name} again: still saving {self.saving_what}; stopping now would lose the training "
                "(kill -9 stops at once)."
            )

    def _say(self, message: str) -> None:
        if self.main_process:
            print(f"trl-conservative: {message}", file=sys.stderr, flush=True)


def write_error(exc: BaseException) -> bool:
    """Whether `exc` is a failed write (a full disk, a quota, a read-only or failing file system), not a bug."""
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _WRITE_FAILURES)


def out_of_space(exc: BaseException) -> bool:
    """Whether a failed write is a full disk or an exhausted quota."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(m in text for m in ("no space left", "os error 28", "storagefull", "disk quota exceeded"))


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free for this user on the file system holding `path` (its nearest existing folder), or None."""
    folder = Path(path)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def model_bytes(trainer: Any) -> int:
    """About how many bytes `trainer.save_model` writes: the trainable adapter of a PEFT model, else every weight."""
    from trl_conservative.trainer.trl_compat import is_peft_model

    model = (
        trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model
    )
    adapter = is_peft_model(model)
    seen: set[int] = set()
    total = 0
    for _, param in model.named_parameters():
        if adapter and not param.requires_grad:
            continue
        key = param.data_ptr()
        if key in seen:  # tied weights are saved once
            continue
        seen.add(key)
        total += param.numel() * param.element_size()
    for _, buffer in model.named_buffers():
        if not adapter:
            total += buffer.numel() * buffer.element_size()
    return total + (1 << 20)  # config, tokenizer, card


def human_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as `df -h`)."""
    if n is None:
        return "an unknown amount"
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
