"""The model card: `CardData` (plain data read from a run, `data`), `render_model_card` (a pure function,
`render`) and `card_data_from_trainer` (reading a trainer, `collect`).
"""

from __future__ import annotations

from .collect import card_data_from_trainer, card_losses
from .data import (
    BASE_TAGS,
    METRICS,
    NOT_MEASURED,
    CardData,
    CardLoss,
    CardMetric,
    PeftSettings,
    cdpo_margin_target,
    final_metrics,
    library_versions,
    precision_label,
)
from .render import build_model_card, is_hub_dataset_id, render_model_card

__all__ = [
    "BASE_TAGS",
    "METRICS",
    "NOT_MEASURED",
    "CardData",
    "CardLoss",
    "CardMetric",
    "PeftSettings",
    "build_model_card",
    "card_data_from_trainer",
    "card_losses",
    "cdpo_margin_target",
    "final_metrics",
    "is_hub_dataset_id",
    "library_versions",
    "precision_label",
    "render_model_card",
]
