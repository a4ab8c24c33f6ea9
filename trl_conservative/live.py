"""`LiveProgressCallback`: the live view of a run (step, loss, reward accuracy and margin, the token KL and the
last evaluation's sequence KL, speed, ETA).

Shown on the main process only; it changes nothing in `control`. The Rich part lives in `report.LiveDisplay`,
imported when training starts, so importing this module does not import rich.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from .kl import KL_SEQUENCE

SEQUENCE_KL = f"eval_{KL_SEQUENCE}"  # the live line shows the last evaluation's sequence KL too


class LiveProgressCallback(TrainerCallback):  # type: ignore[misc]
    """Replace the Trainer's tqdm bar with one Rich line updated at every step and log."""

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self._display: Any = None
        self._start = 0.0
        self._metrics: dict[str, float] = {}

    def _status(self, state: Any) -> Any:
        from .report import LiveStatus

        return LiveStatus(
            step=state.global_step,
            max_steps=state.max_steps,
            elapsed_s=time.monotonic() - self._start,
            metrics=dict(self._metrics),
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        from .report import LiveDisplay

        self._start = time.monotonic()
        self._display = LiveDisplay(self.console)
        self._display.start(self._status(state))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._display is not None:
            self._display.update(self._status(state))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self._display is None or not logs:
            return
        for key, value in logs.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (not key.startswith("eval_") or key == SEQUENCE_KL)
            ):
                self._metrics[key] = float(value)  # NaN kept: the live line should show it
        if "loss" in logs:  # a training log (eval and end-of-training logs have no plain "loss")
            self._display.log(self._status(state))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None
