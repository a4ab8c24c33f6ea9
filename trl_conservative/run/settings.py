"""The settings of one run, read from its parsed config once: the report's `RunSettings`, the run's identity (what
makes two runs "the same run" for resuming into a folder) and the KL monitor's arguments.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from trl_conservative.model_card.data import precision_label
from trl_conservative.reliability.output_dir import run_identity
from trl_conservative.report.summary import RunSettings
from trl_conservative.trainer.config import loss_plan

__all__ = ["identity_of", "kl_monitor_settings", "loss_settings", "run_settings"]


def loss_settings(training: Any) -> dict[str, Any]:
    """The loss settings of a config, resolved (every `loss_type` entry with its weight): one reading for all, from
    the plan the config resolved when it was built (`loss_plan`)."""
    plan = loss_plan(training)
    return {
        "loss_type": [e.name for e in plan.entries],
        "loss_weights": [e.weight for e in plan.entries],
        "loss_params": dict(training.loss_params or {}),  # a str was parsed in __post_init__
        "beta": float(training.beta),
        "label_smoothing": float(training.label_smoothing),
    }


def identity_of(spec: Any, dataset_name: str) -> dict[str, Any]:
    """What makes two runs "the same run" for the output-folder check (see `output_dir.IDENTITY_KEYS`).

    `loss_weights` stays as configured (None for equal weights), as earlier releases recorded it, so a folder
    written by them is still recognised as the same run.
    """
    weights = spec.training.loss_weights
    return run_identity(
        model=str(spec.model.model_name_or_path),
        dataset=dataset_name,
        seed=int(spec.training.seed),
        **{**loss_settings(spec.training), "loss_weights": list(weights) if weights is not None else None},
    )


def run_settings(spec: Any, data: Any) -> RunSettings:
    """The settings the report shows, read from the parsed config and the (checked) data."""
    args, model_args = spec.training, spec.model
    peft = None
    if model_args.use_peft:
        peft = f"LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha}"
        if model_args.load_in_4bit or model_args.load_in_8bit:
            peft = "Q" + peft
    precision = precision_label(
        bf16=bool(args.bf16), fp16=bool(args.fp16), weights_dtype=str(model_args.dtype or "float32")
    )
    return RunSettings(
        **loss_settings(args),
        model=str(model_args.model_name_or_path),
        dataset=data.name,
        train_rows=len(data.train) if hasattr(data.train, "__len__") else None,
        eval_rows=len(data.eval) if data.eval is not None and hasattr(data.eval, "__len__") else None,
        peft=peft,
        precision=precision,
        learning_rate=float(args.learning_rate),
        max_steps=args.max_steps if args.max_steps > 0 else None,
        num_train_epochs=float(args.num_train_epochs),
        batch_size=int(args.per_device_train_batch_size),
        gradient_accumulation_steps=int(args.gradient_accumulation_steps),
        world_size=int(args.world_size),
        seed=int(args.seed),
        kl_monitor=kl_monitor_settings(spec.script, args),
        trl_version=importlib.metadata.version("trl"),
    )


def kl_monitor_settings(script: Any, training: Any = None) -> dict[str, Any] | None:
    """`KLMonitorCallback` arguments from the run options; None when no threshold is set.

    With `training` (the run's config), `metric="auto"` is resolved to the metric it will watch, for the report.
    """
    if script.kl_warn_above is None and script.kl_stop_above is None:
        return None
    metric = script.kl_monitor_metric
    if training is not None and metric == "auto":
        from trl_conservative.kl.monitor import auto_metric

        metric = auto_metric(training)
    return {
        "metric": metric,
        "warn_above": script.kl_warn_above,
        "stop_above": script.kl_stop_above,
        "patience": script.kl_stop_patience,
    }
