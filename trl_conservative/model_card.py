"""The model card: `CardData` (plain data read from a trainer) and `render_model_card` (a pure function).

TRL's card keeps its layout here (front matter, quick start, training procedure, framework versions,
citations) and gains what a reader needs to judge the run: the loss and its parameters, the settings that
shape it, and the final reward and KL metrics. Its quick start loads the hub id when there is one and the
saved folder's absolute path otherwise, so it runs as written. Same data, same card: no timestamps,
sorted tags.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

from .kl import (
    KL_EXACT,
    KL_EXACT_CHOSEN,
    KL_EXACT_REJECTED,
    KL_SEQUENCE,
    LOGRATIO_CHOSEN,
    LOGRATIO_REJECTED,
)
from .losses.sigmoid import DPO_CITATION

if TYPE_CHECKING:
    from .config import LossPlan, ResolvedLoss

BASE_TAGS = ("dpo", "generated_from_trainer", "trl", "trl-conservative")

DPO_PAPER_TITLE = "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
DPO_PAPER_ID = "2305.18290"

TRL_CITATION = """\
@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and
             Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and
             Gallouédec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}"""

QUESTION = (
    "If you had a time machine, but could only go to the past or the future once and never return, "
    "which would you choose and why?"
)

# (card label, distribution name) in the order the card lists them; TRL's five first, as in its template.
LIBRARIES = (
    ("TRL", "trl"),
    ("Transformers", "transformers"),
    ("Pytorch", "torch"),
    ("Datasets", "datasets"),
    ("Tokenizers", "tokenizers"),
    ("PEFT", "peft"),
    ("trl-conservative", "trl-conservative"),
)

# Logged metric keys the card reports (eval ones carry an `eval_` prefix), each with its one-line meaning.
METRICS: tuple[tuple[str, str], ...] = (
    ("loss", "the training objective: the weighted sum of the loss terms above"),
    (
        "rewards/accuracies",
        "share of pairs whose implicit reward beta * log(pi / pi_ref) is higher for the chosen answer",
    ),
    (
        "rewards/margins",
        "mean implicit reward margin beta * (r(y_w) - r(y_l)); it grows as the policy separates pairs",
    ),
    (
        KL_SEQUENCE,
        "sequence KL(pi || pi_ref) in nats per completion, on completions sampled from the policy for held-out "
        "prompts (the KL in the DPO objective; evaluation only; 0 at the start)",
    ),
    (
        KL_EXACT,
        "exact token KL(pi || pi_ref) over the whole vocabulary, averaged over the contexts of dataset completion "
        "tokens, chosen and rejected together (0 at the start)",
    ),
    (KL_EXACT_CHOSEN, "the same exact token KL at the chosen completions' contexts only"),
    (KL_EXACT_REJECTED, "the same exact token KL at the rejected completions' contexts only"),
    (
        LOGRATIO_CHOSEN,
        "mean sequence log-ratio log pi(y_w|x) - log pi_ref(y_w|x) of the chosen completions: a drift signal, "
        "not a KL (may be negative)",
    ),
    (
        LOGRATIO_REJECTED,
        "mean sequence log-ratio log pi(y_l|x) - log pi_ref(y_l|x) of the rejected completions: a drift signal, "
        "not a KL (DPO pushes it down)",
    ),
)
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class CardLoss:
    """One loss term as the card shows it: its source, weight, own parameters and citation."""

    name: str
    weight: float = 1.0
    params: tuple[tuple[str, Any], ...] = ()
    source: str = "TRL (native)"
    version: str | None = None
    citation: str | None = None
    summary: str | None = None


@dataclass(frozen=True)
class CardMetric:
    """The last logged value of a metric and the optimizer step it was logged at."""

    value: float
    step: int


@dataclass(frozen=True)
class PeftSettings:
    """The adapter the run trained (LoRA fields are None for other PEFT methods)."""

    peft_type: str
    r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    target_modules: tuple[str, ...] | str | None = None


@dataclass(frozen=True)
class CardData:
    """Everything the card says, as plain values. `card_data_from_trainer` fills it from a trainer."""

    model_name: str
    model_location: str
    hub_model_id: str | None = None
    base_model: str | None = None
    base_model_is_local: bool = False
    dataset_name: str | None = None
    train_size: int | None = None
    eval_size: int | None = None
    losses: tuple[CardLoss, ...] = ()
    beta: float = 0.1
    label_smoothing: float = 0.0
    learning_rate: float = 1e-6
    num_train_epochs: float = 3.0
    max_steps: int = -1
    global_step: int = 0
    epoch: float | None = None
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    world_size: int = 1
    precision: str = "fp32"
    seed: int | None = None
    peft: PeftSettings | None = None
    versions: tuple[tuple[str, str], ...] = ()
    train_metrics: Mapping[str, CardMetric] = field(default_factory=dict)
    eval_metrics: Mapping[str, CardMetric] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    chat_template: bool = True
    wandb_url: str | None = None
    trackio_url: str | None = None
    comet_url: str | None = None

    @property
    def effective_batch_size(self) -> int:
        """Pairs per optimizer step: per-device batch x gradient accumulation x processes."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def all_tags(self) -> list[str]:
        return sorted(set(BASE_TAGS) | set(self.tags))


# --- pure helpers -----------------------------------------------------------------------------------------
def final_metrics(
    log_history: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, CardMetric], dict[str, CardMetric]]:
    """The last logged value of each reported metric, for training and for evaluation (`eval_` keys)."""
    train: dict[str, CardMetric] = {}
    evaluation: dict[str, CardMetric] = {}
    for entry in log_history:
        step = int(entry.get("step", 0))
        for key, _meaning in METRICS:
            if _is_number(entry.get(key)):
                train[key] = CardMetric(value=float(entry[key]), step=step)
            if _is_number(entry.get(f"eval_{key}")):
                evaluation[key] = CardMetric(value=float(entry[f"eval_{key}"]), step=step)
    return train, evaluation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cdpo_margin_target(beta: float, eps: float) -> float:
    """The implicit reward margin beta * h at which the cDPO gradient vanishes.

    Mitchell (2023), Eq. 3: dL/d(beta h) = -(1 - eps) * sigma(-beta h) + eps * sigma(beta h) = 0
    <=> sigma(beta h) = 1 - eps <=> beta * h = log((1 - eps) / eps). Infinite for eps = 0 (plain DPO).
    """
    return math.inf if eps == 0 else math.log((1 - eps) / eps)


def precision_label(*, bf16: bool, fp16: bool, weights_dtype: str) -> str:
    """How the run computed: mixed precision (bf16/fp16 autocast) or the weights' own dtype."""
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(weights_dtype, weights_dtype)
    if bf16 or fp16:
        return f"{'bf16' if bf16 else 'fp16'} mixed precision ({short} weights)"
    return f"{short} (no mixed precision)"


def library_versions(libraries: Sequence[tuple[str, str]] = LIBRARIES) -> tuple[tuple[str, str], ...]:
    """(label, installed version) for each library, "not installed" when absent."""
    versions = []
    for label, dist in libraries:
        try:
            versions.append((label, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((label, "not installed"))
    return tuple(versions)


def _row(*cells: str) -> str:
    # A bare "|" ends a Markdown table cell, and KL(pi || pi_ref) or pi(y|x) hold some.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _number(value: float) -> str:
    return f"{value:.4g}"


def _literal(text: str) -> str:
    # A JSON string is also a valid Python string literal for these characters (quotes, backslashes, unicode).
    return json.dumps(text)


def _loss_label(loss: CardLoss, label_smoothing: float) -> str:
    if loss.name == "cdpo" or (loss.name == "sigmoid" and label_smoothing > 0):
        return f"`{loss.name}` (conservative DPO, eps = {_number(label_smoothing)})"
    return f"`{loss.name}`"


# --- rendering --------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def is_hub_dataset_id(name: str | None) -> bool:
    """Whether `name` reads as a hub dataset id (`name` or `org/name`), not a local path or a `builtin:` name.

    Decided by syntax only, so the card stays a pure function of its data.
    """
    return (
        bool(name)
        and _HUB_ID.fullmatch(str(name)) is not None
        and not str(name).endswith(_DATA_FILE_SUFFIXES)
    )


def render_model_card(data: CardData) -> str:
    """The card's text: YAML front matter plus Markdown, a pure function of `data`."""
    front = ModelCardData(
        base_model=None if data.base_model_is_local else data.base_model,
        datasets=[data.dataset_name] if data.dataset_name and is_hub_dataset_id(data.dataset_name) else None,
        library_name="transformers",
        model_name=data.model_name,
        tags=data.all_tags,
    ).to_yaml()
    sections = [
        f"# Model Card for {data.model_name}",
        _intro(data),
        "## Quick start",
        _quick_start(data),
        "## Training procedure",
        *_badges(data),
        f"This model was trained with DPO, a method introduced in "
        f"[{DPO_PAPER_TITLE}](https://huggingface.co/papers/{DPO_PAPER_ID}), using trl-conservative's "
        "`ConservativeDPOTrainer` (TRL's `DPOTrainer` with pluggable losses).",
        "### Loss",
        _loss_section(data),
        "### Training settings",
        _settings(data),
        "### Results",
        _results(data),
        "### Framework versions",
        "\n".join(f"- {label}: {version}" for label, version in data.versions),
        "## Citations",
        _citations(data),
    ]
    return f"---\n{front}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def build_model_card(data: CardData) -> ModelCard:
    """The card as a `huggingface_hub.ModelCard` (parsed back from `render_model_card`, so it is valid)."""
    return ModelCard(render_model_card(data))


def _intro(data: CardData) -> str:
    if data.base_model is None:
        base = "a model whose origin was not recorded"
    elif data.base_model_is_local:
        base = f"the local model `{data.base_model}`"
    else:
        base = f"[{data.base_model}](https://huggingface.co/{data.base_model})"
    if is_hub_dataset_id(data.dataset_name):
        dataset = (
            f" on the [{data.dataset_name}](https://huggingface.co/datasets/{data.dataset_name}) dataset"
        )
    elif data.dataset_name:
        dataset = f" on the preference dataset `{data.dataset_name}`"
    else:
        dataset = " on a preference dataset"
    if data.train_size is not None:
        dataset += f" ({data.train_size} pairs)"
    return f"This model is a fine-tuned version of {base}{dataset}.\nIt has been trained using [TRL](https://github.com/huggingface/trl)."


def _quick_start(data: CardData) -> str:
    call = (
        'generator([{"role": "user", "content": question}], max_new_tokens=128, return_full_text=False)[0]'
        if data.chat_template
        else "generator(question, max_new_tokens=128, return_full_text=False)[0]"
    )
    snippet = (
        "```python\nfrom transformers import pipeline\n\n"
        f"question = {_literal(QUESTION)}\n"
        f'generator = pipeline("text-generation", model={_literal(data.model_location)}, device_map="auto")\n'
        f"output = {call}\n"
        'print(output["generated_text"])\n```'
    )
    if data.hub_model_id:
        where = f"It loads the model from the Hugging Face Hub (`{data.hub_model_id}`)."
    else:
        where = "The model was not pushed to a hub: the snippet loads the folder it was saved to."
    if data.peft is not None:
        where += (
            f" The folder holds a {data.peft.peft_type} adapter: `pipeline` (with `peft` installed) "
            "also loads the base model it names."
        )
    return f"{where}\n\n{snippet}"


_BADGES = (
    (
        "wandb_url",
        "https://raw.githubusercontent.com/wandb/assets/main/wandb-github-badge-28.svg",
        "Weights & Biases",
    ),
    (
        "trackio_url",
        "https://raw.githubusercontent.com/gradio-app/trackio/refs/heads/main/trackio/assets/badge.png",
        "Trackio",
    ),
    (
        "comet_url",
        "https://raw.githubusercontent.com/comet-ml/comet-examples/master/logo/comet_badge.png",
        "Comet",
    ),
)


def _badges(data: CardData) -> list[str]:
    """TRL's "Visualize in ..." badges for the trackers the run reported to."""
    badges = []
    for attr, image, tracker in _BADGES:
        url = getattr(data, attr)
        if url:
            badges.append(
                f'[<img src="{image}" alt="Visualize in {tracker}" width="150" height="24"/>]({url})'
            )
    return badges


def _loss_section(data: CardData) -> str:
    rows = ["| term | weight | parameters | implemented by |", "| --- | --- | --- | --- |"]
    for loss in data.losses:
        params = ", ".join(f"{k} = {v!r}" for k, v in loss.params) or "-"
        source = f"{loss.source} {loss.version}" if loss.version else loss.source
        rows.append(_row(_loss_label(loss, data.label_smoothing), _number(loss.weight), params, source))
    lines = ["\n".join(rows), ""]
    lines.append(
        f"- beta = {_number(data.beta)} (the DPO temperature: how strongly the policy is tied to the "
        "reference; IPO's tau)"
    )
    lines.append(
        f"- label_smoothing (eps) = {_number(data.label_smoothing)} (the assumed share of flipped labels)"
    )
    names = {loss.name for loss in data.losses}
    for loss in data.losses:
        if loss.summary:
            lines.append(f"- `{loss.name}`: {loss.summary}")
    is_cdpo = "cdpo" in names or ("sigmoid" in names and data.label_smoothing > 0)
    if is_cdpo and data.label_smoothing > 0:
        target = cdpo_margin_target(data.beta, data.label_smoothing)
        lines.append(
            f"- cDPO stops widening a pair once its reward margin beta * h reaches log((1 - eps) / eps) = "
            f"{_number(target)}: compare `rewards/margins` below. With eps = 0 it is plain DPO."
        )
    if "ipo" in names:
        lines.append(
            "- IPO averaging: the IPO term uses each completion's log-ratio averaged over its tokens (as "
            "TRL 1.16 does) and pulls the averaged gap towards 1 / (2 beta) = "
            f"{_number(1 / (2 * data.beta))}; the logged `rewards/*` stay beta times the summed log-ratio."
        )
    return "\n".join(lines)


def _settings(data: CardData) -> str:
    if data.max_steps > 0:
        schedule = f"max_steps = {data.max_steps}"
    else:
        schedule = f"num_train_epochs = {_number(data.num_train_epochs)}"
    trained = f"{data.global_step} optimizer steps"
    if data.epoch is not None:
        trained += f", {_number(data.epoch)} epochs"
    size = "unknown" if data.train_size is None else f"{data.train_size} pairs"
    if data.eval_size is not None:
        size += f" (evaluation: {data.eval_size} pairs)"
    lines = [
        f"- base model: `{data.base_model}`" if data.base_model else "- base model: not recorded",
        f"- training data: {data.dataset_name or 'unnamed preference dataset'}, {size}",
        f"- learning rate: {data.learning_rate:g}",
        f"- schedule: {schedule} (trained {trained})",
        f"- effective batch size: {data.effective_batch_size} pairs per step = "
        f"{data.per_device_train_batch_size} per device x {data.gradient_accumulation_steps} gradient "
        f"accumulation x {data.world_size} {'process' if data.world_size == 1 else 'processes'}",
        f"- precision: {data.precision}",
    ]
    if data.seed is not None:
        lines.append(f"- seed: {data.seed}")
    lines.append(f"- PEFT: {_peft(data.peft)}")
    return "\n".join(lines)


def _peft(peft: PeftSettings | None) -> str:
    if peft is None:
        return "none (all weights trained)"
    parts = [peft.peft_type]
    if peft.r is not None:
        parts.append(f"r = {peft.r}")
    if peft.lora_alpha is not None:
        parts.append(f"alpha = {_number(peft.lora_alpha)}")
    if peft.lora_dropout is not None:
        parts.append(f"dropout = {_number(peft.lora_dropout)}")
    if peft.target_modules is not None:
        modules = (
            peft.target_modules if isinstance(peft.target_modules, str) else ", ".join(peft.target_modules)
        )
        parts.append(f"target modules: {modules}")
    return ", ".join(parts)


def _results(data: CardData) -> str:
    rows = [
        "Final values: the last one logged during training, and the last evaluation.",
        "",
        "| metric | training | evaluation | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, meaning in METRICS:
        rows.append(
            _row(f"`{key}`", _cell(data.train_metrics.get(key)), _cell(data.eval_metrics.get(key)), meaning)
        )
    return "\n".join(rows)


def _cell(metric: CardMetric | None) -> str:
    return NOT_MEASURED if metric is None else f"{_number(metric.value)} (step {metric.step})"


def _citations(data: CardData) -> str:
    blocks = [f"Cite DPO as:\n\n```bibtex\n{DPO_CITATION}\n```"]
    seen = {DPO_CITATION}
    for loss in data.losses:
        if loss.citation and loss.citation not in seen:
            seen.add(loss.citation)
            blocks.append(f"Cite the `{loss.name}` loss as:\n\n```bibtex\n{loss.citation}\n```")
    blocks.append(f"Cite TRL as:\n\n```bibtex\n{TRL_CITATION}\n```")
    return "\n\n".join(blocks)


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
        train_size=_size(trainer.train_dataset),
        eval_size=_size(trainer.eval_dataset),
        losses=card_losses(trainer.loss_plan),
        beta=float(args.beta),
        label_smoothing=float(args.label_smoothing),
        learning_rate=float(args.learning_rate),
        num_train_epochs=float(args.num_train_epochs),
        max_steps=int(args.max_steps),
        global_step=int(trainer.state.global_step),
        epoch=None if trainer.state.epoch is None else float(trainer.state.epoch),
        per_device_train_batch_size=int(args.per_device_train_batch_size),
        gradient_accumulation_steps=int(args.gradient_accumulation_steps),
        world_size=int(args.world_size),
        precision=precision_label(bf16=bool(args.bf16), fp16=bool(args.fp16), weights_dtype=dtype),
        seed=args.seed,
        peft=_peft_settings(model),
        versions=library_versions(),
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        tags=tuple(sorted(extra_tags)),
        chat_template=getattr(trainer.processing_class, "chat_template", None) is not None,
        **urls,
    )


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
        peft_type=str(getattr(peft_type, "value", peft_type)),
        r=getattr(config, "r", None),
        lora_alpha=getattr(config, "lora_alpha", None),
        lora_dropout=getattr(config, "lora_dropout", None),
        target_modules=modules,
    )


def _tracker_urls() -> dict[str, str | None]:
    from trl.trainer.utils import get_comet_experiment_url, get_trackio_space_url

    wandb = sys.modules.get("wandb")  # a W&B run exists only if the callback imported wandb
    run = getattr(wandb, "run", None)
    wandb_url = getattr(run, "url", None)
    return {
        "wandb_url": wandb_url,
        "trackio_url": get_trackio_space_url(),
        "comet_url": get_comet_experiment_url(),
    }


__all__ = [
    "METRICS",
    "CardData",
    "CardLoss",
    "CardMetric",
    "PeftSettings",
    "build_model_card",
    "card_data_from_trainer",
    "card_losses",
    "cdpo_margin_target",
    "final_metrics",
    "library_versions",
    "precision_label",
    "render_model_card",
]
