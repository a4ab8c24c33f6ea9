"""A run owns its output folder: one run at a time (RunLock), a run id in the folder and every checkpoint, resume
only the same run, a new run never replaces another run's results unasked, report files written atomically."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs

from trl_conservative.cli import main
from trl_conservative.errors import ConfigError
from trl_conservative.reliability import atomic
from trl_conservative.reliability.lock import LOCK_FILE, RunLock, read_holder
from trl_conservative.reliability.output_dir import (
    IDENTITY_FILE,
    check_resume,
    checkpoint_stamp,
    read_identity,
)


# --- atomic writes ----------------------------------------------------------------------------------------------
def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "run_summary.json"
    target.write_text("old")
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run_summary.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_the_previous_file_and_no_temp_file(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "training_curves.png"
    target.write_bytes(b"previous complete png")
    with pytest.raises(error), atomic.replacing(target) as temp:
        temp.write_bytes(b"half a pn")
        assert temp.suffix == ".png" and temp.parent == tmp_path
        raise error()
    assert target.read_bytes() == b"previous complete png"
    assert [p.name for p in tmp_path.iterdir()] == ["training_curves.png"]


# --- the lock ---------------------------------------------------------------------------------------------------
def test_a_second_lock_on_the_same_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with RunLock(tmp_path, "run-a").acquire():
        with pytest.raises(ConfigError) as info:
            RunLock(tmp_path, "run-b").acquire()
        message = str(info.value)
        assert "is in use by run run-a" in message and f"pid {os.getpid()}" in message
        assert "choose another output_dir" in message
    assert not (tmp_path / LOCK_FILE).exists()  # released
    RunLock(tmp_path, "run-b").acquire().release()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_holder(folder: Path, **fields: Any) -> None:
    holder = {"run_id": "old-run", "pid": _dead_pid(), "host": socket.gethostname(), "started": "yesterday"}
    (folder / LOCK_FILE).write_text(json.dumps({**holder, **fields}))


def test_a_stale_lock_of_a_killed_run_is_explained_and_taken_over(tmp_path: Path) -> None:
    _write_holder(tmp_path)
    said: list[str] = []
    lock = RunLock(tmp_path, "new-run").acquire(log=said.append)
    assert len(said) == 1 and "stale lock" in said[0] and "run old-run" in said[0]
    assert "no longer running" in said[0]
    holder = read_holder(tmp_path / LOCK_FILE)
    assert holder is not None and holder.run_id == "new-run" and holder.pid == os.getpid()
    lock.release()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path: Path) -> None:
    _write_holder(tmp_path, pid=1, process_start=-5)  # pid 1 runs, but it is not the process that locked
    said: list[str] = []
    RunLock(tmp_path, "new").acquire(log=said.append).release()
    assert said and "stale lock" in said[0]


def test_a_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path: Path) -> None:
    _write_holder(tmp_path, host="gpu-node-7", pid=4242)
    with pytest.raises(ConfigError) as info:
        RunLock(tmp_path, "new").acquire()
    assert "'gpu-node-7'" in str(info.value) and "pid 4242" in str(info.value)
    assert f"delete {str(tmp_path / LOCK_FILE)!r}" in str(info.value)


# --- runs through the CLI ---------------------------------------------------------------------------------------
def _config(tmp_path: Path, model: Path, out: Path, name: str = "run.yaml", **extra: Any) -> Path:
    settings = {"live": False, "disable_tqdm": True, "save_strategy": "steps", "save_steps": 1, **extra}
    config = tiny_run_settings(model, write_pairs(tmp_path / "pairs.jsonl"), out, **settings)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), err
    return lines[0]


@pytest.mark.slow
def test_run_id_stamped_in_folder_and_checkpoint_and_a_new_run_cannot_replace_it(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    config = _config(tmp_path, tiny_model_dir, out)
    assert main(["run", "--config", str(config)]) == 0
    record = read_identity(out)
    assert record is not None and record["run_id"]
    stamp = checkpoint_stamp(out / "checkpoint-1")
    assert stamp is not None and stamp["run_id"] == record["run_id"]
    assert not (out / LOCK_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]
    capsys.readouterr()

    before = _files(out)
    assert main(["run", "--config", str(config)]) == 2  # the same settings again: a new run
    line = _err(capsys)
    assert f"holds the results of run {record['run_id']}" in line and "--overwrite_output_dir true" in line
    assert _files(out) == before

    # The folder is locked while a run holds it: a concurrent run refuses, and changes nothing.
    with RunLock(out, "someone-else").acquire():
        assert main(["run", "--config", str(config), "--resume", "true"]) == 2
        assert "is in use by run someone-else" in _err(capsys)
    assert _files(out) == before

    assert main(["run", "--config", str(config), "--overwrite_output_dir", "true"]) == 0
    replaced = read_identity(out)
    assert replaced is not None and replaced["run_id"] != record["run_id"]


@pytest.mark.slow
def test_resume_refuses_another_runs_checkpoint_naming_the_differing_settings(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["run", "--config", str(_config(tmp_path, tiny_model_dir, out))]) == 0
    capsys.readouterr()
    # Another model "with the same shapes": the checkpoint's stamp names the model it was trained from.
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other_model)
    other = _config(tmp_path, other_model, out, name="other.yaml", beta=0.3)
    before = _files(out)
    assert main(["run", "--config", str(other), "--resume_from_checkpoint", str(out / "checkpoint-1")]) == 2
    line = _err(capsys)
    assert "holds a different run" in line or "Cannot resume" in line
    assert "beta 0.1 (now 0.3)" in line and f"model {str(tiny_model_dir)!r}" in line
    assert _files(out) == before


def test_check_resume_refuses_a_checkpoint_of_a_replaced_run(tmp_path: Path) -> None:
    identity = {"model": "m", "dataset": "d", "loss_type": ["cdpo"], "loss_weights": None, "loss_params": {}}
    identity |= {"beta": 0.1, "label_smoothing": 0.1, "seed": 42}
    (tmp_path / IDENTITY_FILE).write_text(json.dumps({**identity, "run_id": "new-run"}))
    checkpoint = tmp_path / "checkpoint-500"
    checkpoint.mkdir()
    stamp = {"RunStamp": {"args": {"run_id": "old-run", "identity": identity}, "attributes": {}}}
    (checkpoint / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": stamp}))
    with pytest.raises(ConfigError, match="belongs to run old-run, but .* now holds run new-run"):
        check_resume(tmp_path, str(checkpoint), identity)
    stamp["RunStamp"]["args"]["run_id"] = "new-run"
    (checkpoint / "trainer_state.json").write_text(json.dumps({"stateful_callbacks": stamp}))
    assert check_resume(tmp_path, str(checkpoint), identity) == "new-run"


class _FakeAccelerator:
    def wait_for_everyone(self) -> None:
        pass


class _InterruptedSave:
    """A trainer whose save writes half of the weights, then is interrupted (Ctrl-C)."""

    accelerator = _FakeAccelerator()

    def is_world_process_zero(self) -> bool:
        return True

    def save_model(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half of the new wei")
        raise KeyboardInterrupt


class _CompleteSave(_InterruptedSave):
    def save_model(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"new weights")
        (Path(folder) / "config.json").write_text("{}")


def test_an_interrupted_final_save_leaves_the_previous_model_whole(tmp_path: Path) -> None:
    from trl_conservative.run.runner import save_final_model

    (tmp_path / "model.safetensors").write_bytes(b"previous weights")
    with pytest.raises(KeyboardInterrupt):
        save_final_model(_InterruptedSave(), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"previous weights"
    save_final_model(
        _CompleteSave(), tmp_path
    )  # the next save clears the staging folder and replaces the files
    assert (tmp_path / "model.safetensors").read_bytes() == b"new weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.slow
def test_a_setting_refused_when_training_starts_leaves_no_folder(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers builds the optimizer in train(): its refusal is one line, and the new folder is gone again."""
    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("Invalid weight_decay value: -0.5")

    monkeypatch.setattr(torch.optim.AdamW, "__init__", refuse)
    out = tmp_path / "out"
    assert main(["run", "--config", str(_config(tmp_path, tiny_model_dir, out, optim="adamw_torch"))]) == 2
    err = capsys.readouterr().err  # progress bars of data and weight loading (live: false) come first
    assert "Traceback" not in err and err.count("trl-conservative: error:") == 1
    line = err.strip().splitlines()[-1]
    assert "These settings could not start training: ValueError: Invalid weight_decay value" in line
    assert not out.exists()


@pytest.mark.slow
def test_a_lock_held_by_another_process_refuses_and_is_stale_once_that_process_is_killed(
    tmp_path: Path,
) -> None:
    import signal
    import time

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from trl_conservative.reliability.lock import RunLock\n"
            f"RunLock({str(tmp_path)!r}, 'run-a').acquire()\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"is in use by run run-a \\(pid {holder.pid} "):
            RunLock(tmp_path, "run-b").probe()
        with pytest.raises(ConfigError, match="is in use by run run-a"):
            RunLock(tmp_path, "run-b").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash or the OOM killer would
        holder.wait()
    time.sleep(0.1)
    said: list[str] = []
    RunLock(tmp_path, "run-b").acquire(log=said.append).release()
    assert len(said) == 1 and f"run run-a (pid {holder.pid}" in said[0] and "no longer running" in said[0]
