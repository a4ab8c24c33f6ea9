"""`LiveProgressCallback`: the live view of a run (step, loss, reward accuracy and margin, the token KL and the
last evaluation's sequence KL, speed, ETA).

Shown on the main process only; it changes nothing in `control`. `LiveStatus` is one frame (a renderable over
plain data), `LiveDisplay` draws it: a Rich `Live` line on a terminal, a printed line per log elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.text import Text
from transformers import TrainerCallback

from trl_conservative.metric_names import KL_EXACT, KL_SEQUENCE, LOSS

from .formatting import fmt_duration, fmt_number
from .summary import ACCURACY, MARGIN

__all__ = ["LIVE_METRICS", "LiveDisplay", "LiveProgressCallback", "LiveStatus"]

SEQUENCE_KL = f"eval_{KL_SEQUENCE}"  # the live line shows the last evaluation's sequence KL too


LIVE_METRICS = (
    (LOSS, "loss"),
    (ACCURACY, "acc"),
    (MARGIN, "margin"),
    (KL_EXACT, "KL/token"),
    (f"eval_{KL_SEQUENCE}", "KL/seq"),
)


@dataclass
class LiveStatus:
    """One frame of the live view: progress and the latest logged training metrics."""

    step: int
    max_steps: int
    elapsed_s: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float | None:
        return self.step / self.elapsed_s if self.elapsed_s > 0 and self.step > 0 else None

    @property
    def eta_s(self) -> float | None:
        speed = self.steps_per_s
        return (self.max_steps - self.step) / speed if speed else None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.line(), no_wrap=True, overflow="ellipsis")  # one line, or Live redraws break up

    def line(self) -> str:
        width = 20
        done = int(width * self.step / self.max_steps) if self.max_steps else 0
        parts = [f"step {self.step}/{self.max_steps} " + "#" * done + "-" * (width - done)]
        for key, label in LIVE_METRICS:
            if key in self.metrics:
                parts.append(f"{label} {fmt_number(self.metrics[key])}")
        speed = self.steps_per_s
        parts.append(f"{speed:.2f} it/s" if speed else "- it/s")
        parts.append(f"ETA {fmt_duration(self.eta_s)}")
        return " | ".join(parts)


class LiveDisplay:
    """The live view on the main process: a Rich `Live` line on a terminal, one printed line per log elsewhere.

    Redirected output (CI, a log file, `accelerate launch` workers) gets plain lines instead of redraws.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None

    def start(self, status: LiveStatus) -> None:
        if self.console.is_terminal:
            self._live = Live(status, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, status: LiveStatus) -> None:
        """A new step: redraw on a terminal, nothing elsewhere."""
        if self._live is not None:
            self._live.update(status)

    def log(self, status: LiveStatus) -> None:
        """New metrics were logged: redraw on a terminal, print a line elsewhere."""
        if self._live is not None:
            self._live.update(status)
        else:
            self.console.print(status.line(), soft_wrap=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class LiveProgressCallback(TrainerCallback):  # type: ignore[misc]
    """Replace the Trainer's tqdm bar with one Rich line updated at every step and log."""

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self._display: Any = None
        self._start = 0.0
        self._metrics: dict[str, float] = {}

    def _status(self, state: Any) -> Any:
        return LiveStatus(
            step=state.global_step,
            max_steps=state.max_steps,
            elapsed_s=time.monotonic() - self._start,
            metrics=dict(self._metrics),
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
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
        if LOSS in logs:  # a training log (eval and end-of-training logs have no plain "loss")
            self._display.log(self._status(state))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None
