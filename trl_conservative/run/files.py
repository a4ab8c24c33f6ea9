"""Name a bad input file precisely: which file, which byte or line, and what is wrong with it.

- `path_problem`: missing, a folder where a file is expected, or a file where a folder is expected;
- `read_text`: text that is not UTF-8, with the byte offset, line and column of the first bad byte;
- `check_json_lines` / `check_data_file`: a dataset file that is not UTF-8, or a JSONL line that is not JSON;
- `check_safetensors`: a `.safetensors` file that is truncated or has a corrupt header (checked from its header and
  size alone, before any weights load).

Each returns the problem as text or raises `ConfigError` (one line, naming the file and the fix).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Literal

from trl_conservative.errors import ConfigError

__all__ = [
    "check_data_file",
    "check_safetensors_in",
    "path_problem",
    "read_text",
    "safetensors_problem",
    "utf8_problem",
]

_CHUNK = 1 << 20


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


def utf8_problem(data: bytes, start: int = 0) -> str | None:
    """Where `data` stops being UTF-8 ("byte 0xff at offset 12 (line 2, column 3)"), else None."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        return f"byte 0x{data[offset]:02x} at offset {start + offset} (line {line}, column {column})"
    return None


def read_text(path: str | os.PathLike[str], *, what: str = "File") -> str:
    """The UTF-8 text of `path`; `ConfigError` naming the first bad byte when it is not UTF-8."""
    data = Path(path).read_bytes()
    problem = utf8_problem(data)
    if problem is not None:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text: {problem}. Save it as UTF-8.")
    return data.decode("utf-8")


def check_data_file(path: str | os.PathLike[str], name: str) -> None:
    """A local dataset file (`.json`, `.jsonl`, `.csv`) must be UTF-8, and JSON lines must each parse."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".jsonl", ".csv"):
        return
    offset, line_number, pending = 0, 0, b""
    json_lines = suffix == ".jsonl" or (suffix == ".json" and not _is_one_json_document(p))
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                line_number += 1
                _check_line(raw, offset, line_number, name, json_lines)
                offset += len(raw) + 1
    if pending:
        _check_line(pending, offset, line_number + 1, name, json_lines)


def _is_one_json_document(path: Path) -> bool:
    """Whether a `.json` file is one JSON document (a list or a {column: [...]} mapping), not JSON lines."""
    with open(path, "rb") as fh:
        head = fh.read(_CHUNK).lstrip()
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


def _check_line(raw: bytes, offset: int, line_number: int, name: str, json_lines: bool) -> None:
    bad = _bad_index(raw)
    if bad is not None:
        raise ConfigError(
            f"Dataset file {name!r} is not UTF-8 text: byte 0x{raw[bad]:02x} at offset {offset + bad} (line "
            f"{line_number}, column {bad + 1}). Save it as UTF-8."
        )
    if not json_lines:
        return
    text = raw.decode("utf-8")
    if not text.strip():
        return
    try:
        json.loads(text)  # not stripped, so the column counts from the start of the line
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


def safetensors_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a `.safetensors` file cannot be loaded (truncated, corrupt header), judged from its header; else None.

    The format: 8 bytes little-endian header length N, N bytes of JSON header (each tensor's `data_offsets`
    into the data that follows), then the data.
    """
    p = Path(path)
    size = p.stat().st_size
    if size < 8:
        return f"is truncated ({size} bytes, shorter than the 8-byte header length)"
    with open(p, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            return (
                f"is truncated or corrupt: its header claims {header_len} bytes, the file holds {size} in all"
            )
        header_bytes = fh.read(header_len)
    try:
        header = json.loads(header_bytes)
    except ValueError:
        return "has a corrupt header (not JSON)"
    if not isinstance(header, dict):
        return "has a corrupt header (not a JSON object)"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"has a corrupt header (tensor {key!r} has no valid data_offsets)"
        end = max(end, offsets[1])
    data = size - 8 - header_len
    if end > data:
        return f"is truncated: its tensors need {end} bytes of data, the file holds {data}"
    return None


def check_safetensors_in(folder: str | os.PathLike[str], what: str) -> None:
    """Every `*.safetensors` file directly in `folder` must be complete; `ConfigError` names the first bad one."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        if not path.is_file():
            raise ConfigError(f"{what} {str(path)!r} is a folder, not a weights file. Remove or replace it.")
        problem = safetensors_problem(path)
        if problem is not None:
            raise ConfigError(
                f"Weights file {str(path)!r} {problem}. It was cut off while being written or copied: copy or save "
                f"it again, or point to another {what.lower()}."
            )
