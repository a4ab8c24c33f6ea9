"""A trl-conservative loss plugin template: one loss class, one pure formula, one hook.

Copy the folder, rename the package, then replace `template_sigmoid_loss` with your paper's equation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trl_conservative import Loss, LossInputs, LossOutput, LossParam, hookimpl

__version__ = "0.1.0"

CITATION = """\
@inproceedings{rafailov2023direct,
    title        = {{Direct Preference Optimization: Your Language Model is Secretly a Reward Model}},
    author       = {Rafael Rafailov and Archit Sharma and Eric Mitchell and Christopher D. Manning and Stefano Ermon and Chelsea Finn},
    year         = 2023,
    booktitle    = {Advances in Neural Information Processing Systems 36 (NeurIPS 2023)},
    eprint       = {arXiv:2305.18290}
}"""

MARGIN = LossParam(name="margin", type=float, default=0.0, help="subtracted from beta * h inside the sigmoid")


def template_sigmoid_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float, margin: float
) -> torch.Tensor:
    """Per-pair loss; with margin = 0 it is DPO, Rafailov et al. (2023), Eq. 7, h = r(y_w) - r(y_l):

    L = -log sigma(beta * h - margin)
    """
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios) - margin)


@dataclass(frozen=True)
class TemplateLoss:
    """DPO's sigmoid loss with an optional margin (a template: replace with your loss)."""

    name: str = "template_sigmoid"  # what users put in loss_type
    citation: str = CITATION
    params: tuple[LossParam, ...] = (MARGIN,)  # options users set through loss_params
    # False if the loss never reads ref_*_logps: the trainer then loads and runs no reference model.
    needs_reference: bool = True

    def __call__(self, inputs: LossInputs) -> LossOutput:
        losses = template_sigmoid_loss(
            inputs.chosen_logratios, inputs.rejected_logratios, inputs.beta, inputs.params["margin"]
        )
        return LossOutput(
            losses=losses,
            chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
            rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
        )


@hookimpl
def register_losses(register: Callable[[Loss], None]) -> None:
    register(TemplateLoss())
