"""Tiny offline fixtures to train with a loss: a tiny random model and tokenizer, a toy preference data set, a
quick CPU config, and `train_two_steps(loss_type, tmp_dir)`, which trains two optimizer steps through the real
registry (so an installed plugin is found through its entry point). datasets and TRL are imported on use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl_conservative.metric_names import LOSS

__all__ = [
    "TINY_RUN_SETTINGS",
    "TrainingRun",
    "tiny_config",
    "tiny_dataset",
    "tiny_model_dir",
    "train_two_steps",
]


def _offline() -> None:
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_DISABLE_TELEMETRY", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("WANDB_MODE", "disabled"),  # wandb's own switch (transformers 4.56 deprecates WANDB_DISABLED)
    ):
        os.environ.setdefault(key, value)


TINY_RUN_SETTINGS: Mapping[str, Any] = {
    "use_cpu": True,
    "report_to": "none",
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "max_steps": 3,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_strategy": "no",
    "seed": 0,
    "data_seed": 0,
    "gradient_checkpointing": False,
    "bf16": False,  # float32 end to end: DPOConfig turns bf16 autocast on by default, even on a CPU
    "disable_tqdm": True,
    "max_length": 32,
    "dataloader_num_workers": 0,
}


def tiny_config(output_dir: str | Path, *, config_class: Any = None, **overrides: Any) -> Any:
    """A config for a quick, deterministic CPU run on the tiny model (`TINY_RUN_SETTINGS` plus `overrides`).

    `config_class` defaults to `ConservativeDPOConfig`; pass `trl.DPOConfig` to build the same run for stock TRL.
    """
    import dataclasses

    if config_class is None:
        from trl_conservative.trainer.config import ConservativeDPOConfig as config_class
    base = dict(TINY_RUN_SETTINGS)
    checkpointing = base.pop("gradient_checkpointing")
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(overrides):
        # transformers >= 5.23 names it activation_checkpointing (the old name warns); earlier ones do not know it
        names = {f.name for f in dataclasses.fields(config_class)}
        base["activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"] = (
            checkpointing
        )
    return config_class(output_dir=str(output_dir), **{**base, **overrides})


def tiny_model_dir(tmp_dir: str | Path, **model_kwargs: Any) -> Path:
    """Save a tiny random Llama model and its character-level tokenizer under `tmp_dir`; return the path."""
    from trl_conservative.demo.tiny import save_tiny_model

    _offline()
    path = Path(tmp_dir) / "tiny-model"
    if not (path / "config.json").exists():
        save_tiny_model(path, **model_kwargs)
    return path


def tiny_dataset(n: int = 16, seed: int = 0) -> Any:
    """A `datasets.Dataset` of `n` prompt/chosen/rejected rows (a toy arithmetic preference task)."""
    from datasets import Dataset

    from trl_conservative.demo.tiny import tiny_preference_rows

    return Dataset.from_list(tiny_preference_rows(n, seed=seed))


@dataclass
class TrainingRun:
    """What `train_two_steps` returns: the trainer, its log history and how many weights moved."""

    trainer: Any
    logs: list[dict[str, Any]]
    changed_parameters: float

    @property
    def losses(self) -> list[float]:
        """The training loss logged at each step."""
        return [float(entry[LOSS]) for entry in self.logs if LOSS in entry]

    @property
    def metrics(self) -> dict[str, Any]:
        """The last per-step log (loss, rewards/*, logps/*, ...)."""
        steps = [entry for entry in self.logs if LOSS in entry]
        return steps[-1] if steps else {}


def train_two_steps(
    loss_type: str | list[str],
    tmp_dir: str | Path,
    *,
    loss_params: Mapping[str, Any] | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    model_dir: str | Path | None = None,
    dataset: Any = None,
    max_steps: int = 2,
    ref_model: Any = None,
    **config: Any,
) -> TrainingRun:
    """Train a tiny model `max_steps` steps on CPU with `loss_type`, resolved through the real loss registry.

    Offline and a few seconds long. Extra keyword arguments go to `ConservativeDPOConfig`.
    """
    _offline()
    import torch

    from trl_conservative.trainer.trainer import ConservativeDPOTrainer

    tmp_dir = Path(tmp_dir)
    args = tiny_config(
        tmp_dir / "out",
        **{
            "max_steps": max_steps,
            "loss_type": loss_type,
            "beta": beta,
            "label_smoothing": label_smoothing,
            "loss_params": dict(loss_params) if loss_params else None,
            **config,
        },
    )
    model_path = str(model_dir or tiny_model_dir(tmp_dir))
    trainer = ConservativeDPOTrainer(
        model=model_path, ref_model=ref_model, args=args, train_dataset=dataset or tiny_dataset()
    )
    model: Any = trainer.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    changed = sum(not torch.equal(before[name], after[name].detach()) for name in before) / max(
        len(before), 1
    )
    return TrainingRun(trainer=trainer, logs=list(trainer.state.log_history), changed_parameters=changed)
