"""trl-conservative: a drop-in TRL `DPOTrainer` with pluggable losses (cDPO restored, IPO, plugins).

Importing this package loads no plugin: the loss registry is built on first use.
"""

from .config import ConservativeDPOConfig
from .errors import (
    ConfigError,
    DuplicateLossError,
    LossParamError,
    PluginError,
    TrainingHalted,
    TrlConservativeError,
    UnknownLossError,
)
from .hookspecs import hookimpl, hookspec
from .losses.contract import Loss, LossInputs, LossOutput, LossParam
from .plugins import available_losses, get_loss, loss_info
from .trainer import ConservativeDPOTrainer

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConservativeDPOConfig",
    "ConservativeDPOTrainer",
    "DuplicateLossError",
    "Loss",
    "LossInputs",
    "LossOutput",
    "LossParam",
    "LossParamError",
    "PluginError",
    "TrainingHalted",
    "TrlConservativeError",
    "UnknownLossError",
    "__version__",
    "available_losses",
    "get_loss",
    "hookimpl",
    "hookspec",
    "loss_info",
]
