"""Check preference rows before training: what TRL would crash on, or silently train nothing from.

`trl-conservative run` calls `validate_preference_data` on every split before the trainer is built; from Python::

    from trl_conservative.run.validate import validate_preference_data
    train = validate_preference_data(train, name="my_pairs.jsonl", tokenizer=tok, max_length=1024)

Per row: `chosen` and `rejected` (and `prompt` and `completion`, when the columns exist) must be present, be text or
chat messages in the same format, and not be empty; `chosen` must differ from `rejected` (an identical pair has a zero
DPO gradient and counts as a wrong preference in the reward accuracy). A split is all text or all chat messages.

Chat messages are `{"role", "content"}` mappings with a known role (`ROLES`) and text content (or a list of
`{"type": ...}` parts; none beside `tool_calls`). The completions (`chosen`, `rejected`, `completion`) are the answer
the model is trained to give: assistant turns only; the prompt holds the rest (system, user, assistant and tool
turns). Without a `prompt` column the prompt is the opening turns `chosen` and `rejected` share, as TRL extracts it
(`extract_prompt`): it must not be empty, and what follows it is checked as the completions. TRL 0.2x renders a chat
prompt only when it ends on a user or assistant turn, and fails on chat rows that also have a `completion`,
`messages` or `label` column.

The other columns TRL's `DPOTrainer` reads (`EXTRA_COLUMNS`) are checked when present: `tools` (a list of tool
definitions, or that list as JSON text), `chat_template_kwargs` (a mapping), `ref_chosen_logps` and
`ref_rejected_logps` (finite numbers <= 0, both or neither), `images` (a list of images) and `image` (one). TRL 1.16
reads `tools` and `chat_template_kwargs` per row; TRL 0.2x ignores them (a warning says so).

With a tokenizer and `max_length`, under `truncation_mode="keep_start"`, a row whose prompt alone fills `max_length`
keeps no completion token: TRL 1.16 drops it, TRL 0.2x keeps it with nothing to score (`keep_end`, TRL 0.2x's
default, cuts the prompt's start instead). When that is every row, training has nothing to learn from, which is an
error here; when it is some rows, a warning says how many.

Problems raise `DatasetError` (a `ConfigError`) with one line naming the rows, the columns and the fix, or with
`drop_bad_rows=True` the rows are dropped with a warning (a split mixing text and chat rows keeps the format most of
its rows have). Row numbers are the rows' positions in the split as loaded (0-based: the JSONL line minus one), also
after `test_split_size` shuffled them. Streaming datasets are checked on their first `max_rows` rows.

`datasets` reads a JSON column that mixes value types (text in some rows, chat messages or numbers in others) as
JSON, turning the text "23" into the number 23: in such a column a number or true/false counts as text, and a split
that passes is given back with that column as the text the file holds.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

from trl_conservative.errors import DatasetError

__all__ = [
    "check_columns",
    "COLUMNS",
    "COMPLETIONS",
    "EXTRA_COLUMNS",
    "MAX_ROWS_DEFAULT",
    "REQUIRED",
    "ROLES",
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
COMPLETIONS = ("chosen", "rejected", "completion")  # the answer the model learns to give: assistant turns only
ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")  # the roles chat templates render
# The other columns TRL's DPOTrainer reads from a row (TRL 1.16 and 0.2x's dpo_trainer.py).
EXTRA_COLUMNS = ("tools", "chat_template_kwargs", "ref_chosen_logps", "ref_rejected_logps", "images", "image")
_TRL_0_CHAT_KEYS = ("completion", "messages", "label")  # TRL 0.2x's apply_chat_template: "Invalid keys" with these
MAX_ROWS_DEFAULT = 100_000
SHOWN_ROWS = 3

# kind -> how the problem reads after "'chosen' ..." (or on its own for row-level kinds); the order problems are told
_KINDS = {
    "split_mixed": "the split mixes plain-text rows and chat-message rows",
    "missing": "is missing",
    "not_text": "is not text or chat messages",
    "empty": "is empty",
    "mixed": "mixes plain text and chat messages",
    "bad_message": "has a message that is not a {'role', 'content'} mapping with text content",
    "json_content": "has a message whose text datasets read as a number",
    "unknown_role": "has a turn with an unknown role",
    "no_prompt": "'chosen' and 'rejected' share no opening turn",
    "no_answer": "holds no answer after the opening turns it shares with the other",
    "role": "has a turn that is not the assistant's",
    "prompt_end": "ends on a turn TRL 0.2x cannot render",
    "tools": "is not a list of tool definitions",
    "chat_template_kwargs": "is not a mapping of keyword: value",
    "logps": "is not a log-probability (a finite number <= 0)",
    "image": "is not an image",
    "identical": "'chosen' is identical to 'rejected'",
    "trl0_keys": "is a column TRL 0.2x cannot take beside chat rows",
}
_DEFAULT_FIX = (
    "every row needs non-empty text (or chat messages) in 'chosen' and 'rejected', and in 'prompt' if the column exists"
)
_FIXES = {
    "identical": "make each pair's chosen and rejected answers differ",
    "split_mixed": "give every row of a split one format: all plain text, or all chat messages",
    "mixed": "give a row's prompt and answers one format: all plain text, or all chat messages",
    "bad_message": "each message is a {\"role\": ..., \"content\": ...} mapping whose content is text or a list of "
    "{\"type\": ...} parts",
    "unknown_role": f"give each message one of the roles {', '.join(ROLES)}",
    "json_content": "give the messages of a column one form of content, all text or all lists of {\"type\": ...} "
    "parts: datasets reads a column mixing them as JSON, which turns text such as \"42\" into the number 42",
    "role": "'chosen', 'rejected' and 'completion' hold only the answer, assistant turns; system, user and tool turns "
    "belong in the prompt",
    "no_prompt": "without a 'prompt' column, 'chosen' and 'rejected' must open with the same prompt turns and differ "
    "only in the answer after them; or add a 'prompt' column",
    "no_answer": "without a 'prompt' column, 'chosen' and 'rejected' each hold the prompt turns they share, then an "
    "answer of assistant turns; or add a 'prompt' column",
    "prompt_end": "end each chat prompt on a user turn (TRL 0.2x renders a prompt ending on a user or assistant turn "
    "only), or use TRL 1.16",
    "tools": "'tools' holds a list of tool definitions (JSON schema objects), that list as JSON text, or null",
    "chat_template_kwargs": "'chat_template_kwargs' holds a mapping of keyword: value passed to the chat template in "
    "every row ({} for none)",
    "logps": "'ref_chosen_logps' and 'ref_rejected_logps' hold each pair's summed reference log-probability, a finite "
    "number <= 0; remove both columns to let TRL compute them",
    "image": "'images' holds a list of images (or image paths) and 'image' one, or null",
    "trl0_keys": "remove or rename that column: TRL 0.2x's chat template step takes a row of prompt, chosen and rejected "
    "only",
}


@dataclass(frozen=True)
class Problem:
    """One kind of bad value in one column, and the (0-based) positions of the rows that have it.

    `example` is the first bad value (for "role", "unknown_role", "bad_message": `(turn, role or message)`; for
    "split_mixed": `(text rows, chat rows)`); `detail` says more about it (a JSON parse error, a TRL version).
    """

    kind: str
    column: str | None
    rows: tuple[int, ...]
    example: Any = None
    detail: str = ""

    def describe(self, numbers: Sequence[int] | None = None) -> str:
        """The problem in words; `numbers` maps a row's position to the row number the user knows (else itself)."""
        if self.kind == "trl0_keys":
            return (
                f"the {self.column!r} column beside chat rows fails TRL {self.detail}'s chat template step (\"Invalid "
                "keys in the example\")"
            )
        if self.kind == "split_mixed":
            text_rows, chat_rows = self.example
            return (
                f"{_KINDS[self.kind]} (text in {_rows(text_rows, numbers, 'rows')}; chat messages in "
                f"{_rows(chat_rows, numbers, 'rows')})"
            )
        what = _KINDS[self.kind] if self.column is None else f"{self.column!r} {_KINDS[self.kind]}"
        tail = ""
        if self.kind in ("not_text", "tools", "chat_template_kwargs", "logps", "image"):
            what += f" (got {_got(self.example)}{': ' + self.detail if self.detail else ''})"
        elif self.kind == "prompt_end" and self.column is None:
            turn, found = self.example
            what = f"the prompt 'chosen' and 'rejected' open with ends on a {found!r} turn (turn {turn})"
            tail = f", which {self.detail}'s chat template step refuses"
        elif self.kind in ("role", "unknown_role", "bad_message", "prompt_end", "json_content"):
            turn, found = self.example
            if self.kind == "bad_message":
                what = f"{self.column!r} has a message that is not a {{'role', 'content'}} mapping with text content"
                what += f" (turn {turn}: {_short(found)})"
            elif self.kind == "json_content":
                what = f"{self.column!r} has a message whose text reads as {type(found).__name__} {found!r} (turn {turn})"
                tail = (
                    ", since datasets read its content as JSON (text in some messages, lists of parts in others) and "
                    "turned the text into a number"
                )
            elif self.kind == "unknown_role":
                what = f"{self.column!r} has a turn with the unknown role {found!r} (turn {turn})"
            elif self.kind == "role":
                what = f"{self.column!r} has a {found!r} turn (turn {turn})"
                tail = ", where only the answer's assistant turns belong"
            else:
                what = f"{self.column!r} ends on a {found!r} turn (turn {turn})"
                tail = f", which {self.detail}'s chat template step refuses"
        elif self.kind == "no_prompt":
            tail = ", so the prompt TRL takes from them (their shared opening turns) is empty"
        return f"{what} in {_rows(self.rows, numbers)}{tail}"


def _rows(rows: Sequence[int], numbers: Sequence[int] | None, plural: str = "") -> str:
    shown = ", ".join(str(numbers[i] if numbers is not None else i) for i in rows[:SHOWN_ROWS])
    more = f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
    if plural:
        return f"{plural} {shown}{more}" if len(rows) > 1 else f"row {shown}"
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}{more}"


def _got(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {_short(value)}"


@dataclass(frozen=True)
class DataReport:
    """What `check_preference_rows` found in the first `rows_checked` rows.

    `numbers` maps a row's position in the dataset checked to its number in the split as loaded (a shuffled or
    selected view of it numbers its rows as the file does), or is None when they are the same.
    """

    name: str
    split: str
    rows_checked: int
    complete: bool
    problems: tuple[Problem, ...] = ()
    numbers: tuple[int, ...] | None = None

    @property
    def bad_rows(self) -> frozenset[int]:
        return frozenset(itertools.chain.from_iterable(p.rows for p in self.problems))

    @property
    def where(self) -> str:
        return f"Dataset {self.name!r} split {self.split!r}"

    @property
    def column_problem(self) -> bool:
        """A problem of a column rather than of rows, which `drop_bad_rows` cannot fix."""
        return any(not p.rows for p in self.problems)

    @property
    def undecided(self) -> bool:
        """A split with as many text rows as chat rows: `drop_bad_rows` cannot tell which format is meant."""
        return any(p.kind == "split_mixed" and len(p.example[0]) == len(p.example[1]) for p in self.problems)

    def error(self) -> DatasetError | None:
        """The error to raise for these problems (None when there are none): one line, the rows and the fix."""
        if not self.problems:
            return None
        first, others = self.problems[0], self.problems[1:]
        also = f"; also {'; '.join(p.describe(self.numbers) for p in others[:2])}" if others else ""
        if len(others) > 2:
            also += f" (and {len(others) - 2} more problems)"
        total = f"{len(self.bad_rows)} of {self.rows_checked}{'' if self.complete else ' checked'} rows"
        fix = _FIXES.get(first.kind, _DEFAULT_FIX) if first.kind != "identical" or not others else _DEFAULT_FIX
        if self.column_problem:
            drop = ""
        elif self.undecided:
            drop = "; drop_bad_rows cannot choose between them, as many rows hold text as chat messages"
        else:
            drop = f", or pass drop_bad_rows=true to drop these {total}"
        return DatasetError(
            f"{self.where}: {first.describe(self.numbers)}{also} (row numbers count from 0). Fix the data ({fix})"
            f"{drop}."
        )


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_messages(value: Any) -> bool:
    """A list of mappings: chat messages in shape (each message's role and content are checked apart)."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, Mapping) for m in value)


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if not isinstance(value, list):
        return False  # a number read from text (see the module docstring) is not empty
    return not value or all(
        isinstance(m, Mapping) and not str(m.get("content") or "").strip() and not m.get("tool_calls") for m in value
    )


def _content_ok(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    if isinstance(content, str):
        return True
    if isinstance(content, list):  # parts: [{"type": "text", "text": ...}, {"type": "image"}]
        return all(isinstance(part, Mapping) and isinstance(part.get("type"), str) for part in content)
    return content is None and bool(message.get("tool_calls"))  # an assistant turn that only calls a tool


def check_columns(names: Sequence[str], *, name: str, split: str) -> None:
    """Raise `DatasetError` when the `chosen` or `rejected` column is missing (`prompt` may be implicit: the shared
    start of chosen and rejected), or when one of `ref_chosen_logps` and `ref_rejected_logps` comes without the
    other."""
    absent = [c for c in REQUIRED if c not in names]
    if absent:
        raise DatasetError(
            f"Dataset {name!r} split {split!r} has no {' or '.join(map(repr, absent))} column (columns: "
            f"{', '.join(names) or 'none'}). A preference dataset needs 'chosen' and 'rejected' (and usually "
            "'prompt') columns; rename yours."
        )
    pair = ("ref_chosen_logps", "ref_rejected_logps")
    given = [c for c in pair if c in names]
    if len(given) == 1:
        other = pair[1 - pair.index(given[0])]
        raise DatasetError(
            f"Dataset {name!r} split {split!r} has a {given[0]!r} column but no {other!r} column: TRL uses "
            "precomputed reference log-probabilities only as a pair (one alone is ignored, or read with nothing to "
            f"compare it to). Add {other!r}, or remove {given[0]!r} to let TRL compute both."
        )


def _trl_version() -> tuple[bool, str]:
    """(whether the installed TRL is the 0.2x line, its version)."""
    from importlib.metadata import version

    from trl_conservative.trainer.trl_compat import TRL_STACK

    return TRL_STACK != "fused_head", version("trl")


def _is_json_feature(feature: Any) -> bool:
    """A `datasets` column read as JSON: the JSON loader's answer to a column mixing value types."""
    return type(feature).__name__ == "Json"


def _has_json(feature: Any) -> bool:
    """Whether a nested `datasets` feature holds a JSON-read part (a message's content mixing text and lists)."""
    if isinstance(feature, Mapping):
        return any(_has_json(f) for f in feature.values())
    if isinstance(feature, list | tuple):
        return any(_has_json(f) for f in feature)
    inner = getattr(feature, "feature", None)
    return _is_json_feature(feature) or (inner is not None and _has_json(inner))


def _kind(value: Any, json_column: bool) -> str | None:
    """ "text", "chat", "other" (not text nor chat messages), or None (missing, or an empty list: no format)."""
    if isinstance(value, str) or (json_column and isinstance(value, int | float | bool)):
        return "text"  # in a JSON-read column, text such as "23" or "true" comes back as a number or a bool
    if isinstance(value, list) and not value:
        return None
    if _is_messages(value):
        return "chat"
    return None if value is None else "other"


def _shared_prefix(chosen: list[Any], rejected: list[Any]) -> int:
    """How many opening turns `chosen` and `rejected` share: TRL's `extract_prompt` takes them as the prompt (when
    one conversation is all opening turns of the other, one turn fewer)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return shared


def _extra_problem(column: str, value: Any) -> tuple[str, str] | None:
    """(kind, detail) when a value of one of `EXTRA_COLUMNS` is not what TRL reads there, else None."""
    if column == "tools":
        if value is None:
            return None
        tools = value
        if isinstance(value, str):  # TRL 1.16 json.loads a string
            try:
                tools = json.loads(value)
            except ValueError as exc:
                return "tools", f"not valid JSON: {getattr(exc, 'msg', exc)}"
        if isinstance(tools, list) and all(isinstance(tool, Mapping) for tool in tools):
            return None
        return "tools", "" if tools is value else f"JSON holding {type(tools).__name__}"
    if column == "chat_template_kwargs":
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return None
        return "chat_template_kwargs", "TRL passes it to the chat template as keyword arguments" if value is None else ""
    if column in ("ref_chosen_logps", "ref_rejected_logps"):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value <= 0:
            return None
        positive = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return "logps", "a log-probability is never positive" if positive and math.isfinite(value) else ""
    if column == "images":
        if value is None or (isinstance(value, list) and all(_is_image(v) for v in value)):
            return None
        return "image", "" if isinstance(value, list) else "'images' takes a list"
    if column == "image":
        return None if value is None or _is_image(value) else ("image", "")
    return None


def _is_image(value: Any) -> bool:
    """A PIL image, a `datasets` Image value ({"bytes", "path"}) or a path or URL."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, Mapping):
        return value.get("bytes") is not None or bool(value.get("path"))
    return hasattr(value, "size") and hasattr(value, "mode")


def check_preference_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    name: str = "dataset",
    split: str = "train",
    max_rows: int | None = MAX_ROWS_DEFAULT,
) -> DataReport:
    """Find missing, non-text, empty, mixed-format and identical fields, chat turns that do not belong where they
    are, and bad values in the other columns TRL reads, in the first `max_rows` rows.

    `rows` is a `datasets.Dataset`, an `IterableDataset` or any iterable of mappings; `columns` defaults to the
    dataset's `column_names` (else the first row's keys). A missing `chosen`/`rejected` column raises
    `DatasetError` at once, and so do columns TRL 0.2x cannot take beside chat rows.
    """
    names = list(columns if columns is not None else getattr(rows, "column_names", None) or [])
    iterator = iter(rows)
    head = list(itertools.islice(iterator, 1))
    if not names and head:
        names = list(head[0])
    check_columns(names, name=name, split=split)
    trl_0, trl_version = _trl_version()
    checked = [c for c in (*COLUMNS, "completion") if c in names]
    extras = [c for c in EXTRA_COLUMNS if c in names]
    features = getattr(rows, "features", None) or {}
    json_columns = {c for c in checked if _is_json_feature(features.get(c))}
    json_inside = frozenset(c for c in checked if c not in json_columns and _has_json(features.get(c)))
    implicit = "prompt" not in names
    found: dict[tuple[str, str | None], list[int]] = {}
    examples: dict[tuple[str, str | None], tuple[Any, str]] = {}
    text_rows: list[int] = []
    chat_rows: list[int] = []

    def note(kind: str, column: str | None, row: int, example: Any = None, detail: str = "") -> None:
        found.setdefault((kind, column), []).append(row)
        examples.setdefault((kind, column), (example, detail))

    limit = max_rows if max_rows is not None else None
    count = 0
    for index, row in enumerate(itertools.chain(head, iterator)):
        if limit is not None and index >= limit:
            break
        count = index + 1
        problems_before = sum(map(len, found.values()))
        formats = set()
        for column in checked:
            value = row.get(column)
            kind = _kind(value, column in json_columns)
            if value is None:
                if column != "completion":  # a text row may leave the extra column empty (a chat row may not)
                    note("missing", column, index)
                elif any(isinstance(row.get(c), list) for c in REQUIRED):
                    note("missing", column, index)
            elif kind == "other":
                note("not_text", column, index, value)
            else:
                if kind is not None:
                    formats.add(kind)
                if _is_empty(value):
                    note("empty", column, index)
        if len(formats) > 1:
            note("mixed", None, index)
        elif formats == {"text"}:
            text_rows.append(index)
        elif formats == {"chat"}:
            chat_rows.append(index)
            _check_turns(row, checked, implicit, trl_0, trl_version, index, note, json_inside)
        for column in extras:
            problem = _extra_problem(column, row.get(column))
            if problem is not None:
                note(problem[0], column, index, row.get(column), problem[1])
        if sum(map(len, found.values())) == problems_before and row.get("chosen") == row.get("rejected"):
            note("identical", None, index)
    if text_rows and chat_rows:
        minority = chat_rows if len(chat_rows) < len(text_rows) else text_rows
        if len(chat_rows) == len(text_rows):
            minority = sorted(text_rows + chat_rows)
        found[("split_mixed", None)] = minority
        examples[("split_mixed", None)] = ((tuple(text_rows), tuple(chat_rows)), "")
    if chat_rows and trl_0:
        for column in (c for c in _TRL_0_CHAT_KEYS if c in names):
            found[("trl0_keys", column)] = []
            examples[("trl0_keys", column)] = (None, trl_version)
    complete = limit is None or count < limit or _length(rows) == count
    order = list(_KINDS)
    problems = tuple(
        Problem(kind, column, tuple(rows_), *examples[(kind, column)])
        for (kind, column), rows_ in sorted(
            found.items(), key=lambda kv: (order.index(kv[0][0]), str(kv[0][1]))
        )
    )
    return DataReport(
        name=name,
        split=split,
        rows_checked=count,
        complete=complete,
        problems=problems,
        numbers=_numbers(rows, count),
    )


def _check_turns(
    row: Mapping[str, Any],
    checked: Sequence[str],
    implicit: bool,
    trl_0: bool,
    trl_version: str,
    index: int,
    note: Callable[..., None],
    json_inside: frozenset[str] = frozenset(),
) -> None:
    """The turns of a chat row: each message well formed with a known role; the completions assistant turns only
    (after the prompt TRL extracts, without a prompt column); on TRL 0.2x, a prompt ending on a user or assistant
    turn."""
    well_formed = {}
    for column in checked:
        well_formed[column] = _is_messages(row[column])  # else missing, empty or not text: told already
        for turn, message in enumerate(row[column] if well_formed[column] else []):
            role = message.get("role")
            content = message.get("content")
            if column in json_inside and isinstance(content, int | float | bool):
                note("json_content", column, index, (turn, content))
            elif not isinstance(role, str) or not _content_ok(message):
                note("bad_message", column, index, (turn, message))
            elif role not in ROLES:
                note("unknown_role", column, index, (turn, role))
            else:
                continue
            well_formed[column] = False
            break
    chosen = row["chosen"] if well_formed["chosen"] else []
    rejected = row["rejected"] if well_formed["rejected"] else []
    start = _shared_prefix(chosen, rejected) if implicit else 0
    answerless: set[str] = set()
    if implicit and chosen and rejected and chosen != rejected:  # an identical pair is told as such
        if start == min(len(chosen), len(rejected)):  # one conversation is all opening turns of the other
            shorter = "chosen" if len(chosen) == start else "rejected"
            if row[shorter][-1]["role"] != "assistant":
                note("no_answer", shorter, index)
                answerless = set(REQUIRED)
            start -= 1  # TRL's extract_prompt stops a turn short: the last shared turn is the shorter's answer
        if start == 0 and not answerless:
            note("no_prompt", None, index)
            answerless = set(REQUIRED)  # no prompt to tell the answer from
    for column in (c for c in COMPLETIONS if c in checked):
        if not well_formed[column] or column in answerless:
            continue
        skip = start if column in REQUIRED else 0
        for turn, message in enumerate(row[column] or []):
            if turn >= skip and message["role"] != "assistant":
                note("role", column, index, (turn, message["role"]))
                break
    if trl_0:
        prompt = chosen[:start] if implicit else row.get("prompt") or []
        formed = well_formed["chosen" if implicit else "prompt"]
        if prompt and formed and prompt[-1]["role"] not in ("user", "assistant"):
            where = None if implicit else "prompt"
            note("prompt_end", where, index, (len(prompt) - 1, prompt[-1]["role"]), f"TRL {trl_version}")


def _text_from_json_columns(dataset: Any) -> Any:
    """Give a text split's JSON-read columns back as the text the file holds ("23", not 23); see the module
    docstring. A chat split's JSON-read columns (content as text in some messages, as parts in others) stay. A view
    (`select`, `train_test_split`) stays a view of the same rows, so each row keeps its position in the split as
    loaded (`run.label_noise.row_positions`)."""
    features = getattr(dataset, "features", None) or {}
    columns = [c for c in (*COLUMNS, "completion") if _is_json_feature(features.get(c))]
    if not columns or not hasattr(dataset, "select") or not hasattr(dataset, "data"):
        return dataset
    import datasets

    indices = getattr(dataset, "_indices", None)
    kept = [int(i) for i in indices.column(0).to_pylist()] if indices is not None else None
    table = datasets.Dataset(dataset.data, info=dataset.info.copy(), split=dataset.split)  # the rows it selects from
    order = list(table.column_names)
    for column in columns:
        stored = table.data.column(column).to_pylist()  # the JSON text datasets stored for each value
        if any(isinstance(_loads(text), list | dict) for text in _pick(stored, kept) if text is not None):
            continue  # chat messages: decoded as they are
        table = table.remove_columns(column).add_column(column, [_as_text(text) for text in stored])
    table = table.select_columns(order)
    return table if kept is None else table.select(kept)


def _pick(values: list[Any], rows: list[int] | None) -> list[Any]:
    return values if rows is None else [values[i] for i in rows]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _as_text(stored: str | None) -> str | None:
    """The text a JSON-read value was in the file: datasets stores text that reads as JSON ("23") as is, other text
    JSON-quoted."""
    if stored is None:
        return None
    value = _loads(stored)
    return value if isinstance(value, str) else stored


def _numbers(rows: Any, count: int) -> tuple[int, ...] | None:
    """The row numbers of a view of a loaded split (`test_split_size`'s shuffled parts, a selection), else None."""
    indices = getattr(rows, "_indices", None)  # datasets: the view's rows in the table it was taken from
    if indices is None:
        return None
    try:
        numbers = tuple(int(i) for i in indices.column(0).to_pylist()[:count])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _length(rows: Any) -> int | None:
    try:
        return len(rows)
    except TypeError:
        return None


def prompt_lengths(
    rows: Iterable[Mapping[str, Any]], tokenizer: Any, *, max_rows: int | None = None
) -> list[int]:
    """Token count of each row's prompt as TRL tokenizes it (chat template with the generation prompt, and on TRL
    1.16 the row's `tools` and `chat_template_kwargs`)."""
    from trl.data_utils import extract_prompt, is_conversational

    per_row = not _trl_version()[0]  # TRL 0.2x renders every row with DPOConfig's tools instead
    lengths = []
    for row in itertools.islice(rows, max_rows):
        example = dict(row)
        if "prompt" not in example:
            example = extract_prompt(example)
        prompt = example["prompt"]
        if is_conversational(example):
            tools = example.get("tools") if per_row else None
            template_kwargs: dict[str, Any] = dict(example.get("chat_template_kwargs") or {}) if per_row else {}
            ids = tokenizer.apply_chat_template(
                prompt,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                tools=json.loads(tools) if isinstance(tools, str) else tools,
                **template_kwargs,
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
        if not drop_bad_rows or report.undecided or report.column_problem:
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
    dataset = _text_from_json_columns(dataset)
    trl_0, trl_version = _trl_version()
    ignored = [c for c in ("tools", "chat_template_kwargs") if c in (getattr(dataset, "column_names", None) or [])]
    if trl_0 and ignored:
        logger.warning(
            f"{report.where}: TRL {trl_version} does not read the {' and '.join(map(repr, ignored))} column"
            f"{'s' if len(ignored) > 1 else ''} (TRL 1.16 does, per row): the chat template renders every row "
            "without them (DPOConfig's `tools` gives every row the same tools)."
        )
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
