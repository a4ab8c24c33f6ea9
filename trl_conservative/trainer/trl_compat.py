"""The one door to TRL's private API. Everything trl-conservative needs from TRL beyond `trl`'s public exports.

TRL 1.15-1.16 keep the DPO loss in the private `DPOTrainer._compute_loss` (policy and reference through the fused
LM head, per-token log-probs in `.log_probs`); `ConservativeDPOTrainer` (in this subpackage) overrides it and
reads TRL's private metric lists and reference helpers. TRL 1.0-1.14 compute the same loss from full logits, with
no fused LM head, and TRL <= 0.28 in `dpo_loss`: neither is supported (yet). Importing this module checks the
installed TRL against `SUPPORTED_TRL` first and raises `UnsupportedTRLError` (one line) outside it, before any
private TRL module is imported; every module of this subpackage reaches TRL through here.

Elsewhere in the package TRL is imported only through its public names (`from trl import DPOConfig, ...`); a ruff
banned-api rule forbids `trl.trainer` and `trl.scripts` imports outside `trl_conservative/trainer/`.
`tests/test_trl_contract.py` pins the shape relied on here and fails loudly when the installed TRL changes it.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from trl_conservative.errors import UnsupportedTRLError

__all__ = [
    "OLDEST_TESTED_TRL",
    "SUPPORTED_TRL",
    "DPOConfig",
    "DPOTrainer",
    "check_trl_version",
    "is_peft_model",
    "tracker_urls",
    "trl_native_losses",
    "unsupported_trl_message",
]

# The TRL releases the override point holds on; CI tests the oldest (OLDEST_TESTED_TRL) and the newest.
# pyproject.toml declares the same range (tests/test_trl_contract.py checks that they agree).
SUPPORTED_TRL = ">=1.16,<1.17"
OLDEST_TESTED_TRL = "1.16.0"


def unsupported_trl_message(installed: str) -> str | None:
    """The one-line error for TRL version `installed`, or None when it is in `SUPPORTED_TRL`."""
    try:
        if Version(installed) in SpecifierSet(SUPPORTED_TRL, prereleases=True):
            return None
    except InvalidVersion:
        pass
    return (
        f"TRL {installed} is installed, but trl-conservative supports TRL {SUPPORTED_TRL} only. "
        f'Fix: pip install "trl{SUPPORTED_TRL}" (support for TRL 0.23-0.28 is planned).'
    )


def check_trl_version() -> None:
    """Raise `UnsupportedTRLError` when the installed TRL is outside `SUPPORTED_TRL`."""
    import trl

    message = unsupported_trl_message(str(getattr(trl, "__version__", "unknown")))
    if message is not None:
        raise UnsupportedTRLError(message)


check_trl_version()  # before any private TRL module is imported: outside the range they may not even import

from trl.trainer.dpo_config import DPOConfig  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402


@functools.cache
def trl_native_losses() -> frozenset[str]:
    """The loss names TRL's own `_compute_loss` implements, read from its source (never a hand-kept list)."""
    source = inspect.getsource(DPOTrainer._compute_loss)
    return frozenset(re.findall(r'loss_type == "(\w+)"', source))


def tracker_urls() -> dict[str, Any]:
    """The experiment-tracker links TRL's own model card shows (Comet, Trackio), None where not in use."""
    from trl.trainer.utils import get_comet_experiment_url, get_trackio_space_url

    return {"comet": get_comet_experiment_url(), "trackio": get_trackio_space_url()}


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a PEFT model (its reference is the model with the adapter disabled)."""
    from accelerate.utils import is_peft_model as accelerate_is_peft_model

    return bool(accelerate_is_peft_model(model))
