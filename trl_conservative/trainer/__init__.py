"""`ConservativeDPOTrainer` and `ConservativeDPOConfig`: the one door to TRL's private API.

    trainer         the `DPOTrainer` subclass (registry losses, KL monitoring, reliability, the model card)
    config          the `DPOConfig` subclass (our fields, checked before any weights load)
    taps            forward hooks on TRL's own forwards (per-token log-probs, hidden states)
    reference_free  training without a reference model (SimPO)
    reward_metrics  the rewards/* metrics both adapters log
    pair_scoring    each training pair's margins when first trained on; the extra pass after training
    trl_compat      everything read from TRL beyond its public exports

Only modules of this subpackage import `trl.trainer` / `trl.scripts` (a ruff banned-api rule). Importing it loads
nothing heavy: the names below are imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trl_conservative._lazy import lazy_attributes

if TYPE_CHECKING:
    from .config import ConservativeDPOConfig
    from .trainer import ConservativeDPOTrainer

__all__ = ["ConservativeDPOConfig", "ConservativeDPOTrainer"]

__getattr__ = lazy_attributes(
    __name__, {"ConservativeDPOConfig": ".config", "ConservativeDPOTrainer": ".trainer"}
)
