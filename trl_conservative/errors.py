"""The exceptions trl-conservative raises.

Every error names the bad value and says how to fix it::

    TrlConservativeError
    ├── ConfigError (also a ValueError)       a setting is wrong; raised before any weights load
    │   ├── UnknownLossError                  a loss name nobody registered
    │   ├── LossParamError                    a loss parameter unknown to the loss, or of the wrong type
    │   └── DatasetError                      preference rows that are missing, empty, not text or identical
    ├── PluginError                           a plugin failed to load or broke the hook contract
    │   └── DuplicateLossError                two sources registered the same loss name
    ├── UnsupportedTRLError (also an ImportError)  the installed TRL is outside the supported range
    └── TrainingHalted                        training stopped on purpose (KL threshold, NaN guard, signal)
        ├── NonFiniteError                    a loss or weight became NaN/inf (the NaN guard)
        └── TrainingInterrupted               SIGINT/SIGTERM: a checkpoint was saved, then training stopped
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatasetError",
    "DuplicateLossError",
    "LossParamError",
    "NonFiniteError",
    "PluginError",
    "TrainingHalted",
    "TrainingInterrupted",
    "TrlConservativeError",
    "UnknownLossError",
    "UnsupportedTRLError",
]


class TrlConservativeError(Exception):
    """Base class of every error raised by trl-conservative."""


class ConfigError(TrlConservativeError, ValueError):
    """A setting is invalid. Raised when the config or trainer is built, before any model loads."""


class UnknownLossError(ConfigError):
    """A loss name that no built-in or installed plugin registers."""


class LossParamError(ConfigError):
    """A loss parameter the loss does not declare, or a value of the wrong type."""


class DatasetError(ConfigError):
    """Preference rows TRL would fail on or learn nothing from (see `trl_conservative.run.validate`)."""


class PluginError(TrlConservativeError):
    """A loss plugin could not be loaded or broke the hook contract."""


class DuplicateLossError(PluginError):
    """Two sources registered a loss under the same name."""


class UnsupportedTRLError(TrlConservativeError, ImportError):
    """The installed TRL is outside the range trl-conservative is tested on; raised when the trainer is imported.

    The message is one line: the installed version, the supported range and the command that fixes it.
    """


class TrainingHalted(TrlConservativeError):
    """Training was stopped on purpose; the message says why and where the checkpoint is.

    Attributes:
        checkpoint: the checkpoint to resume from (the last good one), or None when there is none.
        exit_status: the status `trl-conservative run` exits with.
    """

    exit_status = 1

    def __init__(self, message: str, *, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class NonFiniteError(TrainingHalted):
    """The NaN guard stopped training: a loss or a trained weight is NaN or infinite.

    Raised before the non-finite value reaches an optimizer step or a save, so no checkpoint holds it.

    Attributes:
        metric: what was non-finite (`loss`, `eval_loss` or `weights`).
        value: the value (nan, inf or -inf).
        step: the optimizer step being computed (training) or just finished (evaluation, saving).
    """

    def __init__(
        self, message: str, *, metric: str, value: float, step: int, checkpoint: str | None = None
    ) -> None:
        super().__init__(message, checkpoint=checkpoint)
        self.metric, self.value, self.step = metric, value, step


class TrainingInterrupted(TrainingHalted):
    """SIGINT or SIGTERM arrived: a checkpoint was saved at the next step boundary and training stopped.

    Attributes:
        signal_number: the signal received (`signal.SIGINT` or `signal.SIGTERM`).
        step: the optimizer step the checkpoint holds.
        exit_status: 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it.
    """

    def __init__(self, message: str, *, signal_number: int, step: int, checkpoint: str | None) -> None:
        super().__init__(message, checkpoint=checkpoint)
        self.signal_number, self.step = signal_number, step
        self.exit_status = 128 + signal_number
