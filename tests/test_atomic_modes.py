"""Files written through reliability/atomic.py get the mode a plain `open()` gives under the umask (issue 20, 8).

`mkstemp` creates 0600 files whatever the umask, so the model card and report were unreadable by colleagues.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trl_conservative.reliability import atomic

UMASKS = [0o022, 0o077, 0o002, 0o027]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_open_mode(folder: Path) -> int:
    """What a plain open() gives a new file here, measured rather than computed."""
    probe = folder / "probe-plain-open"
    with open(probe, "w") as fh:
        fh.write("x")
    result = mode(probe)
    probe.unlink()
    return result


def _write_text(path: Path) -> None:
    atomic.write_text(path, "hello\n")


def _write_bytes(path: Path) -> None:
    atomic.write_bytes(path, b"\x00\x01")


def _write_json(path: Path) -> None:
    atomic.write_json(path, {"a": 1})


def _replacing_write(path: Path) -> None:
    with atomic.replacing(path) as temp:
        temp.write_text("via replacing")


def _replacing_reopen(path: Path) -> None:  # a library that opens the temp name with "w" (trainer_state.json)
    with atomic.replacing(path) as temp, open(temp, "w") as fh:
        fh.write("{}")


def _replacing_recreate(path: Path) -> None:  # a library that removes the file and writes a new one
    with atomic.replacing(path) as temp:
        temp.unlink()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)


def _move_into_place(path: Path) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent)  # 0600, as matplotlib or a caller might leave it
    os.write(fd, b"png")
    os.close(fd)
    atomic.move_into_place(name, path)


WRITERS: dict[str, Callable[[Path], None]] = {
    "write_text": _write_text,
    "write_bytes": _write_bytes,
    "write_json": _write_json,
    "replacing": _replacing_write,
    "replacing-reopen": _replacing_reopen,
    "replacing-recreate": _replacing_recreate,
    "move_into_place": _move_into_place,
}


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
@pytest.mark.parametrize("writer", list(WRITERS), ids=str)
def test_each_writer_gives_a_new_file_the_umask_mode(tmp_path: Path, writer: str, mask: int) -> None:
    target = tmp_path / "out" / "file.json"
    target.parent.mkdir()
    with umask(mask):
        WRITERS[writer](target)
        expected = plain_open_mode(target.parent)
    assert expected == 0o666 & ~mask
    assert oct(mode(target)) == oct(expected)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_rewriting_a_file_under_another_umask_gives_that_umask_mode(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "run_summary.json"
    with umask(0o077):
        atomic.write_json(target, {"a": 1})
    with umask(mask):
        atomic.write_json(target, {"a": 2})
    assert mode(target) == 0o666 & ~mask


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_folders_made_for_a_write_get_the_mkdir_mode(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        atomic.write_text(tmp_path / "new" / "deeper" / "README.md", "card")
    assert mode(tmp_path / "new") == 0o777 & ~mask
    assert mode(tmp_path / "new" / "deeper") == 0o777 & ~mask
    assert mode(tmp_path / "new" / "deeper" / "README.md") == 0o666 & ~mask


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_move_contents_into_place_gives_files_and_folders_the_umask_modes(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "run"
    target.mkdir()
    (target / "checkpoint-1").mkdir()
    (target / "checkpoint-1" / "old").write_text("old")
    with umask(mask):
        stage = Path(tempfile.mkdtemp(prefix=atomic.TEMP_PREFIX, dir=target))  # 0700, as mkdtemp makes it
        fd, name = tempfile.mkstemp(dir=stage)
        os.close(fd)
        os.replace(name, stage / "model.safetensors")
        (stage / "config.json").write_text("{}")
        os.chmod(stage / "config.json", 0o600)
        sub = Path(tempfile.mkdtemp(dir=stage))
        os.replace(sub, stage / "checkpoint-1")
        (stage / "checkpoint-1" / "new").write_text("new")
        moved = atomic.move_contents_into_place(stage, target)
    assert not stage.exists()
    assert {p.name for p in moved} == {"model.safetensors", "config.json", "checkpoint-1"}
    assert mode(target / "model.safetensors") == 0o666 & ~mask
    assert mode(target / "config.json") == 0o666 & ~mask
    assert mode(target / "checkpoint-1") == 0o777 & ~mask
    assert [p.name for p in (target / "checkpoint-1").iterdir()] == ["new"]


def test_current_umask_reads_without_changing_it() -> None:
    with umask(0o037):
        assert atomic.current_umask() == 0o037
        assert atomic.default_file_mode() == 0o640
        assert atomic.default_dir_mode() == 0o740
        assert os.umask(0o037) == 0o037


@pytest.mark.parametrize("mask", UMASKS)
def test_weights_saved_by_safetensors_get_the_umask_mode(tmp_path: Path, mask: int) -> None:
    import torch
    from safetensors.torch import save_file

    with umask(mask):
        save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
        (tmp_path / "notes.txt").write_text("x")
        os.chmod(tmp_path / "notes.txt", 0o600)  # not a weights file: left as it is
        atomic.give_plain_file_modes(tmp_path)
        assert mode(tmp_path / "model.safetensors") == plain_open_mode(tmp_path)
    assert mode(tmp_path / "notes.txt") == 0o600
