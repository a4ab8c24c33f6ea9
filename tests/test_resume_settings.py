"""A resume never silently changes what a run is: settings that differ from the run's are refused when they cannot
take effect and named otherwise; a checkpoint without its optimizer, scheduler or RNG state is refused unless
`resume_weights_only` asks for it; a finished run is not "resumed" into a 0-step run; contradictory flags are
refused; an unfinished end of a run is recognised and finished without training."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_settings import tiny_run_settings, write_pairs
from safetensors.torch import save_file

from trl_conservative.errors import ConfigError
from trl_conservative.reliability.checkpoints import checkpoint_problem, missing_state_files
from trl_conservative.reliability.end_of_run import FINAL_STAGE
from trl_conservative.reliability.output_dir import IDENTITY_FILE
from trl_conservative.run.args import parse_run_args
from trl_conservative.run.commands import finish_command, resume_command
from trl_conservative.run.resume import check_resume_flags, plan_resume, settings_record, unfinished_end

RUN_ID = "20260101-000000-abcdef12"
STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


def _spec(tmp_path: Path, *flags: str, **settings: Any) -> Any:
    config = tiny_run_settings(
        tmp_path / "model", write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "out", **settings
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return parse_run_args(["--config", str(path), *flags])


def _folder(
    folder: Path,
    spec: Any,
    *,
    step: int,
    end: int,
    files: tuple[str, ...] = STATE_FILES,
    recorded: dict[str, Any] | None = None,
    stamped: bool = True,
) -> Path:
    """A checkpoint-like folder: weights, the state at `step` of `end`, stamped with the run and its settings."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({}, str(folder / "model.safetensors"))
    for name in files:
        torch.save({}, folder / name)  # a real torch.save archive: a damaged one is no complete checkpoint
    callbacks: dict[str, Any] = {"RunStamp": {"args": {"run_id": RUN_ID, "identity": {}}, "attributes": {}}}
    if stamped:
        settings = {**settings_record(spec), **(recorded or {})}
        callbacks["SettingsStamp"] = {"args": {"settings": settings}, "attributes": {}}
    state = {
        "global_step": step,
        "max_steps": end,
        "num_train_epochs": 1,
        "train_batch_size": 4,
        "log_history": [],
        "stateful_callbacks": callbacks,
    }
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def _run_folder(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / IDENTITY_FILE).write_text(json.dumps({"run_id": RUN_ID}))
    return out


# --- the training state a checkpoint holds -------------------------------------------------------------------------
def test_a_checkpoint_without_its_optimizer_scheduler_or_rng_state_is_refused_naming_the_files(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, max_steps=8)
    checkpoint = _folder(_run_folder(tmp_path) / "checkpoint-4", spec, step=4, end=8, files=("scheduler.pt",))
    assert missing_state_files(checkpoint) == ["optimizer.pt", "rng_state.pth"]
    with pytest.raises(ConfigError) as refused:
        plan_resume(spec, str(checkpoint), RUN_ID)
    line = str(refused.value)
    assert f"Cannot resume from {str(checkpoint)!r} (step 4 of 8): it has no optimizer.pt, no rng_state.pth" in line
    assert "--resume_weights_only true" in line


def test_weights_only_resume_is_explicit_and_says_what_starts_afresh(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "--resume_weights_only", "true", max_steps=8)
    checkpoint = _folder(_run_folder(tmp_path) / "checkpoint-4", spec, step=4, end=8, files=())
    plan = plan_resume(spec, str(checkpoint), RUN_ID)
    assert plan.weights_only and not plan.finish and plan.source == str(checkpoint)
    assert "with its weights only (resume_weights_only): the optimizer, the learning-rate schedule and the " in plan.note
    assert "(optimizer.pt, scheduler.pt, rng_state.pth missing)" in plan.note


# --- settings that differ from the run's ----------------------------------------------------------------------------
def test_a_learning_rate_a_restored_scheduler_would_ignore_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "--learning_rate", "0.05", max_steps=8)
    checkpoint = _folder(
        _run_folder(tmp_path) / "checkpoint-4", spec, step=4, end=8, recorded={"learning_rate": 3e-4}
    )
    with pytest.raises(ConfigError) as refused:
        plan_resume(spec, str(checkpoint), RUN_ID)
    line = str(refused.value)
    assert "learning_rate 0.05 (the run: 0.0003) would not take effect as the run continues" in line
    assert "the optimizer and learning-rate scheduler restored from the checkpoint keep the run's values" in line
    # Asked for a fresh optimizer and schedule, the new value truly applies, and the note says so.
    fresh = _spec(tmp_path, "--learning_rate", "0.05", "--resume_weights_only", "true", max_steps=8)
    plan = plan_resume(fresh, str(checkpoint), RUN_ID)
    assert "settings that differ from the run's, applied from here on: learning_rate 0.05 (the run: 0.0003)" in (
        plan.note
    )


@pytest.mark.parametrize(
    ("flags", "shown"),
    [
        (("--per_device_train_batch_size", "8"), "per_device_train_batch_size 8 (the run: 4)"),
        (("--gradient_accumulation_steps", "2"), "gradient_accumulation_steps 2 (the run: 1)"),
        (("--data_seed", "3"), "data_seed 3 (the run: 0)"),
        (("--use_peft", "true"), "use_peft true (the run: false)"),
    ],
)
def test_batch_shape_data_order_and_model_setup_are_refused_even_with_weights_only(
    tmp_path: Path, flags: tuple[str, ...], shown: str
) -> None:
    base = _spec(tmp_path, max_steps=8, data_seed=0)
    checkpoint = _folder(_run_folder(tmp_path) / "checkpoint-4", base, step=4, end=8)
    spec = _spec(tmp_path, *flags, "--resume_weights_only", "true", max_steps=8, data_seed=0)
    with pytest.raises(ConfigError, match=re.escape(f"{shown} would not take effect as the run continues")):
        plan_resume(spec, str(checkpoint), RUN_ID)


def test_settings_that_take_effect_are_named_in_one_note(tmp_path: Path) -> None:
    base = _spec(tmp_path, max_steps=8)
    checkpoint = _folder(_run_folder(tmp_path) / "checkpoint-4", base, step=4, end=8)
    spec = _spec(tmp_path, "--logging_steps", "2", "--max_grad_norm", "0.5", "--output_dir", "ignored", max_steps=12)
    plan = plan_resume(spec, str(checkpoint), RUN_ID)
    assert plan.note == (
        f"Resuming run {RUN_ID} from {str(checkpoint)!r} (step 4 of 8); settings that differ from the run's, applied "
        "from here on: logging_steps 2 (the run: 10), max_grad_norm 0.5 (the run: 1.0), max_steps 12 (the run: 8)."
    )


def test_an_older_checkpoint_is_checked_against_its_state_and_scheduler(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "--learning_rate", "0.05", max_steps=8)
    checkpoint = _folder(_run_folder(tmp_path) / "checkpoint-4", spec, step=4, end=8, stamped=False)
    with pytest.raises(ConfigError, match=r"learning_rate 0.05 \(the run: 0.0003\) would not take effect"):
        plan_resume(spec, str(checkpoint), RUN_ID, scheduler_lrs=lambda path: [3e-4, 3e-4])
    wider = _spec(tmp_path, "--per_device_train_batch_size", "8", max_steps=8)
    with pytest.raises(ConfigError, match=r"per_device_train_batch_size 8 \(the run: 4\)"):
        plan_resume(wider, str(checkpoint), RUN_ID)


# --- finished and unfinished runs ----------------------------------------------------------------------------------
def _finished(tmp_path: Path, spec: Any) -> Path:
    out = _run_folder(tmp_path)
    _folder(out / "checkpoint-4", spec, step=4, end=4)
    _folder(out, spec, step=4, end=4, files=())
    (out / "run_summary.json").write_text("{}")
    return out


def test_a_finished_run_is_not_resumed_into_a_zero_step_run(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "--resume", "true", max_steps=4)
    out = _finished(tmp_path, spec)
    with pytest.raises(ConfigError) as refused:
        plan_resume(spec, str(out / "checkpoint-4"), RUN_ID)
    assert str(refused.value).startswith(
        f"Nothing to resume: output_dir {str(out)!r} holds run {RUN_ID}, finished at step 4 of 4 (its model and "
        "run_summary.json are there). To train it further, raise max_steps above 4"
    )
    further = _spec(tmp_path, "--resume", "true", max_steps=6)  # training further is a resume
    plan = plan_resume(further, str(out / "checkpoint-4"), RUN_ID)
    assert not plan.finish and plan.source == str(out / "checkpoint-4")


def test_an_unfinished_end_is_recognised_and_finished_only_with_the_runs_settings(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "--resume", "true", max_steps=4)
    out = _run_folder(tmp_path)
    assert unfinished_end(out) is None
    stage = out / FINAL_STAGE
    stage.mkdir()
    save_file({}, str(stage / "model.safetensors"))  # a save cut off before its trainer_state.json: not it
    assert unfinished_end(out) is None
    _folder(stage, spec, step=4, end=4, files=())
    assert unfinished_end(out) == (str(stage), "stage")
    plan = plan_resume(spec, str(stage), RUN_ID)
    assert plan.finish and plan.kind == "stage"
    assert plan.note.startswith(f"Finishing run {RUN_ID} from {str(stage)!r} (step 4 of 4): its training ended")
    other = _spec(tmp_path, "--resume", "true", "--learning_rate", "0.05", max_steps=4)
    with pytest.raises(ConfigError, match=r"Cannot finish run .* with settings other than the run's: learning_rate"):
        plan_resume(other, str(stage), RUN_ID)
    # Moved into place, the report not written: output_dir itself is the unfinished end.
    for entry in stage.iterdir():
        entry.rename(out / entry.name)
    stage.rmdir()
    assert unfinished_end(out) == (str(out), "output_dir")
    (out / "run_summary.json").write_text("{}")
    assert unfinished_end(out) is None


def test_a_run_that_ended_before_max_steps_is_finished_where_it_ended(tmp_path: Path) -> None:
    """A KL monitor (or early stopping) ended training at step 2 of 4; its end was cut off: finishing it must not
    train on to max_steps."""
    spec = _spec(tmp_path, "--resume", "true", max_steps=4)
    out = _run_folder(tmp_path)
    _folder(out / "checkpoint-2", spec, step=2, end=4)
    _folder(out / FINAL_STAGE, spec, step=2, end=4, files=())
    plan = plan_resume(spec, str(out / FINAL_STAGE), RUN_ID)
    assert plan.finish and plan.kind == "stage"
    further = _spec(tmp_path, "--resume", "true", max_steps=6)
    plan = plan_resume(further, str(out / FINAL_STAGE), RUN_ID)  # past the run's end: train on, from a checkpoint
    assert not plan.finish and plan.source == str(out / "checkpoint-2")


# --- flags -----------------------------------------------------------------------------------------------------------
def test_contradictory_resume_flags_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="and overwrite_output_dir replaces it: the two contradict each other"):
        check_resume_flags(_spec(tmp_path, "--resume", "true", "--overwrite_output_dir", "true"))
    inside = str(tmp_path / "out" / "checkpoint-2")
    with pytest.raises(ConfigError, match="contradict"):
        check_resume_flags(_spec(tmp_path, "--resume_from_checkpoint", inside, "--overwrite_output_dir", "true"))
    outside = str(tmp_path / "elsewhere" / "checkpoint-2")  # another run's checkpoint into a replaced folder
    check_resume_flags(_spec(tmp_path, "--resume_from_checkpoint", outside, "--overwrite_output_dir", "true"))
    with pytest.raises(ConfigError, match="resume_weights_only applies to a resume, and none is asked for"):
        check_resume_flags(_spec(tmp_path, "--resume_weights_only", "true"))


def test_commands_drop_earlier_resume_and_overwrite_flags() -> None:
    argv = ["--config", "r.yaml", "--overwrite_output_dir", "true", "--resume_weights_only=true", "--resume"]
    assert resume_command(argv, "out/checkpoint-8") == (
        "trl-conservative run --config r.yaml --resume_from_checkpoint out/checkpoint-8"
    )
    assert finish_command([*argv, "--resume_from_checkpoint", "x"]) == (
        "trl-conservative run --config r.yaml --resume true"
    )
    assert finish_command(["--config", "r.yaml"], "/rescue/run-step4", extra=("--overwrite_output_dir", "false")) == (
        "trl-conservative run --config r.yaml --overwrite_output_dir false --resume_from_checkpoint /rescue/run-step4"
    )


def test_a_sharded_save_cut_off_between_shards_is_not_complete(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    save_file({}, str(folder / "model-00001-of-00002.safetensors"))
    assert "no model.safetensors.index.json" in (checkpoint_problem(folder) or "")
    (folder / "model.safetensors.index.json").write_text("{}")
    assert "lacks the weight shard model-00002-of-00002.safetensors" in (checkpoint_problem(folder) or "")
    save_file({}, str(folder / "model-00002-of-00002.safetensors"))
    assert checkpoint_problem(folder) is None


# --- through the command -----------------------------------------------------------------------------------------
def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("trl-conservative: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resume_through_the_command_refuses_what_would_change_the_run_and_applies_what_it_says(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trl_conservative.cli import main

    out = tmp_path / "out"
    settings = dict(max_steps=2, save_strategy="steps", save_steps=2, logging_steps=1, learning_rate=3e-4)
    settings |= dict(lr_scheduler_type="constant", live=False, disable_tqdm=True, seed=0, data_seed=0)
    config = tiny_run_settings(tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl", n=16), out, **settings)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    run = ["run", "--config", str(path)]
    assert main(run) == 0
    capsys.readouterr()
    finished = _files(out)

    # A finished run: nothing to resume, and its report is not rewritten by a 0-step "run".
    assert main([*run, "--resume", "true"]) == 2
    assert "Nothing to resume: output_dir" in _one_line(capsys)
    assert main([*run, "--resume", "true", "--overwrite_output_dir", "true"]) == 2
    assert "the two contradict each other" in _one_line(capsys)
    # Training further at another learning rate: the restored optimizer and scheduler would keep 3e-4.
    assert main([*run, "--resume", "true", "--max_steps", "4", "--learning_rate", "0.05"]) == 2
    assert "learning_rate 0.05 (the run: 0.0003) would not take effect" in _one_line(capsys)
    # A checkpoint without its optimizer state (as save_only_model writes it).
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    finished.pop("checkpoint-2/optimizer.pt")
    assert main([*run, "--resume", "true", "--max_steps", "4"]) == 2
    assert "it has no optimizer.pt (the optimizer, learning-rate scheduler and random state" in _one_line(capsys)
    assert _files(out) == finished  # every refusal left the folder as it was

    # Asked for explicitly: the weights only, with the new learning rate truly applied from step 3 on.
    flags = ["--resume", "true", "--max_steps", "4", "--learning_rate", "0.05", "--resume_weights_only", "true"]
    assert main([*run, *flags]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "learning_rate 0.05 (the run: 0.0003)" in said and "with its weights only (resume_weights_only)" in said
    state = json.loads((out / "trainer_state.json").read_text())
    rates = {entry["step"]: entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry}
    assert rates == {1: 3e-4, 2: 3e-4, 3: 0.05, 4: 0.05}
    assert json.loads((out / "run_summary.json").read_text())["global_step"] == 4
