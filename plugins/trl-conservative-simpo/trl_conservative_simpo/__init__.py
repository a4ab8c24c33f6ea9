"""trl-conservative plugin: SimPO, Meng, Xia and Chen, NeurIPS 2024.

Installing this package makes `loss_type="simpo"` available. SimPO needs no reference model: when every
selected loss is reference-free, `ConservativeDPOTrainer` loads no reference and skips its forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

from trl_conservative import Loss, hookimpl

from .loss import GAMMA, SIMPO_CITATION, SimPOLoss, simpo_loss

__version__ = "0.1.0"

__all__ = ["GAMMA", "SIMPO_CITATION", "SimPOLoss", "register_losses", "simpo_loss"]


@hookimpl
def register_losses(register: Callable[[Loss], None]) -> None:
    register(SimPOLoss())
