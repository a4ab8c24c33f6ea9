"""IPO (Azar et al., 2024) with TRL 1.16's per-token averaging."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .contract import LossInputs, LossOutput, LossParam

__all__ = [
    "IPO_CITATION",
    "IPOLoss",
    "ipo_loss",
]

IPO_CITATION = """\
@inproceedings{azar2024general,
    title        = {{A General Theoretical Paradigm to Understand Learning from Human Preferences}},
    author       = {Mohammad Gheshlaghi Azar and Zhaohan Daniel Guo and Bilal Piot and Remi Munos and Mark Rowland and Michal Valko and Daniele Calandriello},
    year         = 2024,
    booktitle    = {Proceedings of The 27th International Conference on Artificial Intelligence and Statistics (AISTATS 2024)},
    eprint       = {arXiv:2310.12036}
}"""


def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair IPO loss, Azar et al. (2024), Eq. 17, with beta in the role of the paper's tau:
        L = (h_bar - 1 / (2 * beta))^2,   h_bar = r(y_w) / |y_w| - r(y_l) / |y_l|

    Deviation, as in TRL 1.16: each sequence log-ratio is averaged over its completion tokens (TRL confirmed
    this with the IPO authors), which keeps beta comparable across lengths. Lengths are clamped to >= 1 so an
    all-truncated completion gives a finite loss instead of NaN (TRL issue #1033).
    """
    chosen_avg = chosen_logratios / chosen_lengths.clamp(min=1).to(chosen_logratios.dtype)
    rejected_avg = rejected_logratios / rejected_lengths.clamp(min=1).to(rejected_logratios.dtype)
    return (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2


@dataclass(frozen=True)
class IPOLoss:
    """IPO. Only the loss term is length-averaged; the logged rewards stay beta * summed log-ratio."""

    name: str = "ipo"
    citation: str = IPO_CITATION
    params: tuple[LossParam, ...] = ()
    needs_reference: bool = True
    uses_label_smoothing: bool = False  # IPO has no label-flip rate: a run refuses label_smoothing > 0

    def __call__(self, inputs: LossInputs) -> LossOutput:
        losses = ipo_loss(
            inputs.chosen_logratios,
            inputs.rejected_logratios,
            inputs.chosen_lengths,
            inputs.rejected_lengths,
            inputs.beta,
        )
        chosen_rewards, rejected_rewards = inputs.implicit_rewards()
        return LossOutput(losses=losses, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
