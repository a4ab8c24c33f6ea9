"""Resume: a run killed with SIGKILL after a checkpoint ends exactly like an uninterrupted one; checkpoint helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from trl_conservative import ConfigError
from trl_conservative.reliability.callback_state import restore_callback_states
from trl_conservative.reliability.checkpoints import (
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    resolve_resume,
)
from trl_conservative.run.commands import resume_command
from trl_conservative.trainer.trl_compat import TRL_STACK

sys.path.insert(0, str(Path(__file__).parent))
import crash_worker  # noqa: E402

# Keys that differ between runs by nature (timings), or that cover only the steps one `train()` call ran
# (transformers' end-of-training `train_loss` is the mean over the resumed steps).
VOLATILE = {
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_loss",
    "total_flos",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
}


def _make_checkpoint(folder: Path, *, complete: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")  # a valid, empty file
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


# --- helpers ----------------------------------------------------------------------------------------------


def test_latest_checkpoint_skips_cut_off_saves_and_sorts_by_step(tmp_path: Path) -> None:
    for step in (2, 10):
        _make_checkpoint(tmp_path / f"checkpoint-{step}")
    _make_checkpoint(tmp_path / "checkpoint-12", complete=False)  # SIGKILL in the middle of the save
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-99").write_text("a file, not a folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-12"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert latest_checkpoint(tmp_path / "missing") is None
    assert "trainer_state.json" in (checkpoint_problem(tmp_path / "checkpoint-12") or "")


def test_resolve_resume_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    _make_checkpoint(tmp_path / "checkpoint-4")
    _make_checkpoint(tmp_path / "checkpoint-6", complete=False)
    assert resolve_resume(tmp_path, None, latest=True) == str(tmp_path / "checkpoint-4")
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoint-4"), latest=False) == str(
        tmp_path / "checkpoint-4"
    )
    assert resolve_resume(tmp_path, None, latest=False) is None
    with pytest.raises(
        ConfigError, match=r"checkpoint-6': it has no trainer_state.json.*checkpoints in .*checkpoint-4"
    ):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-6"), latest=False)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-8"), latest=False)
    with pytest.raises(ConfigError, match="holds no complete checkpoint-N folder"):
        resolve_resume(tmp_path / "empty", None, latest=True)
    with pytest.raises(ConfigError, match="give one of them"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-4"), latest=True)


def test_resume_command_replaces_earlier_resume_flags() -> None:
    argv = [
        "--config",
        "my run.yaml",
        "--resume",
        "--beta",
        "0.2",
        "--resume_from_checkpoint",
        "old/checkpoint-1",
    ]
    assert resume_command(argv, "out/checkpoint-8") == (
        "trl-conservative run --config 'my run.yaml' --beta 0.2 --resume_from_checkpoint out/checkpoint-8"
    )
    assert resume_command(["--resume", "true", "--resume_from_checkpoint=x"], "c") == (
        "trl-conservative run --resume_from_checkpoint c"
    )


def test_restore_callback_states_in_place_only_with_the_same_arguments() -> None:
    from transformers import EarlyStoppingCallback

    from trl_conservative import KLMonitorCallback

    saved = KLMonitorCallback("kl/exact_rejected", stop_above=0.5, patience=3)
    saved.breaches, saved.above_warn, saved.seen = 2, True, True
    stored = {"KLMonitorCallback": saved.state(), "EarlyStoppingCallback": {"args": {}, "attributes": {}}}
    same = KLMonitorCallback("kl/exact_rejected", stop_above=0.5, patience=3)
    early = EarlyStoppingCallback(early_stopping_patience=2)
    early.early_stopping_patience_counter = 1
    assert restore_callback_states([same, early], stored) == ["KLMonitorCallback"]
    assert (same.breaches, same.above_warn, same.seen) == (2, True, True)
    assert early.early_stopping_patience_counter == 1  # not ours: transformers' flag decides
    # A new threshold: counts start afresh.
    changed = KLMonitorCallback("kl/exact_rejected", stop_above=0.9, patience=3)
    assert restore_callback_states([changed], stored) == []
    assert changed.breaches == 0


# --- SIGKILL and resume -------------------------------------------------------------------------------------


def _comparable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k not in VOLATILE} for entry in history]


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_matches_an_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from trl_conservative import ConservativeDPOTrainer, KLMonitorCallback

    crashed = tmp_path / "crashed"
    marker = tmp_path / "checkpoint-saved"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = subprocess.Popen(
        [sys.executable, crash_worker.__file__, str(tiny_model_dir), str(crashed), str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # Meanwhile, the uninterrupted run, in this process.
        train, evaluation = crash_worker.datasets()
        full_monitor = crash_worker.monitor()
        full = ConservativeDPOTrainer(
            str(tiny_model_dir),
            args=crash_worker.run_config(str(tmp_path / "full")),
            train_dataset=train,
            eval_dataset=evaluation,
            callbacks=[full_monitor],
        )
        full.train()
        deadline = time.monotonic() + 120
        while not marker.exists():
            if worker.poll() is not None:
                pytest.fail(
                    f"worker exited early: {worker.stderr.read().decode()[-2000:] if worker.stderr else ''}"
                )
            if time.monotonic() > deadline:
                pytest.fail("worker did not reach checkpoint-2 within 120 s")
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        if worker.stderr:
            worker.stderr.close()

    checkpoint = latest_checkpoint(crashed)
    assert checkpoint == crashed / "checkpoint-2"
    resumed_monitor = crash_worker.monitor()
    resumed = ConservativeDPOTrainer(
        str(tiny_model_dir),
        args=crash_worker.run_config(str(crashed)),
        train_dataset=train,
        eval_dataset=evaluation,
        callbacks=[resumed_monitor],
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))

    # The same weights ...
    full_params = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, full_params[name], rtol=0, atol=1e-6, msg=name)
    # ... the same metrics at every step, the final loss included, and one start-of-run evaluation only ...
    assert _comparable(resumed.state.log_history) == _comparable(full.state.log_history)
    steps = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [h["step"] for h in resumed.state.log_history if "eval_loss" in h] == [0, 3, 6]
    # ... and the KL monitor's count carries over (6 consecutive breaches, not the 4 seen after the resume).
    assert isinstance(resumed_monitor, KLMonitorCallback)
    assert resumed_monitor.breaches == full_monitor.breaches == 6
    final_state = json.loads((crashed / "checkpoint-6" / "trainer_state.json").read_text())
    assert final_state["stateful_callbacks"]["KLMonitorCallback"]["attributes"]["breaches"] == 6
    # TRL's token count is carried across the resume where TRL counts tokens, and nothing is invented where not.
    counters = final_state["stateful_callbacks"].get("TrainCounters")
    if TRL_STACK == "fused_head":
        logged = [h["num_tokens"] for h in resumed.state.log_history if "num_tokens" in h]
        assert logged == [h["num_tokens"] for h in full.state.log_history if "num_tokens" in h]
        assert counters["attributes"]["train_tokens"] == logged[-1] > 0
    else:
        assert counters is None
    # The suspected-flip scores recorded before the crash come back with the checkpoint: the resumed run holds the
    # same first-visit scores as the uninterrupted one.
    assert len(resumed.pair_scores) == len(full.pair_scores) > 0
    for mine, theirs in zip(resumed.pair_scores.scores(), full.pair_scores.scores(), strict=True):
        assert (mine.row, mine.step) == (theirs.row, theirs.step)
        assert mine.policy_margin == pytest.approx(theirs.policy_margin, abs=1e-4)
