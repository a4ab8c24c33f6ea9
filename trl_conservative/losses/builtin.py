"""The built-in losses, registered through the same public hook a third-party plugin implements."""

from __future__ import annotations

from collections.abc import Callable

from trl_conservative.registry.hookspecs import hookimpl

from .contract import Loss
from .ipo import IPOLoss
from .sigmoid import ConservativeDPOLoss, SigmoidLoss

__all__ = [
    "register_losses",
]


@hookimpl
def register_losses(register: Callable[[Loss], None]) -> None:
    register(SigmoidLoss())
    register(ConservativeDPOLoss())
    register(IPOLoss())
