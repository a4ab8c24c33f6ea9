"""The exceptions trl-conservative raises.

Every error names the bad value and says how to fix it::

    TrlConservativeError
    ├── ConfigError (also a ValueError)       a setting is wrong; raised before any weights load
    │   ├── UnknownLossError                  a loss name nobody registered
    │   └── LossParamError                    a loss parameter unknown to the loss, or of the wrong type
    ├── PluginError                           a plugin failed to load or broke the hook contract
    │   └── DuplicateLossError                two sources registered the same loss name
    └── TrainingHalted                        training stopped on purpose (KL threshold, NaN guard, signal)
"""

from __future__ import annotations


class TrlConservativeError(Exception):
    """Base class of every error raised by trl-conservative."""


class ConfigError(TrlConservativeError, ValueError):
    """A setting is invalid. Raised when the config or trainer is built, before any model loads."""


class UnknownLossError(ConfigError):
    """A loss name that no built-in or installed plugin registers."""


class LossParamError(ConfigError):
    """A loss parameter the loss does not declare, or a value of the wrong type."""


class PluginError(TrlConservativeError):
    """A loss plugin could not be loaded or broke the hook contract."""


class DuplicateLossError(PluginError):
    """Two sources registered a loss under the same name."""


class TrainingHalted(TrlConservativeError):
    """Training was stopped on purpose; the message says why and where the checkpoint is."""
