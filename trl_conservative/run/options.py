"""`RunArguments`: the run options of `trl-conservative run` beside TRL's dataset arguments (`ScriptArguments`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments

__all__ = ["RunArguments"]


@dataclass
class RunArguments(ScriptArguments):  # type: ignore[misc]
    """TRL's dataset arguments (`dataset_name`, `dataset_config`, `dataset_train_split`, ...) and run options.

    Parameters:
        test_split_size (`float`, *optional*):
            Hold out this fraction of the train split for evaluation when the dataset has no `dataset_test_split`.
        live (`bool`, *optional*, defaults to `True`):
            Show the live progress line (main process only) instead of the Trainer's tqdm bar.
        plot (`bool`, *optional*, defaults to `True`):
            Write `training_curves.png` (loss, reward margin, KL) beside the run when matplotlib is installed.
        kl_monitor_metric (`str`, *optional*, defaults to `"auto"`):
            The logged KL metric that `kl_warn_above` / `kl_stop_above` apply to; `auto` watches the sequence KL
            on the policy's own samples (`eval_kl/sequence`) when the run evaluates, else `kl/exact`.
        kl_warn_above, kl_stop_above (`float`, *optional*):
            Thresholds of `KLMonitorCallback` (added when either is set): warn, or save and stop.
        kl_stop_patience (`int`, *optional*, defaults to `1`):
            Consecutive logs above `kl_stop_above` needed to stop.
        resume (`bool`, *optional*, defaults to `False`):
            Resume the run in `output_dir`: finish its end if a signal or a full disk cut it off (its trained model
            is saved, its report not), else continue from its latest complete `checkpoint-N` (or give
            `resume_from_checkpoint`).
        resume_weights_only (`bool`, *optional*, defaults to `False`):
            Resume from the checkpoint's weights and step only: the optimizer, the learning-rate schedule and the
            random state start afresh (their settings then apply). Needed for a checkpoint without `optimizer.pt`,
            `scheduler.pt` or `rng_state.pth` (e.g. `save_only_model: true`), which a resume otherwise refuses.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Write into an `output_dir` that holds a different run or other files (they are overwritten).
        drop_bad_rows (`bool`, *optional*, defaults to `False`):
            Drop dataset rows with missing, empty or non-text fields or identical chosen/rejected, instead of
            stopping with an error that lists them.
        suspected_flips (`int`, *optional*, defaults to `20`):
            Estimate the share of flipped labels (with a 95% interval) from each pair's policy margin when it was
            first trained on (no extra pass), and list up to this many pairs more likely flipped than not in
            `suspected_flips.jsonl` and the report; `0` turns both off.
        suspected_flips_pass (`bool`, *optional*, defaults to `False`):
            Also score every training pair under the trained policy in one extra no-grad pass after training, and
            rank the list by that score.
    """

    test_split_size: float | None = field(
        default=None,
        metadata={
            "help": "Hold out this fraction of the train split for evaluation when the dataset has no "
            "`dataset_test_split` split."
        },
    )
    live: bool = field(default=True, metadata={"help": "Show the live progress line (main process only)."})
    plot: bool = field(
        default=True,
        metadata={
            "help": "Write training_curves.png beside the run when matplotlib is installed (`plot` extra)."
        },
    )
    kl_monitor_metric: str = field(
        default="auto",
        metadata={
            "help": "The logged KL metric the monitor watches: auto (eval_kl/sequence when the run evaluates, else "
            "kl/exact), kl/exact, kl/exact_rejected, eval_kl/sequence, ..."
        },
    )
    kl_warn_above: float | None = field(
        default=None,
        metadata={"help": "Warn when the watched KL metric rises above this (adds KLMonitorCallback)."},
    )
    kl_stop_above: float | None = field(
        default=None,
        metadata={"help": "Save a checkpoint and stop when the watched KL metric stays above this."},
    )
    kl_stop_patience: int = field(
        default=1,
        metadata={"help": "Consecutive logs above kl_stop_above needed to stop."},
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Resume the run in output_dir: finish its end if it was cut off after training, else continue "
            "from its latest complete checkpoint-N."
        },
    )
    resume_weights_only: bool = field(
        default=False,
        metadata={
            "help": "Resume from the checkpoint's weights and step only; the optimizer, learning-rate schedule and "
            "random state start afresh (needed for a checkpoint without optimizer.pt, scheduler.pt or rng_state.pth)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into an output_dir holding a different run or other files, overwriting them."
        },
    )
    drop_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop dataset rows with missing, empty or non-text fields or chosen identical to rejected, "
            "instead of stopping with an error that lists them."
        },
    )
    suspected_flips: int = field(
        default=20,
        metadata={
            # no percent sign: argparse formats help with %, and `run --help` crashed on "95% interval"
            "help": "Estimate the share of flipped preference labels (95 percent interval) from the scores training "
            "already computes, and list up to this many training pairs that look flipped in suspected_flips.jsonl "
            "and the report; 0 turns both off."
        },
    )
    suspected_flips_pass: bool = field(
        default=False,
        metadata={
            "help": "After training, score every training pair under the trained policy in one extra no-grad "
            "pass and rank the suspected-flip list by that score (costs about a third of an epoch of training; "
            "see benchmarks/RESULTS.md)."
        },
    )
