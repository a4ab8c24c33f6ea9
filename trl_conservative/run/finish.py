"""The end of a run: the trained weights saved first and never lost, then the files the report is made from.

`end_of_run` saves the final model through a staging folder (`save_final_model`: the weights, then the run's
`trainer_state.json`, then each file renamed into place). SIGINT/SIGTERM wait for that save (`EndOfRunGuard`); when
the save fails (a full disk) it is tried again if the failed save freed enough room, else the checkpoint of the last
step is named when it holds the weights, else they are saved to another file system with room
(`TRL_CONSERVATIVE_RESCUE_DIR`, the cache, the temp folder), else the process holds them in memory and saves them
once `output_dir`'s disk has room. `write_report` then writes the suspected-flip list, the model card,
`trainer_state.json`, the curves and, last, `run_summary.json`, each atomically. A signal or a failed write stops
the end of the run with `RunNotFinished`: one line saying where the weights are, what is not written yet and how
much room that needs; the CLI adds the command that finishes it.

`finish_cut_off_end` is that command's work (`--resume true` on such a folder, `resume.py`): the trained model
moved or copied into place, the run's state restored from its `trainer_state.json`, then the report. Nothing trains.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trl_conservative.errors import TrainingHalted
from trl_conservative.reliability import atomic
from trl_conservative.reliability.callback_state import restore_callback_states, save_trainer_state
from trl_conservative.reliability.checkpoints import (
    CHECKPOINT_PREFIX,
    TRAINER_STATE,
    WEIGHT_FILES,
    checkpoint_problem,
    latest_checkpoint,
)
from trl_conservative.reliability.end_of_run import (
    FINAL_STAGE,
    EndOfRunGuard,
    RunNotFinished,
    StopAtEndOfRun,
    free_bytes,
    human_bytes,
    model_bytes,
    out_of_space,
    write_error,
)
from trl_conservative.reliability.output_dir import checkpoint_stamp
from trl_conservative.report.summary import PLOT_FILE, STATE_FILE, SUMMARY_FILE, RunSummary

from .args import RunSpec, one_line
from .data import PreferenceData
from .label_noise import report_suspected_flips
from .resume import ResumePlan
from .settings import run_settings

__all__ = [
    "RESCUE_ENV",
    "SPACE_POLL_S",
    "end_of_run",
    "finish_cut_off_end",
    "save_final_model",
    "write_report",
]

RESCUE_ENV = "TRL_CONSERVATIVE_RESCUE_DIR"  # where trained weights go when output_dir's disk is full
SPACE_POLL_S = 5.0  # how often a run holding its weights in memory looks for free space


class _Report:
    """What the end of a run has written so far, for the line that says what is missing."""

    def __init__(self, spec: RunSpec, output_dir: Path, trainer: Any) -> None:
        self.output_dir, self.trainer = output_dir, trainer
        self.phase = "saving the trained model"
        self.todo = [
            *(["suspected_flips.jsonl"] if int(getattr(spec.script, "suspected_flips", 0) or 0) > 0 else []),
            "the model card README.md",  # (trainer_state.json came into place with the model)
            *([PLOT_FILE] if getattr(spec.script, "plot", False) else []),
            SUMMARY_FILE,
        ]

    @contextlib.contextmanager
    def writing(self, what: str, phase: str) -> Iterator[None]:
        self.phase = phase
        yield
        if what in self.todo:
            self.todo.remove(what)

    def need(self) -> str:
        history = len(json.dumps(self.trainer.state.log_history, default=str))
        return human_bytes(2 * history + (1 << 20))

    def line(self, cause: str) -> str:
        where = f"the trained model is saved whole in {str(self.output_dir)!r}"
        missing = ", ".join(self.todo) or "nothing"
        return f"{cause}: {where}; not yet written: {missing} (they need about {self.need()} of disk space there)."


def end_of_run(
    trainer: Any,
    spec: RunSpec,
    data: PreferenceData,
    guard: EndOfRunGuard,
    *,
    runtime: float | None,
    run_id: str | None,
    in_checkpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> RunSummary | None:
    """Save the trained weights (held from signals, never lost to a full disk), then write the report files."""
    output_dir = Path(str(spec.training.output_dir))
    size = model_bytes(trainer)
    guard.saving_what = f"the trained model (about {human_bytes(size)}) to {str(output_dir)!r}"
    step = f"step {trainer.state.global_step} of {trainer.state.max_steps}"
    held = _checkpoint_with_final_weights(trainer, in_checkpoint)
    if held is not None and in_checkpoint is not None and trainer.is_world_process_zero():
        # The checkpoint was saved before training logged its end (run time, mean loss): record the whole log there.
        with contextlib.suppress(Exception):
            save_trainer_state(trainer, Path(in_checkpoint) / TRAINER_STATE)
    try:
        if held is None:
            _save_weights(trainer, output_dir, guard, size=size, run_id=run_id, log=log)
            if trainer.is_world_process_zero():
                (output_dir / SUMMARY_FILE).unlink(missing_ok=True)  # an earlier end's report: stale now
        guard.weights_saved()
    except StopAtEndOfRun as stop:  # the signal held since the end of training (the weights are safe)
        name = signal.Signals(stop.signal_number).name
        if held is not None:
            message = (
                f"{name} at the end of training ({step}): the trained weights are in {held!r} (its checkpoint); not "
                f"yet written: the final model, model card, {STATE_FILE} and {SUMMARY_FILE} (they need about "
                f"{human_bytes(size)} of disk space in {str(output_dir)!r})."
            )
        else:
            message = _Report(spec, output_dir, trainer).line(
                f"{name} while saving the trained model ({step})"
            )
        raise RunNotFinished(message, signal_number=stop.signal_number) from None
    if not trainer.is_world_process_zero():
        return None
    return write_report(trainer, spec, data, output_dir, runtime=runtime, log=log)


def write_report(
    trainer: Any,
    spec: RunSpec,
    data: PreferenceData,
    output_dir: Path,
    *,
    runtime: float | None,
    log: Callable[[str], None],
) -> RunSummary:
    """The files the report is made from, each atomically; `run_summary.json` last (it marks a finished run)."""
    script = spec.script
    report = _Report(spec, output_dir, trainer)
    try:
        with report.writing("suspected_flips.jsonl", "estimating label noise"):
            # Label noise from the scores training recorded (an extra pass only with suspected_flips_pass).
            noise, flips, flips_s = report_suspected_flips(
                trainer,
                data.train,
                output_dir,
                top=int(getattr(script, "suspected_flips", 0) or 0),
                after_training=bool(getattr(script, "suspected_flips_pass", False)),
                log=log,
            )
        trainer.label_noise = noise  # the model card states it
        card = output_dir / "README.md"
        with report.writing("the model card README.md", "writing the model card"):
            trainer.create_model_card(
                model_name=output_dir.name,
                dataset_name=data.name,  # the card links hub ids only; local paths and builtin: names stay plain text
            )
        with report.writing(STATE_FILE, f"writing {STATE_FILE}"):
            save_trainer_state(trainer, output_dir / STATE_FILE)
        summary = RunSummary(
            settings=run_settings(spec, data),
            log_history=list(trainer.state.log_history),
            output_dir=str(output_dir),
            model_dir=str(output_dir),
            model_card=str(card) if card.is_file() else None,
            runtime_s=runtime,
            global_step=trainer.state.global_step,
            max_steps=trainer.state.max_steps,
            suspected_flips=None if flips is None else [f.to_json() for f in flips],
            suspected_flips_s=flips_s,
            label_noise=None if noise is None else noise.to_json(),
        )
        if script.plot:
            from trl_conservative.report.plot import plot_run

            with (
                report.writing(PLOT_FILE, "drawing the training curves"),
                tempfile.TemporaryDirectory(prefix=atomic.TEMP_PREFIX, dir=output_dir) as stage,
            ):
                plot = plot_run(summary, stage)  # drawn aside, then moved over the old PNG in one rename
                if plot is not None:
                    plot = atomic.move_into_place(plot, output_dir / plot.name)
            summary.plot = str(plot) if plot else None
        with report.writing(SUMMARY_FILE, f"writing {SUMMARY_FILE}"):
            summary.save(output_dir)
    except StopAtEndOfRun as stop:
        name = signal.Signals(stop.signal_number).name
        raise RunNotFinished(
            report.line(f"{name} while {report.phase}"), signal_number=stop.signal_number
        ) from None
    except Exception as exc:
        if isinstance(exc, TrainingHalted) or not write_error(exc):
            raise
        raise RunNotFinished(report.line(f"{_error_text(exc)} while {report.phase}")) from None
    return summary


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "No space left on device", without the temporary file's name
    return f"{type(exc).__name__}: {one_line(str(exc))[:200]}"


def _checkpoint_with_final_weights(trainer: Any, checkpoint: str | None) -> str | None:
    """The saved checkpoint that holds the trained (final) weights, when a signal stopped the last step."""
    if checkpoint is None or checkpoint_problem(checkpoint) is not None:
        return None
    best = getattr(trainer.state, "best_model_checkpoint", None)
    if getattr(trainer.args, "load_best_model_at_end", False) and best:
        return str(best) if checkpoint_problem(best) is None else None
    return checkpoint


def _save_or_write_error(trainer: Any, output_dir: Path) -> Exception | None:
    """`save_final_model`; a failed write (a full disk, ...) is returned, None on success, anything else raised."""
    try:
        save_final_model(trainer, output_dir)
    except Exception as exc:
        if isinstance(exc, TrainingHalted) or not write_error(exc):
            raise
        return exc
    return None


def _save_weights(
    trainer: Any,
    output_dir: Path,
    guard: EndOfRunGuard,
    *,
    size: int,
    run_id: str | None,
    log: Callable[[str], None],
) -> None:
    """`save_final_model`; when the disk is full (or the write fails), never lose the weights.

    In order: try again once if the failed save freed enough room; name the checkpoint of the last step when it holds
    the weights; save them to another file system with room (`TRL_CONSERVATIVE_RESCUE_DIR`, the cache, the temp
    folder); else hold them in memory and save them as soon as `output_dir`'s disk has room. Each way out but the
    last raises `RunNotFinished`, whose line says where the weights are and what finishes the run.
    """
    error = _save_or_write_error(trainer, output_dir)
    if error is None:
        return
    failure: Exception = error
    _clear_stage(trainer, output_dir)
    free = free_bytes(output_dir)
    if (
        free is not None and free > size * 1.1
    ):  # the failed save's own files were in the way, or a passing hitch
        error = _save_or_write_error(trainer, output_dir)
        if error is None:
            return
        failure = error
        _clear_stage(trainer, output_dir)
        free = free_bytes(output_dir)
    cause = (
        f"{_error_text(failure)} while saving the trained model to {str(output_dir)!r} (it needs about "
        f"{human_bytes(size)}; {human_bytes(free)} free there)"
    )
    step = trainer.state.global_step
    checkpoint = output_dir / f"{CHECKPOINT_PREFIX}-{step}"
    stamp = checkpoint_stamp(checkpoint) if checkpoint.is_dir() else None
    ours = stamp is None or run_id is None or stamp.get("run_id") == run_id
    if (
        ours
        and checkpoint_problem(checkpoint) is None
        and not getattr(trainer.args, "load_best_model_at_end", False)
    ):
        raise RunNotFinished(
            f"{cause}: the trained weights are in {str(checkpoint)!r} (the checkpoint of the last step); not yet "
            f"written: the final model and the report. Free about {human_bytes(size)} there first."
        )
    if not trainer.is_world_process_zero():
        raise failure
    rescued = _rescue(trainer, size, run_id=run_id, log=log)
    if rescued is not None:
        raise RunNotFinished(
            f"{cause}: the trained weights were saved to {rescued!r} instead ({human_bytes(size)}, with the run's "
            f"{TRAINER_STATE}); nothing else was written. Free about {human_bytes(size)} in {str(output_dir)!r} first.",
            finish_from=rescued,
        )
    _wait_for_space(trainer, output_dir, guard, size=size, cause=cause, failure=failure)


def _clear_stage(trainer: Any, output_dir: Path) -> None:
    if trainer.is_world_process_zero():
        shutil.rmtree(output_dir / FINAL_STAGE, ignore_errors=True)


def _rescue_roots() -> list[Path]:
    from trl_conservative.demo.embedded import cache_dir

    roots = [Path(os.environ[RESCUE_ENV])] if os.environ.get(RESCUE_ENV) else []
    with contextlib.suppress(Exception):
        roots.append(cache_dir() / "rescue")
    roots.append(Path(tempfile.gettempdir()) / "trl-conservative-rescue")
    return roots


def _rescue(trainer: Any, size: int, *, run_id: str | None, log: Callable[[str], None]) -> str | None:
    """Save the trained model and the run's state into a folder on another file system with room; its path."""
    for root in _rescue_roots():
        free = free_bytes(root)
        if free is None or free < size * 1.1:
            continue
        folder = root / f"{run_id or 'run'}-step{trainer.state.global_step}"
        try:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            trainer.save_model(str(folder))
            save_trainer_state(trainer, folder / TRAINER_STATE)  # last: it marks the folder complete
        except Exception as exc:
            if isinstance(exc, TrainingHalted) or not write_error(exc):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            continue
        return str(folder)
    return None


def _wait_for_space(
    trainer: Any, output_dir: Path, guard: EndOfRunGuard, *, size: int, cause: str, failure: Exception
) -> None:
    """Hold the trained weights in memory and save them once `output_dir` has room; a signal gives up."""
    print(
        f"trl-conservative: {cause}, and no other folder has room for them. The trained weights are held in memory "
        f"by this process (pid {os.getpid()}): free about {human_bytes(size)} there and the save goes on by itself "
        f"(checked every {SPACE_POLL_S:g} s); Ctrl-C gives them up.",
        file=sys.stderr,
        flush=True,
    )
    guard.waiting_for = f"{human_bytes(size)} of disk space in {str(output_dir)!r}"
    tries_with_room = 0
    while True:
        if guard.pending is not None:
            _weights_lost(
                trainer,
                output_dir,
                f"{cause}; stopped by {signal.Signals(guard.pending).name} while waiting for space",
                signal_number=guard.pending,
            )
        free = free_bytes(output_dir)
        if free is None or free > size * 1.1:
            error = _save_or_write_error(trainer, output_dir)
            if error is None:
                return
            failure = error
            _clear_stage(trainer, output_dir)
            tries_with_room += 1
            if tries_with_room >= 3 or not out_of_space(failure):
                _weights_lost(
                    trainer,
                    output_dir,
                    f"{_error_text(failure)} while saving the trained model to "
                    f"{str(output_dir)!r}, {tries_with_room} times with {human_bytes(free)} free there",
                )
        time.sleep(SPACE_POLL_S)


def _weights_lost(trainer: Any, output_dir: Path, cause: str, *, signal_number: int | None = None) -> None:
    latest = latest_checkpoint(output_dir)
    error = TrainingHalted(
        f"{cause}: the trained weights could not be saved and are lost"
        + (
            f"; the latest checkpoint is {str(latest)!r}."
            if latest
            else "; there is no checkpoint to resume."
        ),
        checkpoint=str(latest) if latest else None,
    )
    if signal_number is not None:
        error.exit_status = 128 + signal_number
    raise error


# --- finishing an end that was cut off ----------------------------------------------------------------------------
def finish_cut_off_end(
    trainer: Any,
    spec: RunSpec,
    data: PreferenceData,
    plan: ResumePlan,
    guard: EndOfRunGuard,
    *,
    log: Callable[[str], None] = print,
) -> RunSummary | None:
    """Finish a run whose training ended but whose end did not: its trained model in place, then the report."""
    from transformers import TrainerState

    output_dir = Path(str(spec.training.output_dir))
    source = Path(plan.source)
    trainer.state = TrainerState.load_from_json(str(source / TRAINER_STATE))
    restore_callback_states(trainer.callback_handler.callbacks, trainer.state.stateful_callbacks or {})
    guard.saving()
    guard.saving_what = f"the trained model from {str(source)!r} into {str(output_dir)!r}"
    main = trainer.is_world_process_zero()
    try:
        if plan.kind == "stage" and main:
            atomic.move_contents_into_place(source, output_dir)  # renames only: no space needed
        elif plan.kind == "output_dir" and main:
            shutil.rmtree(output_dir / FINAL_STAGE, ignore_errors=True)  # what a cut-off move left, or a cut-off save
        elif plan.kind == "checkpoint":
            _copy_trained_model(trainer, source, output_dir)
        if main:
            (output_dir / SUMMARY_FILE).unlink(missing_ok=True)
        guard.weights_saved()
    except StopAtEndOfRun as stop:
        name = signal.Signals(stop.signal_number).name
        raise RunNotFinished(
            _Report(spec, output_dir, trainer).line(f"{name} while saving the trained model"),
            signal_number=stop.signal_number,
        ) from None
    if not main:
        return None
    if getattr(spec.script, "suspected_flips_pass", False):  # the extra pass scores under the trained weights
        from trl_conservative.trainer.trl_compat import load_trained_weights

        load_trained_weights(trainer, str(output_dir))
    summary = write_report(trainer, spec, data, output_dir, runtime=None, log=log)
    if plan.kind == "checkpoint" and source.resolve().parent in {r.resolve() for r in _rescue_roots()}:
        shutil.rmtree(source, ignore_errors=True)  # the copy a full disk made elsewhere: in place now
        log(f"Removed {str(source)!r}: the trained model it held is now in {str(output_dir)!r}.")
    return summary


def _copy_trained_model(trainer: Any, source: Path, output_dir: Path) -> None:
    """Copy the model files of a checkpoint (the best one under load_best_model_at_end) into `output_dir`, through
    the staging folder; a failed copy leaves the checkpoint as it was and says so."""
    best = getattr(trainer.state, "best_model_checkpoint", None)
    weights = Path(best) if getattr(trainer.args, "load_best_model_at_end", False) and best else source
    if not trainer.is_world_process_zero():
        return
    stage = output_dir / FINAL_STAGE
    shutil.rmtree(stage, ignore_errors=True)
    skipped = ("optimizer", "scheduler.pt", "scaler.pt", "rng_state", TRAINER_STATE)
    try:
        stage.mkdir(parents=True)
        for entry in sorted(weights.iterdir()):
            if entry.is_file() and not entry.name.startswith(skipped):
                shutil.copy2(entry, stage / entry.name)
        if not any((stage / name).is_file() for name in WEIGHT_FILES):  # FSDP or DeepSpeed folders: not copied
            from trl_conservative.trainer.trl_compat import load_trained_weights

            shutil.rmtree(stage)
            load_trained_weights(trainer, str(weights))  # a sharded layout: load it, then save it as a model
            save_final_model(trainer, output_dir)
        else:
            save_trainer_state(trainer, stage / TRAINER_STATE)
            atomic.move_contents_into_place(stage, output_dir)
    except Exception as exc:
        if isinstance(exc, TrainingHalted) or not write_error(exc):
            raise
        shutil.rmtree(stage, ignore_errors=True)
        size = sum(p.stat().st_size for p in weights.iterdir() if p.is_file())
        inside = source.resolve().is_relative_to(output_dir.resolve())
        raise RunNotFinished(
            f"{_error_text(exc)} while copying the trained model from {str(weights)!r} into {str(output_dir)!r} "
            f"(it needs about {human_bytes(size)}; {human_bytes(free_bytes(output_dir))} free there): the trained "
            f"weights are still in {str(weights)!r}. Free about {human_bytes(size)} there first.",
            finish_from=None if inside else str(source),
        ) from None


def save_final_model(trainer: Any, output_dir: Path) -> None:
    """`trainer.save_model` into a staging folder in `output_dir`, then each file renamed over the previous one.

    The run's `trainer_state.json` is written into the staging folder last, so a complete staging folder is a
    checkpoint of the finished run that `--resume true` recognises. An interruption while the weights are written
    leaves the previous model files complete (and a staging folder that the next save replaces), never a
    half-written `model.safetensors`.
    """
    stage = output_dir / FINAL_STAGE
    if trainer.is_world_process_zero() and stage.exists():
        shutil.rmtree(stage)  # left by an interrupted save
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(stage))  # every process takes part (FSDP, DeepSpeed)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        if hasattr(trainer, "state"):
            save_trainer_state(trainer, stage / TRAINER_STATE)
        atomic.move_contents_into_place(stage, output_dir)
