"""The SimPO loss: a length-normalised, reference-free reward with a target reward margin gamma."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trl_conservative import LossInputs, LossOutput, LossParam

SIMPO_CITATION = """\
@inproceedings{meng2024simpo,
    title        = {{SimPO: Simple Preference Optimization with a Reference-Free Reward}},
    author       = {Yu Meng and Mengzhou Xia and Danqi Chen},
    year         = 2024,
    booktitle    = {Advances in Neural Information Processing Systems 37 (NeurIPS 2024)},
    eprint       = {arXiv:2405.14734}
}"""

GAMMA = LossParam(
    name="gamma",
    type=float,
    default=0.5,
    help="SimPO's target reward margin gamma (outside beta: the loss is -log sigma(beta * avg-logp gap - gamma))",
)


def simpo_rewards(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO's reward, Meng et al. (2024), Eq. 4: r(x, y) = beta / |y| * log pi_theta(y | x).

    Lengths are clamped to >= 1, so a completion truncated to zero tokens (summed log-prob 0) gets reward 0
    instead of NaN.
    """
    chosen = beta * chosen_logps / chosen_lengths.clamp(min=1).to(chosen_logps.dtype)
    rejected = beta * rejected_logps / rejected_lengths.clamp(min=1).to(rejected_logps.dtype)
    return chosen, rejected


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
    eps: float = 0.0,
) -> torch.Tensor:
    """Per-pair SimPO loss, Meng et al. (2024), Eq. 6:

        L = -log sigma( beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma )

    No reference model appears. `eps` > 0 adds the conservative label smoothing of the authors' released
    trainer, -(1 - eps) log sigma(z) - eps log sigma(-z) on the same z (not in the paper; eps = 0 is the paper).
    """
    chosen_rewards, rejected_rewards = simpo_rewards(
        chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta
    )
    logits = chosen_rewards - rejected_rewards - gamma
    losses = -F.logsigmoid(logits)
    if eps:
        losses = (1 - eps) * losses - eps * F.logsigmoid(-logits)
    return losses


@dataclass(frozen=True)
class SimPOLoss:
    """SimPO: reference-free, length-normalised log-likelihood reward with a target margin `gamma`."""

    name: str = "simpo"
    citation: str = SIMPO_CITATION
    params: tuple[LossParam, ...] = (GAMMA,)
    needs_reference: bool = False

    def __call__(self, inputs: LossInputs) -> LossOutput:
        losses = simpo_loss(
            inputs.chosen_logps,
            inputs.rejected_logps,
            inputs.chosen_lengths,
            inputs.rejected_lengths,
            inputs.beta,
            float(inputs.params.get("gamma", GAMMA.default)),
            inputs.label_smoothing,
        )
        chosen_rewards, rejected_rewards = simpo_rewards(
            inputs.chosen_logps.detach(),
            inputs.rejected_logps.detach(),
            inputs.chosen_lengths,
            inputs.rejected_lengths,
            inputs.beta,
        )
        return LossOutput(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
