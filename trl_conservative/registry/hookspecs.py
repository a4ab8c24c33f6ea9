"""The plugin contract: hook specifications only, no logic.

A plugin is a module (or object) with functions marked `@trl_conservative.hookimpl`, exposed through an
entry point in the group `trl_conservative`. Hook arguments may be added in later versions, never renamed;
an implementation may accept fewer arguments than the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from trl_conservative.losses.contract import Loss

__all__ = [
    "PROJECT_NAME",
    "hookimpl",
    "hookspec",
    "register_losses",
]

PROJECT_NAME = "trl_conservative"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_losses(register: Callable[[Loss], None]) -> None:
    """Register preference losses.

    Args:
        register: call it once per loss object (anything with a `name` and
            `__call__(LossInputs) -> LossOutput`; see `trl_conservative.Loss`). Registering a name that
            another source already registered raises `DuplicateLossError` naming both sources.

    Called once per plugin when the loss registry is first built (on the first `available_losses()`,
    `get_loss()`, config validation or trainer construction), never at import time. Return None.
    """
