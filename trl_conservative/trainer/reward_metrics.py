"""The `rewards/*` metrics (chosen, rejected, accuracies, margins) of a batch, as TRL names them.

The adapters log them from a registry loss's own rewards (SimPO's differ from TRL's beta * log-ratio), or, on TRL
0.2x, from beta * log-ratio against the reference (`dpo_loss_adapter.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trl_conservative.losses.contract import LossOutput
from trl_conservative.metric_names import (
    REWARDS_ACCURACIES,
    REWARDS_CHOSEN,
    REWARDS_MARGINS,
    REWARDS_REJECTED,
)

__all__ = ["replace_reward_metrics", "reward_metrics"]


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """The `rewards/*` metrics of a (gathered) batch of chosen and rejected rewards, as TRL names them."""
    return {
        REWARDS_CHOSEN: chosen.mean().item(),
        REWARDS_REJECTED: rejected.mean().item(),
        REWARDS_ACCURACIES: (chosen > rejected).float().mean().item(),
        REWARDS_MARGINS: (chosen - rejected).mean().item(),
    }


def replace_reward_metrics(metrics: Mapping[str, list[float]], output: LossOutput, gather: Any) -> None:
    """Overwrite the `rewards/*` values TRL just appended for this batch with the loss's own rewards."""
    values = reward_metrics(gather(output.chosen_rewards.detach()), gather(output.rejected_rewards.detach()))
    for key, value in values.items():
        series = metrics[key]
        if series:
            series[-1] = value
        else:
            series.append(value)
