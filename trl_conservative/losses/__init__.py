"""The loss contract and the built-in losses (pure torch, no TRL)."""

from .contract import Loss, LossInputs, LossOutput, LossParam
from .ipo import IPOLoss, ipo_loss
from .sigmoid import ConservativeDPOLoss, SigmoidLoss, conservative_sigmoid_loss

__all__ = [
    "ConservativeDPOLoss",
    "IPOLoss",
    "Loss",
    "LossInputs",
    "LossOutput",
    "LossParam",
    "SigmoidLoss",
    "conservative_sigmoid_loss",
    "ipo_loss",
]
