"""trl-conservative: a drop-in TRL `DPOTrainer` with pluggable losses (cDPO restored, IPO, plugins).

Importing this package loads no plugin (the loss registry is built on first use) and does not import TRL,
transformers or torch-heavy modules until a name that needs them is accessed, so `trl-conservative --help` is fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DatasetError,
    DuplicateLossError,
    LossParamError,
    NonFiniteError,
    PluginError,
    TrainingHalted,
    TrainingInterrupted,
    TrlConservativeError,
    UnknownLossError,
)
from .hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from .callbacks import KLMonitorCallback
    from .config import ConservativeDPOConfig
    from .losses.contract import Loss, LossInputs, LossOutput, LossParam
    from .plugins import available_losses, get_loss, loss_info
    from .trainer import ConservativeDPOTrainer

__version__ = "0.1.0"

# Public names whose modules import torch or TRL: loaded on first access (PEP 562).
_LAZY = {
    "ConservativeDPOConfig": ".config",
    "ConservativeDPOTrainer": ".trainer",
    "KLMonitorCallback": ".callbacks",
    "Loss": ".losses.contract",
    "LossInputs": ".losses.contract",
    "LossOutput": ".losses.contract",
    "LossParam": ".losses.contract",
    "available_losses": ".plugins",
    "get_loss": ".plugins",
    "loss_info": ".plugins",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_conservative' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConfigError",
    "ConservativeDPOConfig",
    "ConservativeDPOTrainer",
    "DatasetError",
    "DuplicateLossError",
    "KLMonitorCallback",
    "Loss",
    "LossInputs",
    "LossOutput",
    "LossParam",
    "LossParamError",
    "NonFiniteError",
    "PluginError",
    "TrainingHalted",
    "TrainingInterrupted",
    "TrlConservativeError",
    "UnknownLossError",
    "__version__",
    "available_losses",
    "get_loss",
    "hookimpl",
    "hookspec",
    "loss_info",
]
