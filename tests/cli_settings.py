"""The settings of a one-step CPU run of `trl-conservative run` on the tiny model, shared by the CLI tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trl_conservative.demo.tiny import tiny_preference_rows


def write_pairs(path: Path, n: int = 8) -> Path:
    """Write `n` toy preference rows as JSONL to `path` (kept if it already exists); return the path."""
    if not path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in tiny_preference_rows(n, seed=0)))
    return path


def tiny_run_settings(model: Path, data: Path, output_dir: Path, **extra: Any) -> dict[str, Any]:
    """A config mapping for a quick cDPO run on `model` and `data`; `extra` overrides or adds keys."""
    return {
        "model_name_or_path": str(model),
        "dataset_name": str(data),
        "output_dir": str(output_dir),
        "loss_type": "cdpo",
        "label_smoothing": 0.1,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "max_length": 32,
        "eval_strategy": "no",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "activation_checkpointing": False,
        "plot": False,
        **extra,
    }
