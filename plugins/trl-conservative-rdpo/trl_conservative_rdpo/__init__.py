"""trl-conservative plugin: robust DPO (rDPO), Chowdhury, Kini and Natarajan, ICML 2024.

Installing this package makes `loss_type="rdpo"` available; the flip rate eps is `label_smoothing`.
"""

from __future__ import annotations

from collections.abc import Callable

from trl_conservative import Loss, hookimpl

from .loss import RDPO_CITATION, RobustDPOLoss, robust_dpo_loss

__version__ = "0.1.0"

__all__ = ["RDPO_CITATION", "RobustDPOLoss", "register_losses", "robust_dpo_loss"]


@hookimpl
def register_losses(register: Callable[[Loss], None]) -> None:
    register(RobustDPOLoss())
