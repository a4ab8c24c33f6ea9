"""The model card's data: `CardData` and its parts, plain values read from a run, and the facts derived from them."""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trl_conservative._version import __version__
from trl_conservative.metric_names import (
    KL_EXACT,
    KL_EXACT_CHOSEN,
    KL_EXACT_REJECTED,
    KL_SEQUENCE,
    LOGRATIO_CHOSEN,
    LOGRATIO_REJECTED,
    LOSS,
    REWARDS_ACCURACIES,
    REWARDS_MARGINS,
)
from trl_conservative.training_args import is_number

__all__ = [
    "TRL_CONSERVATIVE_CITATION",
    "BASE_TAGS",
    "METRICS",
    "NOT_MEASURED",
    "CardData",
    "CardLoss",
    "CardMetric",
    "PeftSettings",
    "cdpo_margin_target",
    "final_metrics",
    "library_versions",
    "precision_label",
]

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

# The package's own entry (CITATION.cff says the same; tests/test_packaging.py checks they agree).
TRL_CONSERVATIVE_CITATION = f"""\
@software{{trl_conservative,
  title   = {{{{trl-conservative: a drop-in TRL DPOTrainer with pluggable losses, KL monitoring and a report}}}},
  author  = {{{{trl-conservative contributors}}}},
  license = {{Apache-2.0}},
  version = {{{__version__}}},
  year    = {{2026}}
}}"""

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
    (LOSS, "the training objective: the weighted sum of the loss terms above"),
    (
        REWARDS_ACCURACIES,
        "share of pairs whose implicit reward beta * log(pi / pi_ref) is higher for the chosen answer",
    ),
    (
        REWARDS_MARGINS,
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
    # The estimated share of flipped training labels (report.suspected_flips.LabelNoise), when the run made one.
    label_noise: tuple[float, float, float, int] | None = None  # (share, low, high, pairs scored)
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
            if is_number(entry.get(key)):
                train[key] = CardMetric(value=float(entry[key]), step=step)
            if is_number(entry.get(f"eval_{key}")):
                evaluation[key] = CardMetric(value=float(entry[f"eval_{key}"]), step=step)
    return train, evaluation


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
