"""Shared fixtures: a tiny local model and tokenizer, a toy preference dataset, and a CPU config factory."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from trl_conservative.tiny import save_tiny_model, tiny_preference_rows  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_dataset() -> Any:
    from datasets import Dataset

    return Dataset.from_list(tiny_preference_rows(16, seed=0))


@pytest.fixture
def make_config(tmp_path: Path) -> Any:
    """Build a config for a quick CPU run; keyword arguments override the defaults."""

    def factory(cls: Any = None, **overrides: Any) -> Any:
        if cls is None:
            from trl_conservative import ConservativeDPOConfig as cls
        settings: dict[str, Any] = dict(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            report_to="none",
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            max_steps=3,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            data_seed=0,
            gradient_checkpointing=False,
            disable_tqdm=True,
            max_length=32,
            dataloader_num_workers=0,
        )
        settings.update(overrides)
        return cls(**settings)

    return factory
