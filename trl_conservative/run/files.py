"""Name a bad input file precisely: which file, which byte or line, and what is wrong with it.

- `path_problem`: missing, a folder where a file is expected, or a file where a folder is expected;
- `read_text`: text that is not UTF-8 (`file_checks.utf8_problem`), with the byte offset, line and column of the first bad byte;
- `check_data_file`: a dataset file that is not UTF-8, a JSONL line that is not JSON, a file whose bytes are another
  format than its name says (gzip, bzip2, xz, zstd, zip, parquet, ... found by their magic bytes), and what each
  column holds (`DataFileSummary`); a UTF-8 byte order mark is accepted, as `datasets` reads it;
- `check_same_format`: the data files of a folder must agree (file type, columns, the kind of value in each), since
  `datasets` reads every split of a folder with one reader and one schema;

Each returns the problem as text or raises `ConfigError` (one line, naming the file and the fix).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from trl_conservative.errors import ConfigError
from trl_conservative.file_checks import utf8_problem

__all__ = [
    "COMPRESSIONS",
    "DATA_SUFFIXES",
    "DataFileSummary",
    "check_data_file",
    "check_same_format",
    "data_suffixes",
    "open_data_file",
    "path_problem",
    "read_text",
]

_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
# compression suffix -> (what it is, how the standard library opens it, or None when `datasets` cannot read it here)
COMPRESSIONS: dict[str, tuple[str, Callable[..., Any] | None]] = {
    ".gz": ("gzip", gzip.open),
    ".bz2": ("bzip2", bz2.open),
    ".xz": ("xz", lzma.open),
    ".zst": ("zstd", None),
    ".lz4": ("lz4", None),
}
_ARCHIVES = {".zip": "zip", ".7z": "7z", ".tar": "tar"}
# What a file's first bytes say it is: (magic, name, the suffix that names it).
_MAGIC = (
    (b"\x1f\x8b", "gzip", ".gz"),
    (b"\xfd7zXZ\x00", "xz", ".xz"),
    (b"\x28\xb5\x2f\xfd", "zstd", ".zst"),
    (b"\x04\x22\x4d\x18", "lz4", ".lz4"),
    (b"PK\x03\x04", "zip", ".zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z", ".7z"),
    (b"PAR1", "parquet", ".parquet"),
    (b"ARROW1", "Arrow", ".arrow"),
)
_TYPE_NAMES = {".json": "JSON", ".jsonl": "JSON lines", ".csv": "CSV", ".parquet": "parquet"}


def path_problem(path: str | os.PathLike[str], want: Literal["file", "folder"]) -> str | None:
    """Why `path` is not an existing `want` ("does not exist", "is a folder, not a file", ...), else None."""
    p = Path(path)
    if not p.exists():
        return "does not exist"
    if want == "file" and p.is_dir():
        return "is a folder, not a file"
    if want == "folder" and not p.is_dir():
        return "is a file, not a folder"
    return None


def read_text(path: str | os.PathLike[str], *, what: str = "File") -> str:
    """The UTF-8 text of `path`; `ConfigError` naming the first bad byte when it is not UTF-8."""
    data = Path(path).read_bytes()
    problem = utf8_problem(data)
    if problem is not None:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text: {problem}. Save it as UTF-8.")
    return data.decode("utf-8")


@dataclass
class DataFileSummary:
    """What one data file holds: its type, its rows (JSON lines counted), and for each column the kinds of value
    found ("text", "chat messages", "a number", ...) with the first place each was seen ("line 3", "row 2")."""

    suffix: str
    rows: int | None = None
    columns: dict[str, dict[str, str]] = field(default_factory=dict)

    def note(self, row: Mapping[str, Any], where: str) -> None:
        for column, value in row.items():
            kind = value_kind(value)
            if kind is not None:
                self.columns.setdefault(column, {}).setdefault(kind, where)
            else:
                self.columns.setdefault(column, {})


def value_kind(value: Any) -> str | None:
    """The kind of a data value as a user would name it; None for a null or an empty list (no kind)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        if not value:
            return None
        return "chat messages" if all(isinstance(m, Mapping) for m in value) else "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return None if value is None else type(value).__name__


def data_suffixes(path: str | os.PathLike[str]) -> tuple[str, str]:
    """A data file's type suffix and compression suffix: 'a.jsonl.gz' -> ('.jsonl', '.gz'), 'a.csv' -> ('.csv', '')."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and (suffixes[-1] in COMPRESSIONS or suffixes[-1] in _ARCHIVES):
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), ""


def open_data_file(path: str | os.PathLike[str]) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in a compression suffix the standard library reads."""
    _, compression = data_suffixes(path)
    opener = COMPRESSIONS.get(compression, ("", None))[1]
    stream: IO[bytes] = opener(path, "rb") if opener is not None else open(path, "rb")
    return stream


def _sniff(head: bytes) -> tuple[str, str] | None:
    """What a file's first bytes say it is ("gzip", ".gz"), or None for anything else (text)."""
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bzip2", ".bz2"
    for magic, what, suffix in _MAGIC:
        if head.startswith(magic):
            return what, suffix
    return None


def _check_bytes_match_name(p: Path, name: str, suffix: str, compression: str) -> None:
    """Refuse a file whose first bytes are another format than its name says (a gzip file named .jsonl, ...)."""
    with open(p, "rb") as fh:
        head = fh.read(16)
    found = _sniff(head)
    if compression in _ARCHIVES or (found is not None and found[1] in _ARCHIVES and not compression):
        kind = _ARCHIVES.get(compression) or (found[0] if found else "archive")
        raise ConfigError(
            f"Dataset file {name!r} is a {kind} archive, not a data file: extract it and point dataset_name at the "
            f"{', '.join(DATA_SUFFIXES[:-1])} or {DATA_SUFFIXES[-1]} file (or the folder of them) inside."
        )
    if compression:
        kind, opener = COMPRESSIONS[compression]
        if found is None or found[1] != compression:
            actually = f"a {found[0]} file" if found is not None else "not compressed"
            raise ConfigError(
                f"Dataset file {name!r} is named {compression} but is {actually} (its first bytes are "
                f"{head[:6]!r}, not {kind}'s). Rename it to {p.name[: -len(compression)]!r}"
                + (f" plus {found[1]!r}" if found is not None and found[1] in COMPRESSIONS else "")
                + ", the name that says what it holds."
            )
        if opener is None:
            raise ConfigError(
                f"Dataset file {name!r} is {kind}-compressed, which cannot be read here (that needs the "
                f"{'zstandard' if kind == 'zstd' else kind} package). Decompress it, or compress it as .gz instead."
            )
        return
    if found is None:
        if suffix == ".parquet":
            raise ConfigError(
                f"Dataset file {name!r} is not a parquet file: it does not start with the parquet magic bytes "
                f"b'PAR1' (it starts with {head[:6]!r}). Give the file the name of what it holds (.jsonl, .json, "
                ".csv), or write it again with to_parquet."
            )
        return
    what, its_suffix = found
    if what == "parquet" and suffix == ".parquet":
        return
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    if its_suffix in COMPRESSIONS and suffix == ".parquet":
        raise ConfigError(
            f"Dataset file {name!r} is {what}-compressed, not a parquet file (its first bytes are {head[:4]!r}); "
            "parquet compresses its own data, and a compressed parquet file is not read. Decompress it."
        )
    if its_suffix in COMPRESSIONS:
        raise ConfigError(
            f"Dataset file {name!r} is {what}-compressed, not {_TYPE_NAMES[suffix]} text (its first bytes are "
            f"{head[:4]!r}). Rename it to {p.name + its_suffix!r} (compressed data files are read by their name's "
            f"ending), or decompress it."
        )
    fix = f"Rename it to {stem + its_suffix!r}." if its_suffix in DATA_SUFFIXES else "Convert it to .parquet or .jsonl."
    raise ConfigError(
        f"Dataset file {name!r} is a{'n' if what[0] in 'AEIOU' else ''} {what} file, not {_TYPE_NAMES[suffix]} "
        f"text (its first bytes are {head[:6]!r}). {fix}"
    )


def check_data_file(
    path: str | os.PathLike[str], name: str, *, summarize: bool = False
) -> DataFileSummary | None:
    """A local dataset file (`.json`, `.jsonl`, `.csv`, `.parquet`, or one of the first three compressed as `.gz`,
    `.bz2`, `.xz`) must hold what its name says, be UTF-8, and its JSON lines must each parse.

    Returns what the file holds (`DataFileSummary`; JSON documents, CSV and parquet files are summarized only with
    `summarize`, for comparing the files of a folder), or None for a file of another type.
    """
    p = Path(path)
    suffix, compression = data_suffixes(p)
    if suffix not in DATA_SUFFIXES and compression not in _ARCHIVES:
        return None
    _check_bytes_match_name(p, name, suffix, compression)
    summary = DataFileSummary(suffix=suffix)
    if suffix == ".parquet":
        if summarize:
            _summarize_parquet(p, summary)
        return summary
    if suffix == ".csv":
        with open_data_file(p) as fh:
            for offset, line_number, raw in _lines(fh):
                _check_line(raw, offset, line_number, name, False)
        if summarize:
            _summarize_csv(p, summary)
        return summary
    document = suffix == ".json" and _is_one_json_document(p)
    summary.rows = 0
    with open_data_file(p) as fh:
        for offset, line_number, raw in _lines(fh):
            row = _check_line(raw, offset, line_number, name, not document)
            if isinstance(row, Mapping):
                summary.rows += 1
                summary.note(row, f"line {line_number}")
    if document:
        summary.rows = None
        if summarize:
            _summarize_document(p, summary)
    return summary


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, 1-based line number, bytes) of each line, a leading UTF-8 byte order mark left out."""
    offset, line_number, pending, first = 0, 0, b"", True
    while chunk := fh.read(_CHUNK):
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk, offset = chunk[len(_BOM) :], len(_BOM)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for raw in lines:
            line_number += 1
            yield offset, line_number, raw
            offset += len(raw) + 1
    if pending:
        yield offset, line_number + 1, pending


def _summarize_document(path: Path, summary: DataFileSummary) -> None:
    with open_data_file(path) as fh:
        data = fh.read()
    try:
        document = json.loads(data[len(_BOM) :] if data.startswith(_BOM) else data)
    except ValueError:
        return  # `datasets` names what it cannot read
    if isinstance(document, list):
        summary.rows = 0
        for index, row in enumerate(document):
            if isinstance(row, Mapping):
                summary.rows += 1
                summary.note(row, f"row {index}")
    elif isinstance(document, Mapping) and all(isinstance(v, list) for v in document.values()):
        for column, values in document.items():  # {column: [values]}
            for index, value in enumerate(values):
                summary.note({column: value}, f"row {index}")


def _summarize_csv(path: Path, summary: DataFileSummary) -> None:
    import csv
    import io

    with open_data_file(path) as fh:
        header = next(csv.reader(io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")), [])
    summary.columns = {column: {"text": "the header"} for column in header}


def _summarize_parquet(path: Path, summary: DataFileSummary) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return  # `datasets` names what it cannot read
    for column in schema:
        kind = _arrow_kind(column.type)
        summary.columns[column.name] = {kind: "its schema"} if kind is not None else {}


def _arrow_kind(arrow_type: Any) -> str | None:
    import pyarrow as pa

    types = pa.types
    if types.is_string(arrow_type) or types.is_large_string(arrow_type):
        return "text"
    if types.is_boolean(arrow_type):
        return "true/false"
    if types.is_integer(arrow_type) or types.is_floating(arrow_type):
        return "a number"
    if types.is_list(arrow_type) or types.is_large_list(arrow_type):
        return "chat messages" if types.is_struct(arrow_type.value_type) else "a list"
    if types.is_struct(arrow_type):
        return "a mapping"
    return None if types.is_null(arrow_type) else str(arrow_type)


def check_same_format(folder: str, files: Sequence[tuple[str, DataFileSummary]]) -> None:
    """The data files of a dataset folder must share their type, their columns and the kind of value in each column:
    `datasets` reads them all with one reader and casts every file to the first one's schema, which fails with an
    opaque `DatasetGenerationError` (or silently fills a missing column with nulls, or casts numbers to text)."""
    if not files:
        return
    # The train split's first file is the one the others are compared with (the format the user meant).
    files = sorted(files, key=lambda item: "train" not in Path(item[0]).name.lower())
    types = {_TYPE_NAMES[".json" if s.suffix == ".jsonl" else s.suffix]: f for f, s in files}
    if len(types) > 1:
        listed = ", ".join(f"{_short_name(folder, f)!r} ({t})" for t, f in types.items())
        raise ConfigError(
            f"Dataset folder {folder!r} holds data files of different types: {listed}. datasets reads every split "
            "of a folder with one reader: convert them to one type."
        )
    for file, summary in files if len(files) > 1 else ():
        for column, kinds in summary.columns.items():
            if len(kinds) > 1:
                seen = " and ".join(f"{kind} ({where})" for kind, where in kinds.items())
                raise ConfigError(
                    f"Dataset folder {folder!r}: {_short_name(folder, file)!r} mixes {seen} in column {column!r}, "
                    "so its rows cannot share one schema with the other files. Give every row the same format (all "
                    "plain text or all chat messages)."
                )
    first_file, first = files[0]
    for file, summary in files[1:]:
        a, b = _short_name(folder, first_file), _short_name(folder, file)
        difference = _difference(first, summary, a, b)
        if difference is not None:
            raise ConfigError(
                f"Dataset folder {folder!r}: its data files differ in format: {difference}. datasets reads every "
                f"file of a folder (every split) with the schema of the first, so make {b!r} match {a!r}: the same "
                "columns, each holding the same kind of value."
            )


def _difference(first: DataFileSummary, other: DataFileSummary, a: str, b: str) -> str | None:
    only_first = [c for c in first.columns if c not in other.columns]
    only_other = [c for c in other.columns if c not in first.columns]
    if only_first or only_other:
        parts = []
        if only_first:
            parts.append(f"{a!r} has column{'s' if len(only_first) > 1 else ''} {_names(only_first)} that {b!r} lacks")
        if only_other:
            parts.append(f"{b!r} has column{'s' if len(only_other) > 1 else ''} {_names(only_other)} that {a!r} lacks")
        return "; ".join(parts)
    for column, kinds in first.columns.items():
        theirs = other.columns.get(column, {})
        if kinds and theirs and set(kinds) != set(theirs):
            (kind_a, where_a), (kind_b, where_b) = next(iter(kinds.items())), next(iter(theirs.items()))
            return f"column {column!r} holds {kind_a} in {a!r} ({where_a}) but {kind_b} in {b!r} ({where_b})"
    return None


def _names(columns: Sequence[str]) -> str:
    return ", ".join(map(repr, columns))


def _short_name(folder: str, file: str) -> str:
    try:
        return str(Path(file).relative_to(Path(folder).expanduser()))
    except ValueError:
        return file


def _is_one_json_document(path: Path) -> bool:
    """Whether a `.json` file is one JSON document (a list or a {column: [...]} mapping), not JSON lines."""
    with open_data_file(path) as fh:
        head = fh.read(_CHUNK)
    head = (head[len(_BOM) :] if head.startswith(_BOM) else head).lstrip()
    if not head.startswith((b"[", b"{")):
        return False
    first_line = head.split(b"\n", 1)[0].strip()
    if head.startswith(b"{"):
        try:
            json.loads(first_line)
            return False  # the first line alone is a complete object: JSON lines
        except ValueError:
            return True
    return True


def _check_line(raw: bytes, offset: int, line_number: int, name: str, json_lines: bool) -> Any:
    """Check one line; returns the parsed JSON value of a JSON line (None for a blank one or another file type)."""
    bad = _bad_index(raw)
    if bad is not None:
        raise ConfigError(
            f"Dataset file {name!r} is not UTF-8 text: byte 0x{raw[bad]:02x} at offset {offset + bad} (line "
            f"{line_number}, column {bad + 1}). Save it as UTF-8."
        )
    if not json_lines:
        return None
    text = raw.decode("utf-8")
    if not text.strip():
        return None
    try:
        return json.loads(text)  # not stripped, so the column counts from the start of the line
    except ValueError as exc:
        message = getattr(exc, "msg", str(exc))
        column = getattr(exc, "colno", None)
        at = f", column {column}" if column else ""
        raise ConfigError(
            f"Dataset file {name!r} line {line_number}{at} is not valid JSON: {message}. Each line of a JSONL file "
            "must be one JSON object; fix or remove that line."
        ) from None


def _bad_index(raw: bytes) -> int | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None
