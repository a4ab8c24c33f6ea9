"""The warnings a run prints that its user cannot act on, silenced around the trainer calls that trigger them.

Each is named by its message, category and the module it is attributed to; everything else still shows, and the
filters are gone when the call returns (`warnings.catch_warnings`, so not thread-safe: a warning another thread
raises meanwhile is filtered too).

- transformers 5 renamed `gradient_checkpointing*` to `activation_checkpointing*` and warns (FutureWarning) on each
  use of an old name. TRL 1.16 itself uses them: `trl.models.utils.disable_gradient_checkpointing` (every loss
  computation reads `is_gradient_checkpointing` and calls `gradient_checkpointing_disable`/`_enable`), and its
  `DPOConfig` defaults `gradient_checkpointing=True` (a config TRL builds itself, `args=None`, warns in
  `TrainingArguments.__post_init__`). A user's own config keeps its warning: built outside these calls.
- torch's DataLoader warns (UserWarning) when `pin_memory=True` finds no accelerator. `dataloader_pin_memory` is
  True by default and transformers only turns it off for `use_cpu=True`, so a run on a machine without an
  accelerator warns at every evaluation and epoch, although pinning is then simply skipped.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["KNOWN_WARNINGS", "known_warnings_silenced", "quietly"]

# (message regex, matched at the start of the message; category; regex of the module the warning is attributed to)
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`(is_)?gradient_checkpointing(_enable|_disable|_kwargs)?` is deprecated and will be removed in v6\. "
        r"Use `(is_)?activation_checkpointing",
        FutureWarning,
        r"transformers\.(modeling_utils|training_args)\Z",
    ),
    (
        r"'pin_memory' argument is set as true but no accelerator is found",
        UserWarning,
        r"torch\.utils\.data\.dataloader\Z",
    ),
)


@contextlib.contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """Ignore exactly `KNOWN_WARNINGS` inside the block; the warning filters are restored when it ends."""
    with warnings.catch_warnings():
        for message, category, module in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


def quietly(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """`method` run inside `known_warnings_silenced()` (for trainer methods that call TRL's forwards)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with known_warnings_silenced():
            return method(*args, **kwargs)

    return wrapper
