"""Write a file so that readers (and a Ctrl-C) see either the old complete file or the new complete one.

The content goes to a temporary file in the same folder (same file system, so the rename is atomic), is flushed
to disk, and then `os.replace`s the target. An exception or KeyboardInterrupt on the way removes the temporary
file and leaves the target as it was. Every report file a run writes (`run_summary.json`, `training_curves.png`,
the model card `README.md`, the `trainer_state.json` copy, `trl_conservative_run.json`) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".trl-conservative-tmp-"


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it atomically replaces `path`.

    The temporary name keeps the suffix of `path` (a library that infers the format from it still works).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{target.name}.", suffix=target.suffix, dir=target.parent
    )
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:  # KeyboardInterrupt too: never leave a half-written file behind
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace `path` with `data`."""
    with replacing(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically replace `path` with `text` (UTF-8)."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], data: Any, **dumps: Any) -> Path:
    """Atomically replace `path` with `data` as indented, key-sorted JSON (`dumps` passes to `json.dumps`)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, **dumps) + "\n")


def move_into_place(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Atomically move a finished file written elsewhere in the target's file system onto `target`."""
    _fsync(Path(source))
    os.replace(source, target)
    return Path(target)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
