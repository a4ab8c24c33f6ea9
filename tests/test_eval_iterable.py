"""The sequence KL on every kind of evaluation set: map-style, `IterableDataset`, a dict of them, a dataset that
accelerate wraps; only the first rows are read, and a set it cannot read is named once, never a crash."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from trl_conservative.trainer.kl_logging import ROWS_PER_PROMPT, _eval_prompts, _unwrapped

pytestmark = pytest.mark.core

KL_SETTINGS = {"kl_sequence_prompts": 3, "kl_sequence_max_new_tokens": 4, "kl_sequence_samples_per_prompt": 2}


def _iterable(dataset: Any) -> Any:
    return dataset.to_iterable_dataset()


def _trainer(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, eval_dataset: Any, **kwargs: Any
) -> Any:
    from trl_conservative import ConservativeDPOTrainer

    cls = kwargs.pop("trainer_class", ConservativeDPOTrainer)
    args = make_config(max_steps=1, learning_rate=5e-2, **KL_SETTINGS, **kwargs)
    return cls(str(tiny_model_dir), args=args, train_dataset=tiny_dataset, eval_dataset=eval_dataset)


def _assert_sequence_kl(metrics: dict[str, Any], key: str) -> None:
    assert key in metrics, sorted(metrics)
    assert math.isfinite(metrics[key]) and metrics[key] >= 0


# --- in the trainer ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_iterable_eval_set_gets_the_sequence_kl(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    trainer = _trainer(tiny_model_dir, tiny_dataset, make_config, _iterable(tiny_dataset.select(range(6))))
    trainer.train()  # after training the policy differs from the reference: a KL above zero
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] is not None
    _assert_sequence_kl(metrics, "eval_kl/sequence")
    assert metrics["eval_kl/sequence"] > 0
    assert [h["eval_kl/sequence"] for h in trainer.state.log_history if "eval_kl/sequence" in h] == [
        metrics["eval_kl/sequence"]
    ]


@pytest.mark.slow
def test_a_dict_of_iterable_eval_sets_gets_one_sequence_kl_each(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    evalsets = {
        "first": _iterable(tiny_dataset.select(range(4))),
        "second": _iterable(tiny_dataset.select(range(8, 14))),
    }
    trainer = _trainer(tiny_model_dir, tiny_dataset, make_config, evalsets)
    trainer.train()
    trainer.evaluate()
    # One log per set, each with its own sequence KL. TRL prefixes its own metrics `eval_` whatever the set's name
    # (`eval_rewards/margins` too): the set is named by the loss key of the same log.
    logged = {}
    for name in evalsets:
        (log,) = [h for h in trainer.state.log_history if f"eval_{name}_loss" in h]
        _assert_sequence_kl(log, "eval_kl/sequence")
        logged[name] = log["eval_kl/sequence"]
    # Each set is sampled on its own prompts: two different estimates.
    assert logged["first"] != logged["second"]


@pytest.mark.slow
def test_a_set_without_prompts_is_named_once_and_evaluation_goes_on(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    class Elsewhere(ConservativeDPOTrainer):  # type: ignore[misc]
        PROMPT_COLUMN = "no_such_column"

    trainer = _trainer(
        tiny_model_dir,
        tiny_dataset,
        make_config,
        _iterable(tiny_dataset.select(range(4))),
        trainer_class=Elsewhere,
    )
    with caplog.at_level(logging.WARNING):
        first, second = trainer.evaluate(), trainer.evaluate()
    assert first["eval_loss"] is not None and second["eval_loss"] is not None
    assert "eval_kl/sequence" not in first and "eval_kl/sequence" not in second
    notes = [r.getMessage() for r in caplog.records if "kl/sequence" in r.getMessage()]
    assert len(notes) == 1, notes
    assert (
        "kl/sequence is not logged for the evaluation set 'eval'" in notes[0]
        and "'no_such_column'" in notes[0]
    )


@pytest.mark.slow
def test_prompts_the_sampler_refuses_never_stop_evaluation(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    """Evaluation prompts longer than the model's context: the sampler refuses them (a ValueError); the trainer
    says so once and evaluates on (a diagnostic never stops a run)."""
    import json
    import shutil

    from datasets import Dataset

    short = tmp_path / "short-context"
    shutil.copytree(tiny_model_dir, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 24
    (short / "config.json").write_text(json.dumps(config))
    long_rows = [{"prompt": "x" * 30 + str(i), "chosen": "yes", "rejected": "no"} for i in range(4)]
    trainer = _trainer(short, tiny_dataset, make_config, Dataset.from_list(long_rows), max_length=64)
    with caplog.at_level(logging.WARNING):
        first, second = trainer.evaluate(), trainer.evaluate()
    assert first["eval_loss"] is not None and second["eval_loss"] is not None
    assert "eval_kl/sequence" not in first
    notes = [r.getMessage() for r in caplog.records if "kl/sequence is not logged" in r.getMessage()]
    assert len(notes) == 1 and "context" in notes[0], notes


# --- reading the prompts --------------------------------------------------------------------------------------------
class _Counting(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """An endless stream of rows that repeat two prompts; counts the rows read."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        while True:
            self.read += 1
            yield {"prompt_ids": [1, 2] if self.read % 2 else [3]}


def test_reads_only_the_first_rows_it_needs() -> None:
    stream = _Counting()
    assert _eval_prompts(stream, 2, "prompt_ids") == [[1, 2], [3]]
    assert stream.read == 2
    # Fewer distinct prompts than wanted: it stops at the cap, it does not read the stream through.
    stream = _Counting()
    assert _eval_prompts(stream, 3, "prompt_ids") == [[1, 2], [3]]
    assert stream.read == 3 * ROWS_PER_PROMPT


def test_every_kind_of_set_yields_the_same_prompts() -> None:
    from accelerate.data_loader import IterableDatasetShard
    from datasets import Dataset

    rows = [{"prompt_ids": [i % 3 + 1] * 2, "chosen_ids": [5]} for i in range(9)]
    expected = [[1, 1], [2, 2], [3, 3]]
    mapped = Dataset.from_list(rows)
    for dataset in (
        mapped,
        mapped.to_iterable_dataset(),
        mapped.to_iterable_dataset().map(lambda row: row),  # column names unknown (None)
        rows,  # a plain map-style torch dataset of dicts
        _unwrapped(IterableDatasetShard(mapped.to_iterable_dataset(), num_processes=2, process_index=1)),
    ):
        assert _eval_prompts(dataset, 5, "prompt_ids") == expected, type(dataset)


@pytest.mark.parametrize(
    ("dataset", "reason"),
    [
        (None, "exposes no dataset"),
        ({"a": [], "b": []}, "dict of sets"),
        ([], "the evaluation set is empty"),
        ([{"text": "x"}], "no 'prompt_ids' column (keys: text)"),
        ([{"prompt_ids": []}], "its first 1 rows hold no prompt"),
        (object(), "cannot be read row by row"),
        ([{"prompt_ids": None}], "could not be read"),
    ],
)
def test_a_set_it_cannot_read_gets_a_reason(dataset: Any, reason: str) -> None:
    result = _eval_prompts(dataset, 2, "prompt_ids")
    assert isinstance(result, str) and reason in result, result


def test_a_map_style_set_without_the_column_is_not_read() -> None:
    from datasets import Dataset

    result = _eval_prompts(Dataset.from_list([{"text": "x"}]), 2, "prompt_ids")
    assert result == "its rows have no 'prompt_ids' column (columns: text)"
