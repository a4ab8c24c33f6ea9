"""The embedded default run: a tiny model taught the arithmetic task by SFT, and the shipped preference data.

`trl-conservative run` with no config reads `data/default.yaml`, whose model and dataset are the names below:
  - ``builtin:tiny-arithmetic``: a tiny Llama with the character-level tokenizer of `trl_conservative.demo.tiny`,
    trained by a short supervised loop on the task's SFT split, so the DPO reference already knows the task.
    Built once and reused from the cache (`$TRL_CONSERVATIVE_CACHE`, default ``~/.cache/trl-conservative``).
  - ``builtin:arithmetic``: the task's shipped `train`/`test` preference splits (see `trl_conservative.demo.tasks`).
Any config may use these names, e.g. the small per-loss examples.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .tasks import DATA_DIR, SFT_FILE, TEST_FILE, TRAIN_FILE, read_jsonl

__all__ = [
    "sft_tensors",
    "BUILTIN_DATASET",
    "BUILTIN_MODEL",
    "CACHE_ENV",
    "DEFAULT_CONFIG",
    "WarmupRecipe",
    "builtin_dataset_files",
    "build_in_cache",
    "builtin_model_path",
    "cache_dir",
    "saved_format",
    "warm_up",
]

BUILTIN_MODEL = "builtin:tiny-arithmetic"
BUILTIN_DATASET = "builtin:arithmetic"
DEFAULT_CONFIG = DATA_DIR / "default.yaml"
CACHE_ENV = "TRL_CONSERVATIVE_CACHE"


@dataclass(frozen=True, kw_only=True)
class WarmupRecipe:
    """The tiny model's size and the SFT loop that teaches it the task. Part of the cache key."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        sft = (DATA_DIR / SFT_FILE).read_bytes()
        blob = json.dumps(asdict(self), sort_keys=True).encode() + sft
        return hashlib.sha256(blob).hexdigest()[:12]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trl-conservative")


def builtin_dataset_files() -> dict[str, str]:
    """Split name -> path of the shipped preference JSONL files."""
    return {"train": str(DATA_DIR / TRAIN_FILE), "test": str(DATA_DIR / TEST_FILE)}


def saved_format() -> str:
    """A suffix for folders saved by transformers 4 (TRL 0.2x): transformers 5 saves its tokenizer as
    `TokenizersBackend`, which transformers 4 cannot load, so each keeps its own copy in a shared cache."""
    import transformers

    return "-transformers4" if int(transformers.__version__.split(".")[0]) < 5 else ""


def builtin_model_path(recipe: WarmupRecipe | None = None, *, log: Any = None) -> Path:
    """Path of the SFT-warmed tiny model, building it into the cache first if it is not there."""
    recipe = recipe or WarmupRecipe()
    target = cache_dir() / f"tiny-arithmetic-{recipe.key()}{saved_format()}"

    def build(folder: Path) -> None:
        if log is not None:
            log(
                f"Building the tiny model and teaching it the task by SFT ({recipe.steps} steps) into {target}"
            )
        model, tokenizer, _ = warm_up(recipe)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_in_cache(target, build, required=("config.json",))


def build_in_cache(target: Path, build: Callable[[Path], None], *, required: Sequence[str]) -> Path:
    """`target`, first built by `build(folder)` unless it holds every `required` file (one that lacks any is rebuilt).

    `build` writes into a temporary sibling that is then renamed, so concurrent runs (or an interrupted one) never
    see half a model.
    """
    if _complete(target, required):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(tmp)
        if target.exists() and not _complete(target, required):  # a damaged copy: set aside, then removed
            stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=target.parent))
            try:
                target.rename(stale / target.name)
            except OSError:  # another process moved it first
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not _complete(target, required):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(folder: Path, required: Sequence[str]) -> bool:
    return all((folder / name).is_file() for name in required)


def warm_up(recipe: WarmupRecipe) -> tuple[Any, Any, list[float]]:
    """Train a fresh tiny model on the SFT split (loss on the answer tokens); returns model, tokenizer, losses."""
    import torch

    from .tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(
        len(tokenizer),
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        intermediate_size=recipe.intermediate_size,
        seed=recipe.seed,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast alone and ~2x faster on a busy machine
    try:
        return _train(model, tokenizer, recipe)
    finally:
        torch.set_num_threads(threads)


def _train(model: Any, tokenizer: Any, recipe: WarmupRecipe) -> tuple[Any, Any, list[float]]:
    import torch

    rows = read_jsonl(DATA_DIR / SFT_FILE)
    input_ids, labels = sft_tensors(rows, tokenizer)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / recipe.steps)
    losses = []
    model.train()
    for _ in range(recipe.steps):
        idx = torch.randint(0, input_ids.size(0), (recipe.batch_size,), generator=generator)
        out = model(
            input_ids=input_ids[idx],
            attention_mask=(input_ids[idx] != tokenizer.pad_token_id),
            labels=labels[idx],
        )
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(out.loss.detach().item())
    model.eval()
    return model, tokenizer, losses


def sft_tensors(rows: list[dict[str, str]], tokenizer: Any) -> tuple[Any, Any]:
    """Right-padded SFT `input_ids` and `labels` (-100 outside the completion plus its end token) for `rows`."""
    import torch

    seqs, masks = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        seqs.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    completion = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return input_ids, input_ids.masked_fill(completion == 0, -100)
