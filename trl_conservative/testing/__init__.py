"""What a loss-plugin author runs: a conformance kit for a loss (`conformance.py`) and tiny offline fixtures to
train with it (`fixtures.py`).

    from trl_conservative.testing import KnownPoint, check_loss

    check_loss(MyLoss(), known_points=[KnownPoint.from_margin(0.0, loss=math.log(2))])

`check_loss` runs every check and raises one `LossConformanceError` (an `AssertionError`) listing all that
failed. With pytest, `conformance_checks(...)` gives the same checks one by one to parametrize a test over.
`train_two_steps(loss_type, tmp_dir)` trains a tiny random model two optimizer steps with the loss, offline on
CPU, through the real registry (so an installed plugin is found through its entry point).

Nothing here imports pytest; torch is imported on use, datasets and TRL only by the training fixtures.
"""

from __future__ import annotations

from .conformance import (
    ConformanceCheck,
    KnownPoint,
    LossConformanceError,
    check_loss,
    conformance_checks,
    make_inputs,
)
from .fixtures import (
    TINY_RUN_SETTINGS,
    TrainingRun,
    tiny_config,
    tiny_dataset,
    tiny_model_dir,
    train_two_steps,
)

__all__ = [
    "TINY_RUN_SETTINGS",
    "ConformanceCheck",
    "KnownPoint",
    "LossConformanceError",
    "TrainingRun",
    "check_loss",
    "conformance_checks",
    "make_inputs",
    "tiny_config",
    "tiny_dataset",
    "tiny_model_dir",
    "train_two_steps",
]
