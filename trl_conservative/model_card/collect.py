"""`card_data_from_trainer`: read a `ConservativeDPOTrainer`'s settings, loss plan, state and model into `CardData`."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from trl_conservative.training_args import plain

from .data import CardData, CardLoss, PeftSettings, final_metrics, library_versions, precision_label

if TYPE_CHECKING:
    from trl_conservative.losses.plan import LossPlan, ResolvedLoss

__all__ = ["batch_used", "card_data_from_trainer", "card_losses"]


# --- collection from a trainer ----------------------------------------------------------------------------
def card_data_from_trainer(
    trainer: Any,
    *,
    model_name: str,
    model_location: str,
    dataset_name: str | None = None,
    tags: Iterable[str] = (),
) -> CardData:
    """Read a `ConservativeDPOTrainer`'s settings, loss plan, state and model into `CardData`."""
    args, model = trainer.args, trainer.model
    base_model = getattr(model.config, "_name_or_path", None) or None
    dtype = str(getattr(model, "dtype", "torch.float32")).removeprefix("torch.")
    train_metrics, eval_metrics = final_metrics(trainer.state.log_history)
    train_size = _size(trainer.train_dataset)
    per_device, accumulation = batch_used(
        int(args.per_device_train_batch_size),
        int(args.gradient_accumulation_steps),
        int(args.world_size),
        train_size,
    )
    extra_tags = set(tags)
    if hasattr(model.config, "unsloth_version"):
        extra_tags.add("unsloth")
    if "JOB_ID" in os.environ:
        extra_tags.add("hf_jobs")
    urls = _tracker_urls()
    if urls["trackio_url"] is not None:
        extra_tags = {t for t in extra_tags if not t.startswith("trackio:")} | {
            f"trackio:{urls['trackio_url']}"
        }
    return CardData(
        model_name=model_name,
        model_location=model_location,
        hub_model_id=trainer.hub_model_id,
        base_model=base_model,
        base_model_is_local=base_model is not None and os.path.isdir(base_model),
        dataset_name=dataset_name,
        train_size=train_size,
        eval_size=_size(trainer.eval_dataset),
        losses=card_losses(trainer.loss_plan),
        beta=float(args.beta),
        label_smoothing=float(args.label_smoothing),
        learning_rate=float(args.learning_rate),
        num_train_epochs=float(args.num_train_epochs),
        max_steps=int(args.max_steps),
        global_step=int(trainer.state.global_step),
        epoch=None if trainer.state.epoch is None else float(trainer.state.epoch),
        per_device_train_batch_size=per_device,  # the batch the run used (`batch_used`), not the one asked for
        gradient_accumulation_steps=accumulation,
        world_size=int(args.world_size),
        precision=precision_label(bf16=bool(args.bf16), fp16=bool(args.fp16), weights_dtype=dtype),
        seed=args.seed,
        peft=_peft_settings(model),
        versions=library_versions(),
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        tags=tuple(sorted(extra_tags)),
        chat_template=getattr(trainer.processing_class, "chat_template", None) is not None,
        label_noise=_label_noise(getattr(trainer, "label_noise", None)),
        **urls,
    )


def batch_used(per_device: int, accumulation: int, world: int, train_size: int | None) -> tuple[int, int]:
    """(pairs per device batch, batches accumulated per optimizer step) as the run used them.

    A batch cannot hold more pairs than the training set: with `train_size` pairs, each process gets
    ceil(train_size / world) of them, a device batch holds at most that, and an optimizer step accumulates at most
    the batches an epoch has. An optimizer step then holds min(per_device x accumulation x world, train_size) pairs:
    the card's "effective batch size" (per device x accumulation x processes) states that number. When the last
    device batch of such a step is partial (10 pairs in batches of 4), the step is stated as one batch of all
    pairs: the same gradient, the true count. Unknown `train_size` (a streamed set): the settings as given.
    """
    if train_size is None or train_size <= 0 or per_device * accumulation * world <= train_size:
        return per_device, accumulation
    per_process = -(-train_size // world)
    batch = min(per_device, per_process)
    batches = min(accumulation, -(-per_process // batch))
    if batch * batches * world == min(per_device * accumulation * world, train_size):
        return batch, batches
    return per_process, 1


def _label_noise(noise: Any) -> tuple[float, float, float, int] | None:
    """(share, low, high, scored) of a `LabelNoise` the runner set on the trainer, when it holds an estimate."""
    if noise is None or noise.share is None or noise.low is None or noise.high is None:
        return None
    return float(noise.share), float(noise.low), float(noise.high), int(noise.scored)


def _size(dataset: Any) -> int | None:
    if dataset is None:
        return None
    if isinstance(dataset, Mapping):
        sizes = [_size(d) for d in dataset.values()]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset has no length
        return None


def card_losses(plan: LossPlan) -> tuple[CardLoss, ...]:
    """The card's view of a resolved loss plan, in `loss_type` order."""
    return tuple(_card_loss(entry) for entry in plan.entries)


def _card_loss(entry: ResolvedLoss) -> CardLoss:
    info = entry.info
    if info is None:
        trl_version = importlib.metadata.version("trl")
        return CardLoss(name=entry.name, weight=entry.weight, source="TRL", version=f"{trl_version} (native)")
    doc = inspect.getdoc(info.loss)
    return CardLoss(
        name=entry.name,
        weight=entry.weight,
        params=tuple(entry.params.items()),
        source=info.source,
        version=info.version,
        citation=info.citation,
        summary=doc.splitlines()[0] if doc else None,
    )


def _peft_settings(model: Any) -> PeftSettings | None:
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        return None
    adapter = getattr(model, "active_adapter", None)
    config = (
        configs.get(adapter)
        if isinstance(adapter, str) and adapter in configs
        else next(iter(configs.values()))
    )
    modules = getattr(config, "target_modules", None)
    if modules is not None and not isinstance(modules, str):
        modules = tuple(sorted(modules))
    peft_type = getattr(config, "peft_type", "PEFT")
    return PeftSettings(
        peft_type=str(plain(peft_type)),
        r=getattr(config, "r", None),
        lora_alpha=getattr(config, "lora_alpha", None),
        lora_dropout=getattr(config, "lora_dropout", None),
        target_modules=modules,
    )


def _tracker_urls() -> dict[str, str | None]:
    from trl_conservative.trainer.trl_compat import tracker_urls

    trl_urls = tracker_urls()
    wandb = sys.modules.get("wandb")  # a W&B run exists only if the callback imported wandb
    run = getattr(wandb, "run", None)
    wandb_url = getattr(run, "url", None)
    return {
        "wandb_url": wandb_url,
        "trackio_url": trl_urls["trackio"],
        "comet_url": trl_urls["comet"],
    }
