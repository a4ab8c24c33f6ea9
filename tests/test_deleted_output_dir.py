"""An output folder deleted while a run trains (issue 20 family 7): the run recreates what it saves afterwards but
not its record `trl_conservative_run.json`; a later run into the folder is told the folder was deleted, and whose
results it holds, instead of calling them files "not from a trl-conservative run"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs
from finished_run import copy_run, finished_run

from trl_conservative.errors import ConfigError
from trl_conservative.reliability.output_dir import IDENTITY_FILE, check_output_dir, read_identity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return finished_run(tmp_path_factory, tiny_model_dir)


@pytest.fixture
def unrecorded(run_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A copy of the finished run without its record, as a folder deleted mid-run is left; and that record."""
    folder = copy_run(run_dir, tmp_path / "run")
    identity = read_identity(folder)
    assert identity is not None
    (folder / IDENTITY_FILE).unlink()
    return folder, {k: v for k, v in identity.items() if k != "run_id"}


def test_the_same_settings_are_told_the_folder_was_deleted_and_whose_results_it_holds(
    unrecorded: tuple[Path, dict[str, object]], run_dir: Path
) -> None:
    folder, identity = unrecorded
    run_id = json.loads((run_dir / IDENTITY_FILE).read_text())["run_id"]
    with pytest.raises(ConfigError) as refused:
        check_output_dir(folder, identity)
    message = str(refused.value)
    assert f"holds the results of run {run_id}" in message
    assert "the folder was deleted while that run was writing into it" in message
    assert "trainer_state.json still names the run" in message and "--resume true" in message
    assert "not from a trl-conservative run" not in message
    check_output_dir(folder, identity, resuming=True)  # its own resume is accepted


def test_other_settings_are_told_the_folder_was_deleted_and_what_differs(
    unrecorded: tuple[Path, dict[str, object]],
) -> None:
    folder, identity = unrecorded
    with pytest.raises(ConfigError) as refused:
        check_output_dir(folder, {**identity, "beta": 0.5})
    message = str(refused.value)
    assert (
        "holds a different run (its record trl_conservative_run.json is missing: the folder was deleted"
        in message
    )
    assert "beta 0.1 (now 0.5)" in message


def test_without_stamps_the_run_summary_names_the_run(unrecorded: tuple[Path, dict[str, object]]) -> None:
    folder, identity = unrecorded
    for state in [folder / "trainer_state.json", *folder.glob("checkpoint-*/trainer_state.json")]:
        state.unlink()
    with pytest.raises(ConfigError) as refused:
        check_output_dir(folder, identity)
    message = str(refused.value)
    assert (
        "holds the results of an earlier run (its record" in message
        and "run_summary.json still names" in message
    )


def test_a_model_folder_is_still_foreign(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    with pytest.raises(ConfigError, match="not from a trl-conservative run of these settings"):
        check_output_dir(folder, {"model": "x"})


def test_a_folder_deleted_during_training_is_called_deleted_by_the_next_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """End to end: `rm -rf` the output folder once the first checkpoint is complete (between two saves: a folder
    deleted during a save fails that save), let the run finish, run again."""
    out = tmp_path / "out"
    settings = tiny_run_settings(
        tiny_model_dir,
        write_pairs(tmp_path / "pairs.jsonl", 16),
        out,
        max_steps=40,
        save_strategy="steps",
        save_steps=10,
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "trl_conservative.cli", "run", "--config", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-10" / "trainer_state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, (
            process.stderr and process.stderr.read()
        )
        time.sleep(0.05)
    shutil.rmtree(out, ignore_errors=True)
    assert process.wait(timeout=300) == 0, process.stderr and process.stderr.read()
    assert not (out / IDENTITY_FILE).exists() and (out / "run_summary.json").is_file()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "the folder was deleted while that run was writing into it" in lines[0], lines
    assert "not from a trl-conservative run" not in lines[0]
