"""The commands `trl-conservative run` prints when a run stops: how to resume it, or finish its cut-off end.

Each is the user's own command line (`argv`) with the flags that started or resumed the run replaced, so it can be
pasted as printed.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence

from trl_conservative.errors import TrainingHalted, TrainingInterrupted
from trl_conservative.reliability.end_of_run import RunNotFinished

__all__ = ["finish_command", "halted_message", "resume_command"]


# Flags a resume command replaces: how the run was started or resumed, and the overwrite that resuming contradicts.
_RUN_START_FLAGS = ("--resume_from_checkpoint", "--resume", "--resume_weights_only", "--overwrite_output_dir")


def _without_start_flags(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    args = list(argv)
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        flag = "--" + arg.split("=", 1)[0].lstrip("-").replace("-", "_")  # --resume-from-checkpoint too
        if arg.startswith("--") and flag in _RUN_START_FLAGS:
            # The switches may be followed by an explicit true/false value; the checkpoint always by a path.
            skip = "=" not in arg and (flag == "--resume_from_checkpoint" or _is_bool_at(args, i + 1))
            continue
        kept.append(arg)
    return kept


def resume_command(
    argv: Sequence[str], checkpoint: str, *, program: str = "trl-conservative run", extra: Sequence[str] = ()
) -> str:
    """The command that resumes a CLI run: its arguments, without earlier resume (and overwrite) flags, plus the
    checkpoint. `extra` is appended (`--overwrite_output_dir false` when the config file sets it)."""
    kept = _without_start_flags(argv)
    return shlex.join([*program.split(), *kept, *extra, "--resume_from_checkpoint", checkpoint])


def finish_command(
    argv: Sequence[str],
    finish_from: str | None = None,
    *,
    program: str = "trl-conservative run",
    extra: Sequence[str] = (),
) -> str:
    """The command that finishes a run whose end was cut off: its arguments plus `--resume true` (which recognises
    the unfinished end in `output_dir`), or `--resume_from_checkpoint` the folder its weights were saved to."""
    if finish_from:
        return resume_command(argv, finish_from, program=program, extra=extra)
    return shlex.join([*program.split(), *_without_start_flags(argv), *extra, "--resume", "true"])


def halted_message(error: TrainingHalted, run_argv: Sequence[str]) -> str:
    """One line for `trl-conservative run`: why training stopped, and the exact command that resumes it."""
    extra = tuple(getattr(error, "command_extra", ()))
    if isinstance(error, RunNotFinished):
        text = " ".join(str(error).split())
        return f"{text} Finish the save and the report with: {finish_command(run_argv, error.finish_from, extra=extra)}"
    if isinstance(error, TrainingInterrupted) and error.checkpoint:
        name = signal.Signals(error.signal_number).name
        return (
            f"training interrupted by {name} at step {error.step}: saved checkpoint {error.checkpoint}. "
            f"Resume with: {resume_command(run_argv, error.checkpoint, extra=extra)}"
        )
    text = " ".join(str(error).split())
    if error.checkpoint and not isinstance(error, TrainingInterrupted):
        text += f" Resume (after the fix) with: {resume_command(run_argv, error.checkpoint, extra=extra)}"
    return text


def _is_bool_at(argv: Sequence[str], i: int) -> bool:
    return i < len(argv) and argv[i].lower() in ("true", "false", "1", "0", "yes", "no")
