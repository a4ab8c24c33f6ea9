"""Check preference rows before training: what TRL would crash on, or silently train nothing from.

`trl-conservative run` calls `validate_preference_data` on every split before the trainer is built; from Python::

    from trl_conservative.run.validate import validate_preference_data
    train = validate_preference_data(train, name="my_pairs.jsonl", tokenizer=tok, max_length=1024)

Per row: `chosen` and `rejected` (and `prompt`, when the column exists) must be present, be text or chat messages
(a list of `{"role", "content"}` dicts) in the same format, and not be empty; `chosen` must differ from `rejected`
(an identical pair has a zero DPO gradient and counts as a wrong preference in the reward accuracy). With a
tokenizer and `max_length`, under `truncation_mode="keep_start"`, a row whose prompt alone fills `max_length`
keeps no completion token: TRL 1.16 drops it, TRL 0.2x keeps it with nothing to score (`keep_end`, TRL 0.2x's
default, cuts the prompt's start instead). When that is every row, training has nothing to learn from, which is an
error here; when it is some rows, a warning says how many.

Problems raise `DatasetError` (a `ConfigError`) with one line naming the rows and the fix, or with
`drop_bad_rows=True` the rows are dropped with a warning. Streaming datasets are checked on their first
`max_rows` rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

from trl_conservative.errors import DatasetError

__all__ = [
    "check_columns",
    "COLUMNS",
    "MAX_ROWS_DEFAULT",
    "REQUIRED",
    "SHOWN_ROWS",
    "DataReport",
    "Problem",
    "check_preference_rows",
    "check_truncation",
    "prompt_lengths",
    "validate_preference_data",
]

logger = logging.get_logger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")
REQUIRED = ("chosen", "rejected")
MAX_ROWS_DEFAULT = 100_000
SHOWN_ROWS = 3

# kind -> how the problem reads after "'chosen' ..." (or on its own for row-level kinds).
_KINDS = {
    "missing": "is missing",
    "not_text": "is not text or chat messages",
    "empty": "is empty",
    "mixed": "mixes plain text and chat messages",
    "identical": "'chosen' is identical to 'rejected'",
}


@dataclass(frozen=True)
class Problem:
    """One kind of bad value in one column, and the (0-based) rows that have it."""

    kind: str
    column: str | None
    rows: tuple[int, ...]
    example: Any = None

    def describe(self) -> str:
        shown = ", ".join(map(str, self.rows[:SHOWN_ROWS]))
        more = f" and {len(self.rows) - SHOWN_ROWS} more" if len(self.rows) > SHOWN_ROWS else ""
        where = f"row {shown}" if len(self.rows) == 1 else f"rows {shown}{more}"
        what = _KINDS[self.kind] if self.column is None else f"{self.column!r} {_KINDS[self.kind]}"
        if self.kind == "not_text":
            what += f" (got {type(self.example).__name__} {_short(self.example)})"
        return f"{what} in {where}"


@dataclass(frozen=True)
class DataReport:
    """What `check_preference_rows` found in the first `rows_checked` rows."""

    name: str
    split: str
    rows_checked: int
    complete: bool
    problems: tuple[Problem, ...] = ()

    @property
    def bad_rows(self) -> frozenset[int]:
        return frozenset(itertools.chain.from_iterable(p.rows for p in self.problems))

    @property
    def where(self) -> str:
        return f"Dataset {self.name!r} split {self.split!r}"

    def error(self) -> DatasetError | None:
        """The error to raise for these problems (None when there are none): one line, the rows and the fix."""
        if not self.problems:
            return None
        first, others = self.problems[0], self.problems[1:]
        also = f"; also {'; '.join(p.describe() for p in others[:2])}" if others else ""
        if len(others) > 2:
            also += f" (and {len(others) - 2} more problems)"
        total = f"{len(self.bad_rows)} of {self.rows_checked}{'' if self.complete else ' checked'} rows"
        fix = (
            "make each pair's chosen and rejected answers differ"
            if first.kind == "identical" and not others
            else "every row needs non-empty text (or chat messages) in 'chosen' and 'rejected', and in 'prompt' if "
            "the column exists"
        )
        return DatasetError(
            f"{self.where}: {first.describe()}{also} (row numbers count from 0). Fix the data ({fix}), or pass "
            f"drop_bad_rows=true to drop these {total}."
        )


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in value
    )


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or all(not str(m.get("content") or "").strip() for m in value)


def check_columns(names: Sequence[str], *, name: str, split: str) -> None:
    """Raise `DatasetError` when the `chosen` or `rejected` column is missing (`prompt` may be implicit: the shared
    start of chosen and rejected)."""
    absent = [c for c in REQUIRED if c not in names]
    if absent:
        raise DatasetError(
            f"Dataset {name!r} split {split!r} has no {' or '.join(map(repr, absent))} column (columns: "
            f"{', '.join(names) or 'none'}). A preference dataset needs 'chosen' and 'rejected' (and usually "
            "'prompt') columns; rename yours."
        )


def check_preference_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    name: str = "dataset",
    split: str = "train",
    max_rows: int | None = MAX_ROWS_DEFAULT,
) -> DataReport:
    """Find missing, non-text, empty, mixed-format and identical fields in the first `max_rows` rows.

    `rows` is a `datasets.Dataset`, an `IterableDataset` or any iterable of mappings; `columns` defaults to the
    dataset's `column_names` (else the first row's keys). A missing `chosen`/`rejected` column raises
    `DatasetError` at once.
    """
    names = list(columns if columns is not None else getattr(rows, "column_names", None) or [])
    iterator = iter(rows)
    head = list(itertools.islice(iterator, 1))
    if not names and head:
        names = list(head[0])
    check_columns(names, name=name, split=split)
    checked = [c for c in COLUMNS if c in names]
    found: dict[tuple[str, str | None], list[int]] = {}
    examples: dict[tuple[str, str | None], Any] = {}

    def note(kind: str, column: str | None, row: int, example: Any = None) -> None:
        found.setdefault((kind, column), []).append(row)
        examples.setdefault((kind, column), example)

    limit = max_rows if max_rows is not None else None
    count = 0
    for index, row in enumerate(itertools.chain(head, iterator)):
        if limit is not None and index >= limit:
            break
        count = index + 1
        formats = set()
        ok = True
        for column in checked:
            value = row.get(column)
            if value is None:
                note("missing", column, index)
            elif isinstance(value, str) or _is_messages(value):
                formats.add(isinstance(value, str))
                if _is_empty(value):
                    note("empty", column, index)
                    ok = False
                continue
            else:
                note("not_text", column, index, value)
            ok = False
        if len(formats) > 1:
            note("mixed", None, index)
        elif ok and row.get("chosen") == row.get("rejected"):
            note("identical", None, index)
    complete = limit is None or count < limit or _length(rows) == count
    order = list(_KINDS)
    problems = tuple(
        Problem(kind, column, tuple(rows_), examples[(kind, column)])
        for (kind, column), rows_ in sorted(
            found.items(), key=lambda kv: (order.index(kv[0][0]), str(kv[0][1]))
        )
    )
    return DataReport(name=name, split=split, rows_checked=count, complete=complete, problems=problems)


def _length(rows: Any) -> int | None:
    try:
        return len(rows)
    except TypeError:
        return None


def prompt_lengths(
    rows: Iterable[Mapping[str, Any]], tokenizer: Any, *, max_rows: int | None = None
) -> list[int]:
    """Token count of each row's prompt as TRL tokenizes it (chat template with the generation prompt)."""
    from trl.data_utils import extract_prompt, is_conversational

    lengths = []
    for row in itertools.islice(rows, max_rows):
        example = dict(row)
        if "prompt" not in example:
            example = extract_prompt(example)
        prompt = example["prompt"]
        if is_conversational(example):
            ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            lengths.append(len(ids["input_ids"]))
        else:
            lengths.append(len(tokenizer(text=prompt)["input_ids"]))
    return lengths


def check_truncation(
    lengths: Sequence[int],
    *,
    max_length: int | None,
    truncation_mode: str,
    name: str,
    split: str,
    max_prompt_length: int | None = None,
) -> int:
    """How many rows keep no completion token because the prompt fills `max_length`; `DatasetError` when that is
    every row. `max_prompt_length` (TRL 0.2x) cuts each prompt to its last that many tokens first."""
    if max_length is None or truncation_mode != "keep_start" or not lengths:
        return 0
    if max_prompt_length is not None:
        lengths = [min(n, max_prompt_length) for n in lengths]
    dropped = sum(1 for n in lengths if n >= max_length)
    if dropped == len(lengths):
        raise DatasetError(
            f"Dataset {name!r} split {split!r}: every prompt is at least max_length={max_length} tokens long "
            f"(shortest {min(lengths)}, longest {max(lengths)}), so truncation leaves no completion token to "
            f"train on. Raise max_length above {max(lengths)} plus the completion length, or shorten the prompts."
        )
    if dropped:
        from trl_conservative.trainer.trl_compat import TRL_STACK

        fate = (
            "TRL drops them (no completion token would remain)"
            if TRL_STACK == "fused_head"
            else "TRL 0.2x trains on them with no completion token (a zero log-ratio: nothing to learn, a tie in "
            "rewards/accuracies)"
        )
        logger.warning(
            f"{dropped} of {len(lengths)} rows of {name!r} split {split!r} have a prompt of max_length={max_length} "
            f"tokens or more; {fate}. Raise max_length to keep them."
        )
    return dropped


def validate_preference_data(
    dataset: Any,
    *,
    name: str = "dataset",
    split: str = "train",
    tokenizer: Any = None,
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
    drop_bad_rows: bool = False,
    max_rows: int | None = MAX_ROWS_DEFAULT,
    max_prompt_length: int | None = None,
) -> Any:
    """Check `dataset` (see the module docstring); returns it, without the bad rows when `drop_bad_rows`.

    Raises `DatasetError` naming the problem, the rows and the fix.
    """
    report = check_preference_rows(dataset, name=name, split=split, max_rows=max_rows)
    if report.problems:
        error = report.error()
        assert error is not None
        if not drop_bad_rows:
            raise error
        if not hasattr(dataset, "select") or not report.complete:
            raise DatasetError(
                f"{report.where}: drop_bad_rows needs a map-style dataset checked in full (this one is streamed or "
                f"longer than {max_rows} rows); clean the data instead. {error}"
            )
        bad = report.bad_rows
        if len(bad) == report.rows_checked:
            raise DatasetError(f"{report.where}: every row is unusable, nothing is left to train on. {error}")
        logger.warning(f"{report.where}: dropping {len(bad)} of {report.rows_checked} rows: {error}")
        dataset = dataset.select([i for i in range(report.rows_checked) if i not in bad])
    if tokenizer is not None and max_length is not None:
        lengths = prompt_lengths(dataset, tokenizer, max_rows=max_rows)
        check_truncation(
            lengths,
            max_length=max_length,
            truncation_mode=truncation_mode,
            name=name,
            split=split,
            max_prompt_length=max_prompt_length,
        )
    return dataset
