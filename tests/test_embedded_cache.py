"""The model cache (issue 20 family 7): a damaged cached model is rebuilt, a cache path that is not a folder is one
line naming $TRL_CONSERVATIVE_CACHE, and SIGINT/SIGTERM during a build leave no `.building-*` folder and stop with
one line."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trl_conservative.cli import main
from trl_conservative.demo.embedded import (
    CACHE_ENV,
    REQUIRED_FILES,
    WarmupRecipe,
    build_in_cache,
    builtin_model_path,
    cache_dir,
    cache_problem,
)
from trl_conservative.demo.tiny import save_tiny_model
from trl_conservative.errors import ConfigError

RECIPE = WarmupRecipe(steps=2, batch_size=4)  # a cheap build: the mechanism, not the model's skill


def tiny_build(calls: list[Path]) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        calls.append(folder)
        save_tiny_model(folder)

    return build


def truncate(name: str, keep: int = 100) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:keep])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "weights-truncated": truncate("model.safetensors", 5000),
    "weights-header-cut": truncate("model.safetensors", 20),
    "weights-deleted": lambda folder: (folder / "model.safetensors").unlink(),
    "weights-emptied": lambda folder: (folder / "model.safetensors").write_bytes(b""),
    "config-truncated": truncate("config.json", 30),
    "config-not-utf8": lambda folder: (folder / "config.json").write_bytes(b"\xff\xfe{}"),
    "tokenizer-deleted": lambda folder: (folder / "tokenizer.json").unlink(),
    "tokenizer-config-truncated": truncate("tokenizer_config.json", 10),
    "generation-config-truncated": truncate("generation_config.json", 10),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=str)
def test_a_damaged_cached_model_is_rebuilt_saying_why(tmp_path: Path, damage: str) -> None:
    target, calls, said = tmp_path / "cache" / "model", [], []
    build = tiny_build(calls)
    assert build_in_cache(target, build, required=REQUIRED_FILES) == target and len(calls) == 1
    assert build_in_cache(target, build, required=REQUIRED_FILES) == target and len(calls) == 1  # reused
    DAMAGE[damage](target)
    assert cache_problem(target, REQUIRED_FILES) is not None
    assert build_in_cache(target, build, required=REQUIRED_FILES, log=said.append) == target
    assert len(calls) == 2 and cache_problem(target, REQUIRED_FILES) is None
    assert said and "is damaged" in said[0] and "building it again" in said[0]
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no .building-/.stale- left


def test_a_damaged_builtin_model_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    path = builtin_model_path(RECIPE)
    config = json.loads((path / "config.json").read_text())
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-64])
    said: list[str] = []
    assert builtin_model_path(RECIPE, log=said.append) == path
    assert "model.safetensors is truncated" in said[0] and "Building the tiny model" in said[1]
    assert (
        cache_problem(path, REQUIRED_FILES) is None
        and json.loads((path / "config.json").read_text()) == config
    )
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(path)  # loads


def test_a_cache_entry_that_is_a_file_is_rebuilt(tmp_path: Path) -> None:
    target, calls = tmp_path / "model", []
    target.write_text("not a model")
    assert build_in_cache(target, tiny_build(calls), required=REQUIRED_FILES) == target
    assert target.is_dir() and cache_problem(target, REQUIRED_FILES) is None


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027], ids=oct)
def test_the_built_model_gets_the_umask_modes(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        target = build_in_cache(tmp_path / "model", tiny_build([]), required=REQUIRED_FILES)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask
    for path in target.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_a_cache_variable_naming_a_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    a_file = tmp_path / "cache.txt"
    a_file.write_text("x")
    value = str(a_file if where == "file" else a_file / "sub")
    monkeypatch.setenv(CACHE_ENV, value)
    with pytest.raises(ConfigError, match=f"{CACHE_ENV}='{value}' names a model cache that") as refused:
        builtin_model_path(RECIPE)
    assert ("is a file, not a folder" if where == "file" else "cannot be created (Not a directory)") in str(
        refused.value
    )
    assert f"Set {CACHE_ENV} to a folder you can write to, or unset it" in str(refused.value)
    assert main(["run", "--output_dir", str(tmp_path / "out"), "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith(f"trl-conservative: error: {CACHE_ENV}=")
        and "Traceback" not in err
    )
    assert not (tmp_path / "out").exists()


def test_an_unwritable_cache_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o500)
    monkeypatch.setenv(CACHE_ENV, str(root))
    try:
        with pytest.raises(ConfigError, match="names a model cache that is not writable"):
            builtin_model_path(RECIPE)
    finally:
        root.chmod(0o700)


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_build_leaves_no_building_folder_and_one_line(
    tmp_path: Path, signal_number: int
) -> None:
    """`trl-conservative run` (the embedded default) on an empty cache, signalled while the model is built."""
    cache = tmp_path / "cache"
    env = {**os.environ, CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "trl_conservative.cli", "run", "--output_dir", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (cache.is_dir() and any(p.name.startswith(".building-") for p in cache.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    time.sleep(0.5)  # into the SFT loop
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    name = signal.Signals(signal_number).name
    assert lines[0].startswith(f"trl-conservative: {name} while building '{cache}") and "Traceback" not in err
    assert "the half-built copy was removed" in lines[0] and "Run the command again" in lines[0]
    assert [p.name for p in cache.iterdir()] == []
    assert not (tmp_path / "out").exists()


def test_cache_dir_follows_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.setenv(CACHE_ENV, "")
    assert cache_dir() == Path.home() / ".cache" / "trl-conservative"
