"""The loss registry and the plugin contract: the hook specs (`hookspecs`), the plugin manager (`loading`: the
built-ins, installed entry points, blocking, failure isolation) and the registry built from it (`registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trl_conservative._lazy import lazy_attributes

from .hookspecs import PROJECT_NAME, hookimpl, hookspec

if TYPE_CHECKING:
    from .loading import DISABLE_ENV, disabled_plugins, get_plugin_manager
    from .registry import (
        LossInfo,
        LossRegistry,
        available_losses,
        build_registry,
        get_loss,
        get_registry,
        loss_info,
        registered_plugins,
        reset_registry,
    )

# The registry imports the losses (torch): loaded on first access, so `import trl_conservative` stays light.
__getattr__ = lazy_attributes(
    __name__,
    {
        **dict.fromkeys(("DISABLE_ENV", "disabled_plugins", "get_plugin_manager"), ".loading"),
        **dict.fromkeys(
            (
                "LossInfo",
                "LossRegistry",
                "available_losses",
                "build_registry",
                "get_loss",
                "get_registry",
                "loss_info",
                "registered_plugins",
                "reset_registry",
            ),
            ".registry",
        ),
    },
)

__all__ = [
    "DISABLE_ENV",
    "PROJECT_NAME",
    "LossInfo",
    "LossRegistry",
    "available_losses",
    "build_registry",
    "disabled_plugins",
    "get_loss",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "hookspec",
    "loss_info",
    "registered_plugins",
    "reset_registry",
]
