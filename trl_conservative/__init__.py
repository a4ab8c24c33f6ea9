"""trl-conservative: a drop-in TRL `DPOTrainer` with pluggable losses (cDPO restored, IPO, plugins).

Importing this package loads no plugin (the loss registry is built on first use) and does not import TRL,
transformers or torch-heavy modules until a name that needs them is accessed, so `trl-conservative --help` is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy
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
    UnsupportedTRLError,
)
from .registry.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from .kl.monitor import KLMonitorCallback
    from .losses.contract import Loss, LossInputs, LossOutput, LossParam
    from .registry.registry import available_losses, get_loss, loss_info
    from .trainer.config import ConservativeDPOConfig
    from .trainer.trainer import ConservativeDPOTrainer

from ._version import __version__  # the one place the version is written

# Public names whose modules import torch or TRL: loaded on first access (PEP 562).
_LAZY = {
    "ConservativeDPOConfig": ".trainer.config",
    "ConservativeDPOTrainer": ".trainer.trainer",
    "KLMonitorCallback": ".kl.monitor",
    "Loss": ".losses.contract",
    "LossInputs": ".losses.contract",
    "LossOutput": ".losses.contract",
    "LossParam": ".losses.contract",
    "available_losses": ".registry.registry",
    "get_loss": ".registry.registry",
    "loss_info": ".registry.registry",
}


__getattr__ = _lazy.lazy_attributes(__name__, _LAZY)


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
    "UnsupportedTRLError",
    "__version__",
    "available_losses",
    "get_loss",
    "hookimpl",
    "hookspec",
    "loss_info",
]
