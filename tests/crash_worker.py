"""A tiny training run for `tests/test_resume.py`, killed with SIGKILL by the test after its first checkpoint.

Usage: python crash_worker.py MODEL_DIR OUTPUT_DIR MARKER_FILE
After checkpoint-2 is saved the worker writes MARKER_FILE and sleeps, so the test kills it at a known point.
`run_config` is shared with the test: the crashed-and-resumed run and the uninterrupted one use the same settings.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

CRASH_AFTER_STEP = 2


def run_config(output_dir: str) -> Any:
    from trl_conservative.testing import tiny_config

    return tiny_config(
        output_dir,
        per_device_eval_batch_size=8,
        max_steps=6,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        eval_on_start=True,
        loss_type="cdpo",
        label_smoothing=0.1,
        kl_exact_steps=2,
    )


def monitor() -> Any:
    """Counts consecutive logs with loss > 0.1 (all of them) and never stops: its count is restorable state."""
    from trl_conservative import KLMonitorCallback

    return KLMonitorCallback("loss", stop_above=0.1, patience=100)


def datasets() -> tuple[Any, Any]:
    from datasets import Dataset

    from trl_conservative.demo.tiny import tiny_preference_rows

    return Dataset.from_list(tiny_preference_rows(32, seed=0)), Dataset.from_list(
        tiny_preference_rows(8, seed=1)
    )


def main(model_dir: str, output_dir: str, marker: str) -> None:
    from transformers import TrainerCallback

    from trl_conservative import ConservativeDPOTrainer

    class HangAfterCheckpoint(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == CRASH_AFTER_STEP:
                Path(marker).write_text(str(os.getpid()))
                time.sleep(600)  # the test kills us here

    train, evaluation = datasets()
    trainer = ConservativeDPOTrainer(
        model_dir,
        args=run_config(output_dir),
        train_dataset=train,
        eval_dataset=evaluation,
        callbacks=[monitor(), HangAfterCheckpoint()],
    )
    trainer.train()
    raise SystemExit("not killed: the test should have killed this process after checkpoint-2")


if __name__ == "__main__":
    main(*sys.argv[1:4])
