"""The rDPO loss: DPO de-biased for preference labels flipped at random with a known rate eps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trl_conservative import LossInputs, LossOutput, LossParam

RDPO_CITATION = """\
@inproceedings{chowdhury2024provably,
    title        = {{Provably Robust DPO: Aligning Language Models with Noisy Feedback}},
    author       = {Sayak Ray Chowdhury and Anush Kini and Nagarajan Natarajan},
    year         = 2024,
    booktitle    = {Proceedings of the 41st International Conference on Machine Learning (ICML 2024)},
    eprint       = {arXiv:2403.00409}
}"""


def robust_dpo_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float, eps: float
) -> torch.Tensor:
    """Per-pair rDPO loss, Chowdhury, Kini and Natarajan (2024), Sec. 3, with h = r(y_w) - r(y_l):

        L = [ -(1 - eps) * log sigma(beta * h) + eps * log sigma(-beta * h) ] / (1 - 2 * eps)

    i.e. ((1 - eps) * l(h) - eps * l(-h)) / (1 - 2 eps) with DPO's l(h) = -log sigma(beta h). It is unbiased:
    if each label is flipped with probability eps, its expectation over the flip is the clean DPO loss l(h).
    Compared with cDPO (Mitchell 2023) the eps term has the opposite sign and the whole is scaled by
    1 / (1 - 2 eps): cDPO's gradient vanishes at a finite margin, rDPO's does not (the loss is unbounded
    below as h grows). eps = 0 gives DPO exactly. At h = 0 the loss is log 2 for every eps.
    """
    if not 0.0 <= eps < 0.5:
        raise ValueError(
            f"rDPO needs a flip rate eps in [0, 0.5), got {eps!r}; set label_smoothing accordingly."
        )
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(logits)
    if eps:
        losses = ((1 - eps) * losses + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return losses


@dataclass(frozen=True)
class RobustDPOLoss:
    """Robust DPO (rDPO): DPO de-biased for a label-flip rate eps = `label_smoothing`."""

    name: str = "rdpo"
    citation: str = RDPO_CITATION
    params: tuple[LossParam, ...] = ()
    needs_reference: bool = True

    def __call__(self, inputs: LossInputs) -> LossOutput:
        losses = robust_dpo_loss(
            inputs.chosen_logratios, inputs.rejected_logratios, inputs.beta, inputs.label_smoothing
        )
        # The paper keeps DPO's implicit reward beta * r(y).
        return LossOutput(
            losses=losses,
            chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
            rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
        )
