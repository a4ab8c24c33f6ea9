"""Resolve and check what a run loads: the model path and the preference dataset, before anything is written.

Models: a local folder (with `config.json`), a hub id (for users with network, or already in the offline
cache), or a builtin name (`BUILTIN_MODELS`: the tiny arithmetic model, the pretrained SmolLM2 chat model).
Datasets: a hub id, a local JSON/JSONL/parquet/CSV file, a local folder (`save_to_disk` output or a folder of data
files), or a builtin name (`BUILTIN_DATASETS`). Every user mistake raises `ConfigError` naming the problem and the
fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl_conservative.demo.chat_tasks import CHAT_DATASET, chat_dataset_files
from trl_conservative.demo.embedded import (
    BUILTIN_DATASET,
    BUILTIN_MODEL,
    builtin_dataset_files,
    builtin_model_path,
)
from trl_conservative.demo.pretrained import PRETRAINED_MODEL, pretrained_model_path
from trl_conservative.errors import ConfigError
from trl_conservative.file_checks import check_safetensors_in
from trl_conservative.trainer.validation import check_value
from trl_conservative.training_args import evaluates, plain

from .files import check_data_file, check_same_format, data_suffixes, open_data_file
from .settings_check import RANGES
from .validate import check_columns

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "FILE_BUILDERS",
    "PreferenceData",
    "load_preference_data",
    "resolve_model",
]

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}  # each also .gz, .bz2, .xz
# name -> (what it is, the function returning its folder: built into the cache on first use)
BUILTIN_MODELS: dict[str, tuple[str, Callable[..., Path]]] = {
    BUILTIN_MODEL: ("the tiny model of the embedded default", builtin_model_path),
    PRETRAINED_MODEL: ("SmolLM2-135M-Instruct, a pretrained chat model", pretrained_model_path),
}
# name -> (what it is, the function returning split -> data file)
BUILTIN_DATASETS: dict[str, tuple[str, Callable[[], dict[str, str]]]] = {
    BUILTIN_DATASET: ("text pairs for the tiny model", builtin_dataset_files),
    CHAT_DATASET: ("chat pairs for the chat model", chat_dataset_files),
}


def _builtin_names(table: dict[str, tuple[str, Any]]) -> str:
    return " or ".join(f"{name!r} ({about})" for name, (about, _) in table.items())


@dataclass
class PreferenceData:
    train: Any  # datasets.Dataset
    eval: Any | None
    name: str


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~"))
        or os.sep + os.sep in name
        or Path(name).suffix != ""
        or name.count("/") > 1
    )


def resolve_model(name: str, *, log: Any = None) -> str:
    """The path or hub id to load the model from; builds the builtin model into the cache if needed."""
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise ConfigError(
                f"Unknown builtin model {name!r}. The builtin model is {_builtin_names(BUILTIN_MODELS)}."
            )
        return str(BUILTIN_MODELS[name][1](log=log))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(
                f"Model path {name!r} is a file, not a folder. Point model_name_or_path at the folder written by "
                "save_pretrained (the one holding config.json)."
            )
        if (path / "config.json").is_dir():
            raise ConfigError(
                f"Model path {name!r} holds a folder named config.json where the model's config file should be. "
                "Point model_name_or_path at a folder written by save_pretrained."
            )
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ConfigError(
                f"Model path {name!r} is not a saved model (no config.json in it). "
                "Point model_name_or_path at a folder written by save_pretrained."
            )
        check_safetensors_in(path, "Model")
        return str(path)
    if _looks_like_path(name):
        raise ConfigError(
            f"Model path {name!r} does not exist. Fix model_name_or_path: a folder written by save_pretrained, "
            "or a hub id such as 'meta-llama/Llama-3.1-8B-Instruct'."
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ConfigError(
                f"Model {name!r} is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set. "
                "Download it first, unset HF_HUB_OFFLINE, or point model_name_or_path at a local folder."
            )
    return name


def load_preference_data(script: Any, training: Any) -> PreferenceData:
    """Load the train (and, if evaluation is on, the held-out) split and check their columns and sizes."""
    name = script.dataset_name
    dataset = _load(name, script)
    splits = list(dataset)
    train_split = script.dataset_train_split
    if train_split not in dataset:
        raise ConfigError(
            f"Dataset {name!r} has no split {train_split!r} (splits: {', '.join(splits)}). "
            "Set dataset_train_split to one of them."
        )
    train = dataset[train_split]
    eval_data = None
    test_split = script.dataset_test_split
    if evaluates(training):
        if test_split in dataset and test_split != train_split:
            eval_data = dataset[test_split]
        elif script.test_split_size:
            check_value("test_split_size", script.test_split_size, RANGES)
            _check(train, name, train_split)
            try:
                parts = train.train_test_split(test_size=script.test_split_size, seed=training.seed)
            except ValueError as exc:  # a split that would leave the train or the test part empty
                raise ConfigError(
                    f"test_split_size {script.test_split_size} cannot split the {len(train)} rows of dataset "
                    f"{name!r} split {train_split!r} into two non-empty parts ({' '.join(str(exc).split())[:160]}). "
                    "Choose a test_split_size that leaves rows on both sides, or give a dataset_test_split."
                ) from None
            train, eval_data = parts["train"], parts["test"]
            if len(train) == 0 or len(eval_data) == 0:
                raise ConfigError(
                    f"test_split_size {script.test_split_size} leaves the "
                    f"{'train' if len(train) == 0 else 'held-out'} part of dataset {name!r} empty. Choose a "
                    "test_split_size that leaves rows on both sides."
                )
        else:
            strategy = plain(training.eval_strategy)
            why = f"eval_strategy is {strategy!r}" if strategy != "no" else "eval_on_start is True"
            raise ConfigError(
                f"{why} but dataset {name!r} has no split {test_split!r} "
                f"(splits: {', '.join(splits)}). Set dataset_test_split, or test_split_size: 0.1, "
                "or eval_strategy: 'no' and eval_on_start: false."
            )
    _check(train, name, train_split)
    if eval_data is not None:
        _check(eval_data, name, test_split)
    return PreferenceData(train=train, eval=eval_data, name=name)


def _check(split: Any, name: str, split_name: str) -> None:
    check_columns(list(getattr(split, "column_names", None) or []), name=name, split=split_name)
    if hasattr(split, "__len__") and len(split) == 0:
        raise ConfigError(
            f"Dataset {name!r} split {split_name!r} is empty. Give a dataset with preference pairs."
        )


def _load(name: str, script: Any) -> Any:
    import datasets

    streaming = bool(getattr(script, "dataset_streaming", False))
    if name.startswith("builtin:"):
        if name not in BUILTIN_DATASETS:
            raise ConfigError(
                f"Unknown builtin dataset {name!r}. The builtin dataset is {_builtin_names(BUILTIN_DATASETS)}."
            )
        return datasets.load_dataset("json", data_files=BUILTIN_DATASETS[name][1](), streaming=streaming)
    path = Path(name).expanduser()
    if path.is_file():
        check_data_file(path, name)
    if _is_empty(path):
        raise ConfigError(f"Dataset {name!r} is empty. Give a dataset with preference pairs.")
    try:
        if path.is_file():
            suffix, compression = data_suffixes(path)
            builder = FILE_BUILDERS.get(suffix)
            if builder is None:
                raise ConfigError(
                    f"Dataset file {name!r} has an unsupported type {suffix + compression or path.suffix!r}. "
                    f"Use one of {', '.join(sorted(FILE_BUILDERS))} (compressed as .gz, .bz2 or .xz if you like), "
                    "a dataset folder or a hub id."
                )
            kwargs = _csv_as_text(path) if builder == "csv" else {}
            return datasets.load_dataset(builder, data_files=str(path), streaming=streaming, **kwargs)
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
                return (
                    loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
                )
            summaries = []
            for data_file in sorted(path.rglob("*")):  # a folder of data files: name a bad one precisely
                hidden = any(part.startswith(".") for part in data_file.relative_to(path).parts)
                if data_file.is_file() and not hidden:
                    summary = check_data_file(data_file, str(data_file), summarize=True)
                    if summary is not None:
                        summaries.append((str(data_file), summary))
            check_same_format(name, summaries)
            return datasets.load_dataset(str(path), name=script.dataset_config, streaming=streaming)
        if _looks_like_path(name):
            raise ConfigError(
                f"Dataset {name!r} does not exist. Fix dataset_name: a JSON/JSONL/parquet file, a dataset folder, "
                "or a hub id."
            )
        return datasets.load_dataset(name, name=script.dataset_config, streaming=streaming)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types (DatasetNotFoundError, ArrowInvalid, OSError, ...)
        # "An error occurred while generating the dataset" says nothing: say its cause
        said: BaseException = exc
        if exc.__cause__ is not None and type(exc).__name__ == "DatasetGenerationError":
            said = exc.__cause__
        first = " ".join(str(said).split())[:300]
        raise ConfigError(
            f"Could not load dataset {name!r}: {type(said).__name__}: {first}. Fix dataset_name or the file."
        ) from None


def _csv_as_text(path: Path) -> dict[str, Any]:
    """Read every CSV column as text: "11" stays the answer "11", an empty cell stays "" (not an int, not NaN)."""
    import csv
    import io

    import datasets

    with open_data_file(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), [])  # utf-8-sig: a byte order mark is not part of the first column's name
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False}


def _is_empty(path: Path) -> bool:
    """An empty data file or an empty `save_to_disk` folder, which `datasets` fails on with obscure errors."""
    if path.is_file():
        if data_suffixes(path)[1]:  # compressed: what matters is what it holds
            with open_data_file(path) as fh:
                return not fh.read(1 << 20).strip(b" \t\r\n\xef\xbb\xbf")
        return path.stat().st_size == 0 or (
            path.stat().st_size < 64 and not path.read_bytes().strip(b" \t\r\n\xef\xbb\xbf")
        )
    states = [path / "state.json"] if (path / "state.json").is_file() else sorted(path.glob("*/state.json"))
    if not states or not path.is_dir():
        return False
    try:
        return all(not json.loads(state.read_text()).get("_data_files") for state in states)
    except (OSError, ValueError):
        return False
