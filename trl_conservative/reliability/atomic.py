"""Write a file so that readers (and a Ctrl-C) see either the old complete file or the new complete one.

The content goes to a temporary file in the same folder (same file system, so the rename is atomic), is flushed
to disk, and then `os.replace`s the target. An exception or KeyboardInterrupt on the way removes the temporary
file and leaves the target as it was. Every report file a run writes (`run_summary.json`, `training_curves.png`,
the model card `README.md`, the `trainer_state.json` copy, `trl_conservative_run.json`) goes through here, and the
final model is saved into a staging folder whose files are then renamed into place (`move_contents_into_place`).

Every file put in place gets the mode a plain `open()` gives a new file under the process umask (0666 & ~umask),
every folder the mode `mkdir` gives (0777 & ~umask): `mkstemp`'s 0600 would hide the model card and the report
from colleagues on a shared machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_PREFIX",
    "current_umask",
    "default_dir_mode",
    "default_file_mode",
    "give_plain_file_modes",
    "move_contents_into_place",
    "move_into_place",
    "replacing",
    "write_bytes",
    "write_json",
    "write_text",
]

TEMP_PREFIX = ".trl-conservative-tmp-"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux `/proc`; elsewhere set and reset)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 & ~umask."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """The mode `mkdir` gives a new folder: 0777 & ~umask."""
    return 0o777 & ~current_umask()


def give_plain_file_modes(folder: str | os.PathLike[str], patterns: tuple[str, ...] = ("*.safetensors",)) -> None:
    """Give the files directly in `folder` that match `patterns` the mode a plain `open()` gives under the umask.

    safetensors' `save_file` (which `save_pretrained` uses) creates its file 0600 whatever the umask, so a checkpoint's
    weights were unreadable by the colleagues who can read the rest of the folder.
    """
    mode = default_file_mode()
    for pattern in patterns:
        for path in Path(folder).glob(pattern):
            if path.is_file() and not path.is_symlink():
                with contextlib.suppress(OSError):  # a file owned by someone else: left as it is
                    os.chmod(path, mode)


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
        os.chmod(temp, default_file_mode())  # not mkstemp's 0600 (a writer may also have replaced the file)
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
    """Atomically move a finished file written elsewhere in the target's file system onto `target`.

    It gets the mode a new file gets under the umask, whatever it was created with (`mkstemp` gives 0600).
    """
    _fsync(Path(source))
    os.chmod(source, default_file_mode())
    os.replace(source, target)
    return Path(target)


def move_contents_into_place(stage: str | os.PathLike[str], target: str | os.PathLike[str]) -> list[Path]:
    """Move every entry of folder `stage` into `target`, each file in one rename; then remove `stage`.

    Each file is replaced whole, so an interruption leaves every file either old and complete or new and
    complete. A sub-folder that exists in `target` is replaced by removing the old one first. Each moved file gets
    the mode a new file gets under the umask, each moved folder the mode a new folder gets (a staging folder made
    by `mkdtemp` is 0700).
    """
    import shutil

    moved = []
    file_mode, dir_mode = default_file_mode(), default_dir_mode()
    for source in sorted(Path(stage).iterdir()):
        destination = Path(target) / source.name
        if source.is_file() and not source.is_symlink():
            _fsync(source)
            os.chmod(source, file_mode)
        else:
            if source.is_dir() and not source.is_symlink():
                os.chmod(source, dir_mode)
            if destination.is_dir():
                shutil.rmtree(destination)
        os.replace(source, destination)
        moved.append(destination)
    Path(stage).rmdir()
    return moved


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
