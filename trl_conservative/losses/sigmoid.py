"""DPO's sigmoid loss and conservative DPO (cDPO), which share one formula."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contract import LossInputs, LossOutput, LossParam

__all__ = [
    "CDPO_CITATION",
    "DPO_CITATION",
    "ConservativeDPOLoss",
    "SigmoidLoss",
    "conservative_sigmoid_loss",
]

DPO_CITATION = """\
@inproceedings{rafailov2023direct,
    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
    year         = 2023,
    booktitle    = {Advances in Neural Information Processing Systems 36 (NeurIPS 2023)},
    eprint       = {arXiv:2305.18290}
}"""

CDPO_CITATION = """\
@misc{mitchell2023cdpo,
    title        = {{A note on DPO with noisy preferences \\& relationship to IPO}},
    author       = {Eric Mitchell},
    year         = 2023,
    howpublished = {\\url{https://ericmitchell.ai/cdpo.pdf}}
}"""


def conservative_sigmoid_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float, eps: float
) -> torch.Tensor:
    """Per-pair cDPO loss; with eps = 0 it is exactly DPO's sigmoid loss.

    Mitchell (2023), Eq. 3, with h = r(y_w) - r(y_l):
        L = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)
    Rafailov et al. (2023), Eq. 7, is the eps = 0 case. The eps term is skipped (not multiplied by zero)
    at eps = 0, so DPO is reproduced bit for bit.
    """
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(logits)
    if eps:
        losses = (1 - eps) * losses - eps * F.logsigmoid(-logits)
    return losses


@dataclass(frozen=True)
class SigmoidLoss:
    """DPO (Rafailov et al., 2023). With `label_smoothing > 0` it is cDPO, as in TRL <= 0.28."""

    name: str = "sigmoid"
    citation: str = DPO_CITATION
    params: tuple[LossParam, ...] = ()
    needs_reference: bool = True

    def __call__(self, inputs: LossInputs) -> LossOutput:
        losses = conservative_sigmoid_loss(
            inputs.chosen_logratios, inputs.rejected_logratios, inputs.beta, inputs.label_smoothing
        )
        chosen_rewards, rejected_rewards = inputs.implicit_rewards()
        return LossOutput(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)


@dataclass(frozen=True)
class ConservativeDPOLoss(SigmoidLoss):
    """Conservative DPO (Mitchell, 2023): DPO with the label-flip rate eps = `label_smoothing`.

    The same formula as `SigmoidLoss`; registered under its own name and citation so a config can say what it
    trains.
    """

    name: str = "cdpo"
    citation: str = CDPO_CITATION
