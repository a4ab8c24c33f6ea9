"""SIGINT/SIGTERM during training: save a checkpoint at the next step boundary, then stop.

`ConservativeDPOTrainer.train()` installs `InterruptCallback`'s handlers for SIGINT and SIGTERM while it trains
(main thread only) and restores the previous handlers afterwards, however training ends. A signal only sets a
flag; at the next optimizer-step end (or evaluation end) the callback sets `control.should_save` and
`control.should_training_stop`, so the Trainer's own checkpoint logic runs on every process (FSDP and DeepSpeed
need all ranks to save). In multi-process runs the flag is all-reduced at each step end, so every rank stops at
the same step even when only one received the signal. `train()` then raises `TrainingInterrupted`, naming the
checkpoint and how to resume; its `exit_status` is 130 for SIGINT and 143 for SIGTERM.

A second SIGINT (or SIGTERM) before the checkpoint is written restores the previous handlers and re-delivers the
signal: Ctrl-C twice stops at once, without saving. Launchers give a grace period before they kill: torchrun
sends SIGTERM to the workers and SIGKILL 30 s later, so a step plus a save must fit in it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import torch
from transformers.trainer_callback import TrainerCallback, TrainerControl, TrainerState
from transformers.training_args import TrainingArguments
from transformers.utils import logging

from trl_conservative.errors import TrainingInterrupted

from .checkpoints import CHECKPOINT_PREFIX, checkpoint_problem

__all__ = [
    "SIGNALS",
    "install_handlers",
    "restore_handlers",
    "Handler",
    "InterruptCallback",
]

logger = logging.get_logger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, FrameType | None], Any] | int | None


def install_handlers(handler: Callable[[int, FrameType | None], Any]) -> dict[int, Handler] | None:
    """Handle SIGINT and SIGTERM with `handler`; the handlers it replaced (for `restore_handlers`), or None outside
    the main thread, where Python cannot set signal handlers (nothing is installed then)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, handler) for sig in SIGNALS}


def restore_handlers(previous: dict[int, Handler]) -> None:
    """Put back the handlers `install_handlers` replaced (the default one where there was none)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class InterruptCallback(TrainerCallback):
    """Turns SIGINT/SIGTERM into "save a checkpoint at the next step boundary and stop".

    Attributes:
        signal_number: the first signal received while training (None if none).
        stopped_at: the global step at which training was stopped for it.
        checkpoint: the checkpoint folder saved for it.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self.stopped_at: int | None = None
        self.checkpoint: str | None = None
        self.main_process = True
        self.training = False
        self._previous: dict[int, Handler] = {}

    # --- the handlers -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self, *, main_process: bool = True) -> Iterator[InterruptCallback]:
        """Handle SIGINT and SIGTERM inside the block; restore the previous handlers on exit.

        Outside the main thread Python cannot set signal handlers: the block then runs without them.
        """
        self.signal_number, self.stopped_at, self.checkpoint = None, None, None
        self.main_process = main_process
        previous = install_handlers(self._handle)
        if previous is None:
            logger.info("Not in the main thread: SIGINT/SIGTERM will not save a checkpoint.")
            yield self
            return
        self._previous = previous
        try:
            yield self
        finally:
            self._restore()

    def _restore(self) -> None:
        restore_handlers(self._previous)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_number is not None:  # the second one: stop now, as if we had never been here
            self._say(f"received {name} again: stopping at once, without saving.")
            previous = self._previous.get(signum)
            self._restore()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            return
        self.signal_number = signum
        again = "Ctrl-C" if signum == signal.SIGINT else name
        self._say(
            f"received {name}: saving a checkpoint at the end of this step, then stopping "
            f"({again} again stops at once, without saving)."
        )

    def _say(self, message: str) -> None:
        if self.main_process:
            print(f"trl-conservative: {message}", file=sys.stderr, flush=True)

    # --- the callback -------------------------------------------------------------------------------------
    def requested(self, args: TrainingArguments) -> bool:
        """Whether any process received a signal; every process must call this at the same points."""
        local = self.signal_number is not None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return local
        if torch.distributed.get_world_size() <= 1:
            return local
        flag = torch.tensor([int(self.signal_number or 0)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not local and int(flag.item()):
            self.signal_number = int(flag.item())  # another rank's signal: stop with it
        return bool(flag.item())

    def _stop(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> TrainerControl:
        # The same decision on every process (same step, same flag), so the collective in `requested` matches up.
        if self.stopped_at is None and state.global_step > 0 and self.requested(args):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.main_process = state.is_world_process_zero
        self.training = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.training = False
        return control

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        return self._stop(args, state, control)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        # An evaluation inside training is followed by the save check of the same step: stop there, not a step later.
        return self._stop(args, state, control) if self.training else control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self.stopped_at == state.global_step:
            self.checkpoint = os.path.join(str(args.output_dir), f"{CHECKPOINT_PREFIX}-{state.global_step}")
        return control

    # --- after training -------------------------------------------------------------------------------------
    def error(self, max_steps: int | None = None) -> TrainingInterrupted | None:
        """The `TrainingInterrupted` to raise after `train()` returned, or None when no signal stopped it."""
        if self.signal_number is None or self.stopped_at is None:
            return None
        name = signal.Signals(self.signal_number).name
        of = f" of {max_steps}" if max_steps else ""
        checkpoint = self.checkpoint
        if checkpoint is not None and checkpoint_problem(checkpoint) is None:
            saved = f"saved checkpoint {checkpoint}. Resume with trainer.train(resume_from_checkpoint={checkpoint!r})."
        else:
            # e.g. save_total_limit=1 with load_best_model_at_end: transformers keeps only the best checkpoint.
            saved = f"its checkpoint {checkpoint} was not kept (see save_total_limit); resume from the latest one left."
            checkpoint = None
        return TrainingInterrupted(
            f"Training interrupted by {name} at step {self.stopped_at}{of}: {saved}",
            signal_number=self.signal_number,
            step=self.stopped_at,
            checkpoint=checkpoint,
        )
