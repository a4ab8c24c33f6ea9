"""The end of a run never loses the trained weights: a signal or a full disk at each phase (final evaluation, model
save, label noise, model card, trainer_state.json, curves, summary) stops with one line naming where the weights are,
what is not written and the command that finishes it; that command finishes the run (nothing trains), and the
model it leaves equals the model of an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_settings import tiny_run_settings, write_pairs
from end_of_run_faults import FAULT_ENV, PHASES, install_fault
from safetensors.torch import load_file

from trl_conservative.cli import main
from trl_conservative.reliability import atomic
from trl_conservative.reliability.end_of_run import (
    FINAL_STAGE,
    EndOfRunGuard,
    StopAtEndOfRun,
    human_bytes,
    out_of_space,
    write_error,
)
from trl_conservative.report.summary import SUMMARY_FILE

try:
    import matplotlib  # noqa: F401

    PLOT = True
except ImportError:  # the seed-stack venv has no `plot` extra
    PLOT = False

VOLATILE = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
VOLATILE |= {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
LINE = re.compile(
    r"trl-conservative: (?P<cause>.+?): the trained (?P<what>model|weights) (?P<where>.+?)\. "
    r"Finish the save and the report with: (?P<command>trl-conservative run .+)"
)


# --- the guard, without training ---------------------------------------------------------------------------------
def test_guard_passes_signals_on_while_training_holds_them_while_saving_then_stops(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    guard = EndOfRunGuard()
    with guard.installed():
        with pytest.raises(KeyboardInterrupt):  # training: Python's own Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        guard.saving()
        guard.saving_what = "the trained model (about 2.0 MB) to 'out'"
        os.kill(os.getpid(), signal.SIGTERM)  # held
        os.kill(os.getpid(), signal.SIGINT)  # held too: the save goes on
        assert guard.pending == signal.SIGTERM
        with pytest.raises(StopAtEndOfRun) as stop:
            guard.weights_saved()
        assert stop.value.signal_number == signal.SIGTERM
        guard.pending = None
        with pytest.raises(StopAtEndOfRun):  # once saved: at once
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "trl-conservative: received SIGTERM: saving the trained model (about 2.0 MB) to 'out' first, then stopping.",
        "trl-conservative: received SIGINT again: still saving the trained model (about 2.0 MB) to 'out'; stopping "
        "now would lose the training (kill -9 stops at once).",
    ]


def test_write_errors_are_told_from_bugs() -> None:
    assert write_error(OSError(errno.ENOSPC, "No space left on device")) and out_of_space(
        OSError(errno.ENOSPC, "x")
    )
    rust = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    assert write_error(rust) and out_of_space(rust)
    assert write_error(OSError(errno.EROFS, "Read-only file system")) and not out_of_space(OSError(errno.EROFS, "x"))
    assert not write_error(ValueError("a bug")) and not write_error(KeyError("x"))
    assert (human_bytes(512), human_bytes(1536), human_bytes(3 << 30)) == ("512 bytes", "1.5 KB", "3.0 GB")


def test_waiting_for_space_ends_with_one_line_when_given_up_or_when_room_does_not_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trl_conservative.run.finish as finish
    from trl_conservative.errors import TrainingHalted

    class Trainer:
        def is_world_process_zero(self) -> bool:
            return True

    def full(trainer: Any, output_dir: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(finish, "save_final_model", full)
    monkeypatch.setattr(finish, "SPACE_POLL_S", 0.0)
    cause = "No space left on device while saving the trained model to 'out'"
    guard = EndOfRunGuard()
    with guard.installed():
        guard.saving()
        monkeypatch.setattr(finish, "free_bytes", lambda path: 0)
        waited: list[int] = []

        def sleep(seconds: float) -> None:
            waited.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # the user gives up while the run waits

        monkeypatch.setattr(finish.time, "sleep", sleep)
        with pytest.raises(TrainingHalted) as lost:
            finish._wait_for_space(Trainer(), tmp_path, guard, size=1 << 20, cause=cause, failure=OSError())
    assert lost.value.exit_status == 143 and waited == [1]
    assert str(lost.value) == (
        f"{cause}; stopped by SIGTERM while waiting for space: the trained weights could not be saved and are lost; "
        "there is no checkpoint to resume."
    )
    err = capsys.readouterr().err
    assert "The trained weights are held in memory by this process (pid" in err
    assert "received SIGTERM: no longer waiting for 1.0 MB of disk space in" in err
    # Room on the disk, yet the save keeps failing (a quota): three tries, then the line says so.
    monkeypatch.setattr(finish, "free_bytes", lambda path: 10 << 30)
    monkeypatch.setattr(finish.time, "sleep", lambda seconds: None)
    with pytest.raises(TrainingHalted, match="3 times with 10.0 GB free there: the trained weights could not"):
        finish._wait_for_space(Trainer(), tmp_path, EndOfRunGuard(), size=1 << 20, cause=cause, failure=OSError())


# --- a run with a fault at each phase ----------------------------------------------------------------------------
def _config(tmp_path: Path, model: Path, name: str) -> Path:
    settings: dict[str, Any] = dict(
        max_steps=3,
        logging_steps=1,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=3,
        test_split_size=0.25,
        per_device_eval_batch_size=4,
        live=False,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        plot=PLOT,
    )
    config = tiny_run_settings(model, write_pairs(tmp_path / "pairs.jsonl", n=16), tmp_path / name, **settings)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run of the settings every fault test uses: its weights and its log."""
    tmp = tmp_path_factory.mktemp("reference")
    assert main(["run", "--config", str(_config(tmp, tiny_model_dir, "full"))]) == 0
    return {"weights": load_file(str(tmp / "full" / "model.safetensors")), "history": _history(tmp / "full")}


def _history(folder: Path) -> list[dict[str, Any]]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [{k: v for k, v in entry.items() if k not in VOLATILE} for entry in state["log_history"]]


def _same_weights(folder: Path, reference: dict[str, Any]) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    assert weights.keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=1e-6, msg=name)


def _stopped_line(capsys: pytest.CaptureFixture[str]) -> re.Match[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("trl-conservative: ")]
    match = LINE.fullmatch(lines[-1])
    assert match, err
    return match


def _finish(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    argv = shlex.split(command)
    assert argv[:2] == ["trl-conservative", "run"]
    assert main(argv[1:]) == 0
    return capsys.readouterr().out


def _finished_like_reference(out: Path, reference: dict[str, Any]) -> None:
    _same_weights(out, reference)
    # The run's own log: no extra step, nothing lost. Values are compared to 1e-5 relative: the reference is trained
    # in this process and the faulted run in a child, whose thread count can change float reductions (CI saw
    # eval_kl/sequence differ in the 6th digit).
    history = _history(out)
    assert [sorted(entry) for entry in history] == [sorted(entry) for entry in reference["history"]]
    for entry, expected in zip(history, reference["history"], strict=True):
        assert entry == pytest.approx(expected, rel=1e-5, abs=1e-9), entry.get("step")
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["global_step"] == summary["max_steps"] == 3
    assert (out / "README.md").is_file() and (out / "trainer_state.json").is_file()
    assert (out / "training_curves.png").is_file() == PLOT
    assert not [p.name for p in out.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("phase", "fault"),
    [(phase, "SIGTERM") for phase in PHASES] + [("model_save", "SIGINT")],
)
def test_a_signal_at_each_phase_of_the_end_keeps_the_weights_and_the_printed_command_finishes_the_run(
    phase: str,
    fault: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if phase == "curves" and not PLOT:
        pytest.skip("no matplotlib: the run draws no curves")
    capsys.readouterr()
    config = _config(tmp_path, tiny_model_dir, "out")
    with monkeypatch.context() as patched:
        install_fault(phase, fault, patched.setattr)
        status = main(["run", "--config", str(config)])
    assert status == 128 + getattr(signal, fault)
    match = _stopped_line(capsys)
    assert match["cause"].startswith(fault)
    assert match["command"] == f"trl-conservative run --config {config} --resume true"
    out = tmp_path / "out"
    assert not (out / SUMMARY_FILE).exists()  # not reported as a finished run
    if phase == "final_evaluation":  # the checkpoint the signal saved holds them; the final save was not made
        assert match["where"] == f"are in {str(out / 'checkpoint-3')!r} (its checkpoint); not yet written: the " + (
            f"final model, model card, trainer_state.json and {SUMMARY_FILE} (they need about "
        ) + match["where"].split("(they need about ")[1]
    else:  # the final model is in place already, whole
        assert match["where"].startswith(f"is saved whole in {str(out)!r}; not yet written: ")
        assert "of disk space there)" in match["where"]
        _same_weights(out, reference)

    said = " ".join(_finish(match["command"], capsys).split())  # the console wraps lines
    assert "Finishing run" in said and "(nothing is trained)" in said
    _finished_like_reference(out, reference)


@pytest.mark.slow
def test_sigterm_while_the_final_model_is_written_in_a_real_process(
    tiny_model_dir: Path, tmp_path: Path, reference: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: a SIGTERM while the final model is written gave exit 143, no message, and the weights in
    the hidden staging folder, which neither a rerun nor --resume could use."""
    config = _config(tmp_path, tiny_model_dir, "out")
    worker = Path(__file__).with_name("end_of_run_faults.py")
    env = {**os.environ, FAULT_ENV: "model_save:SIGTERM", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    done = subprocess.run(
        [sys.executable, str(worker), "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 143, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "trl-conservative: received SIGTERM: saving the trained model (about " in done.stderr
    match = LINE.fullmatch(last)
    assert match and match["cause"] == "SIGTERM while saving the trained model (step 3 of 3)", last
    out = tmp_path / "out"
    assert not (out / FINAL_STAGE).exists()
    _same_weights(out, reference)
    capsys.readouterr()
    _finish(match["command"], capsys)
    _finished_like_reference(out, reference)


# --- a full disk --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_full_disk_at_the_final_save_saves_the_weights_elsewhere_and_the_command_finishes_there(
    tiny_model_dir: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trl_conservative.run.finish as finish

    config = _config(tmp_path, tiny_model_dir, "out")
    rescue = tmp_path / "another-disk"
    monkeypatch.setenv(finish.RESCUE_ENV, str(rescue))

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(finish, "save_final_model", full)
        assert main(["run", "--config", str(config)]) == 1
    match = _stopped_line(capsys)
    out = tmp_path / "out"
    assert match["cause"].startswith(f"No space left on device while saving the trained model to {str(out)!r} (it ")
    saved = rescue / next(p.name for p in rescue.iterdir())
    assert match["where"].startswith(f"were saved to {str(saved)!r} instead (")
    assert match["command"] == f"trl-conservative run --config {config} --resume_from_checkpoint {saved}"
    _same_weights(saved, reference)  # not yet in out: the disk was full
    assert not (out / "model.safetensors").exists()

    _finish(match["command"], capsys)
    _finished_like_reference(out, reference)
    assert not saved.exists()  # the copy elsewhere is removed once the model is in place


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["summary", "curves"])
def test_a_full_disk_while_the_report_is_written_keeps_the_model_and_the_command_finishes_the_report(
    phase: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if phase == "curves" and not PLOT:
        pytest.skip("no matplotlib: the run draws no curves")
    config = _config(tmp_path, tiny_model_dir, "out")
    capsys.readouterr()
    with monkeypatch.context() as patched:
        install_fault(phase, "ENOSPC_ALWAYS", patched.setattr)
        assert main(["run", "--config", str(config)]) == 1
    match = _stopped_line(capsys)
    out = tmp_path / "out"
    assert match["cause"].startswith("No space left on device while ")
    assert match["where"].startswith(f"is saved whole in {str(out)!r}; not yet written: ")
    assert SUMMARY_FILE in match["where"]
    _same_weights(out, reference)
    _finish(match["command"], capsys)
    _finished_like_reference(out, reference)


@pytest.mark.slow
def test_a_save_that_fails_once_is_made_again_and_the_run_ends_normally(
    tiny_model_dir: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config(tmp_path, tiny_model_dir, "out")
    with monkeypatch.context() as patched:
        install_fault("model_save", "ENOSPC", patched.setattr)  # the failed save's own files took the room
        assert main(["run", "--config", str(config)]) == 0
    capsys.readouterr()
    _finished_like_reference(tmp_path / "out", reference)


@pytest.mark.slow
def test_with_no_room_anywhere_the_weights_wait_in_memory_until_there_is_room(
    tiny_model_dir: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trl_conservative.run.finish as finish

    config = _config(tmp_path, tiny_model_dir, "out")
    free = iter([0, 0, 10, 10, 10])  # bytes free: after the failure, while waiting, then the user frees space
    real_save = finish.save_final_model
    calls: list[int] = []

    def save(trainer: Any, output_dir: Path) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(trainer, output_dir)

    capsys.readouterr()
    with monkeypatch.context() as patched:
        patched.setattr(finish, "save_final_model", save)
        patched.setattr(finish, "free_bytes", lambda path: next(free, 10) << 30)
        patched.setattr(finish, "_rescue_roots", lambda: [])
        patched.setattr(finish, "SPACE_POLL_S", 0.01)
        assert main(["run", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    assert "The trained weights are held in memory by this process (pid " in err
    assert "free about " in err and "the save goes on by itself" in err
    assert len(calls) == 2
    _finished_like_reference(tmp_path / "out", reference)
