"""The one door to TRL's private API. Everything trl-conservative needs from TRL beyond `trl`'s public exports.

TRL 1.16 keeps the DPO loss in the private `DPOTrainer._compute_loss`; `ConservativeDPOTrainer` (in this
subpackage) overrides it and reads TRL's private metric lists and reference helpers. Elsewhere in the package TRL
is imported only through its public names (`from trl import DPOConfig, ...`); a ruff banned-api rule forbids
`trl.trainer` and `trl.scripts` imports outside `trl_conservative/trainer/`. `tests/test_trl_contract.py` pins the
shape relied on here and fails loudly when the installed TRL changes it.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

from trl.trainer.dpo_trainer import DPOTrainer

__all__ = ["DPOTrainer", "is_peft_model", "tracker_urls", "trl_native_losses"]


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
