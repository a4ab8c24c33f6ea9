"""`render_model_card`: the card's Markdown (and YAML front matter), a pure function of `CardData`.

TRL's card keeps its layout here (front matter, quick start, training procedure, framework versions,
citations) and gains what a reader needs to judge the run: the loss and its parameters, the settings that
shape it, and the final reward and KL metrics. Its quick start loads the hub id when there is one and the
saved folder's absolute path otherwise, so it runs as written. Same data, same card: no timestamps,
sorted tags.
"""

from __future__ import annotations

import json
import re

from huggingface_hub import ModelCard, ModelCardData

from trl_conservative.losses.sigmoid import DPO_CITATION
from trl_conservative.report.formatting import fmt_number
from trl_conservative.report.suspected_flips import LabelNoise

from .data import (
    DPO_PAPER_ID,
    DPO_PAPER_TITLE,
    METRICS,
    NOT_MEASURED,
    QUESTION,
    TRL_CITATION,
    TRL_CONSERVATIVE_CITATION,
    CardData,
    CardLoss,
    CardMetric,
    PeftSettings,
    cdpo_margin_target,
)

__all__ = ["build_model_card", "is_hub_dataset_id", "render_model_card"]


def _row(*cells: str) -> str:
    # A bare "|" ends a Markdown table cell, and KL(pi || pi_ref) or pi(y|x) hold some.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _literal(text: str) -> str:
    # A JSON string is also a valid Python string literal for these characters (quotes, backslashes, unicode).
    return json.dumps(text)


def _loss_label(loss: CardLoss, label_smoothing: float) -> str:
    if loss.name == "cdpo" or (loss.name == "sigmoid" and label_smoothing > 0):
        return f"`{loss.name}` (conservative DPO, eps = {fmt_number(label_smoothing)})"
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
        _label_noise_section(data),
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


def _label_noise_section(data: CardData) -> str:
    """What the run measured about its labels: the estimated share of flipped pairs, beside the eps it assumed."""
    if data.label_noise is None:
        return ""
    share, low, high, scored = data.label_noise
    interval = f"{share:.1%} (95% interval {low:.1%} to {high:.1%})"
    verdict = LabelNoise(share=share, low=low, high=high, scored=scored, pairs=scored).verdict
    finding = {
        "clean": f"no evidence of flipped labels among the {scored} training pairs scored: {interval}",
        "negligible": f"negligible among the {scored} training pairs scored: {interval}",
        "undetermined": f"undetermined: no evidence of flipped labels among the {scored} training pairs scored, "
        f"but up to {high:.1%} cannot be ruled out (95% interval {low:.1%} to {high:.1%}): the policy did not "
        "separate the pairs clearly enough to tell",
    }.get(verdict, f"about {round(share * scored)} of the {scored} training pairs scored look flipped: {interval}")
    return (
        f"- Label noise, estimated from the policy's margin on each pair when it was first trained on: {finding}. "
        "cDPO's eps is the assumed share of flipped labels; see trl-conservative's docs/choosing-a-loss.md."
    )


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
        rows.append(_row(_loss_label(loss, data.label_smoothing), fmt_number(loss.weight), params, source))
    lines = ["\n".join(rows), ""]
    lines.append(
        f"- beta = {fmt_number(data.beta)} (the DPO temperature: how strongly the policy is tied to the "
        "reference; IPO's tau)"
    )
    lines.append(
        f"- label_smoothing (eps) = {fmt_number(data.label_smoothing)} (the assumed share of flipped labels)"
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
            f"{fmt_number(target)}: compare `rewards/margins` below. With eps = 0 it is plain DPO."
        )
    if "ipo" in names:
        lines.append(
            "- IPO averaging: the IPO term uses each completion's log-ratio averaged over its tokens (as "
            "TRL 1.16 does) and pulls the averaged gap towards 1 / (2 beta) = "
            f"{fmt_number(1 / (2 * data.beta))}; the logged `rewards/*` stay beta times the summed log-ratio."
        )
    return "\n".join(lines)


def _settings(data: CardData) -> str:
    if data.max_steps > 0:
        schedule = f"max_steps = {data.max_steps}"
    else:
        schedule = f"num_train_epochs = {fmt_number(data.num_train_epochs)}"
    trained = f"{data.global_step} optimizer steps"
    if data.epoch is not None:
        trained += f", {fmt_number(data.epoch)} epochs"
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
        parts.append(f"alpha = {fmt_number(peft.lora_alpha)}")
    if peft.lora_dropout is not None:
        parts.append(f"dropout = {fmt_number(peft.lora_dropout)}")
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
    return NOT_MEASURED if metric is None else f"{fmt_number(metric.value)} (step {metric.step})"


def _citations(data: CardData) -> str:
    blocks = [f"Cite DPO as:\n\n```bibtex\n{DPO_CITATION}\n```"]
    seen = {DPO_CITATION}
    for loss in data.losses:
        if loss.citation and loss.citation not in seen:
            seen.add(loss.citation)
            blocks.append(f"Cite the `{loss.name}` loss as:\n\n```bibtex\n{loss.citation}\n```")
    blocks.append(f"Cite TRL as:\n\n```bibtex\n{TRL_CITATION}\n```")
    blocks.append(f"Cite trl-conservative as:\n\n```bibtex\n{TRL_CONSERVATIVE_CITATION}\n```")
    return "\n\n".join(blocks)
