"""Resuming a run: which folder continues it, and whether the settings given now continue it as it was.

`--resume true` continues the run recorded in `output_dir` from, in order, its unfinished end (`unfinished_end`: the
trained model saved into the staging folder, or in place without its report, when a signal or a full disk stopped
the end of the run) or its newest complete checkpoint. `plan_resume` then checks the folder against what the run
recorded and the settings given now; each refusal is one `ConfigError` line:

- resuming a run that already finished (its model and `run_summary.json` are in `output_dir`) is refused unless the
  settings train further (a higher `max_steps` or `num_train_epochs`): a 0-step "run" would rewrite its report;
- a source at the end of the run finishes it without training (`ResumePlan.finish`): the model is saved in place,
  then the model card and the report are written, with the run's own settings only;
- a checkpoint without its optimizer, scheduler or RNG state is refused, naming the files, unless
  `resume_weights_only` asks for exactly that: the weights and the step are restored, the rest starts afresh;
- each setting that differs from the checkpoint's record (`SettingsStamp`; for older checkpoints, what
  `trainer_state.json` and `scheduler.pt` hold; never `training_args.bin`, a pickle) is refused when it cannot take
  effect (the learning rate, schedule and optimizer settings under a restored optimizer and scheduler; the batch
  shape, data order and model setup the checkpoint's step and weights belong to), else named in the one note the
  resume logs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.reliability.callback_state import SettingsStamp
from trl_conservative.reliability.checkpoints import (
    TRAINER_STATE,
    checkpoint_problem,
    list_checkpoints,
    missing_state_files,
)
from trl_conservative.reliability.end_of_run import FINAL_STAGE
from trl_conservative.reliability.output_dir import checkpoint_stamp, read_identity

__all__ = [
    "DATA_SETTINGS",
    "IGNORED_SETTINGS",
    "MODEL_SETTINGS",
    "OPTIMIZER_SETTINGS",
    "ResumePlan",
    "check_resume_flags",
    "plan_resume",
    "settings_record",
    "unfinished_end",
]

SUMMARY_FILE = "run_summary.json"  # report/summary.py's name (read here without importing the report)

# Settings that say where and how a run is shown or started, not what it trains: never compared.
IGNORED_SETTINGS = frozenset(
    {
        "output_dir",
        "logging_dir",
        "run_name",
        "resume",
        "resume_from_checkpoint",
        "resume_weights_only",
        "overwrite_output_dir",
        "live",
        "disable_tqdm",
        "report_to",
        "plot",
        "hub_token",
        "push_to_hub_token",
        "local_rank",
        "model_init_kwargs",  # made from dtype, revision and attn_implementation, each compared on its own
        "ref_model_init_kwargs",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "ddp_timeout",
    }
)
# Restored with the optimizer and scheduler: a new value would not take effect (or only in part).
OPTIMIZER_SETTINGS = frozenset(
    {
        "learning_rate",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "warmup_steps",
        "warmup_ratio",
        "optim",
        "optim_args",
        "optim_target_modules",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
    }
)
# What the checkpoint's step counts (batches of this shape, in this order) and what its weights belong to.
DATA_SETTINGS = frozenset(
    {
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "world_size",
        "seed",
        "data_seed",
        "dataset_name",
        "dataset_config",
        "dataset_train_split",
        "test_split_size",
        "drop_bad_rows",
        "group_by_length",
        "dataloader_drop_last",
    }
)
MODEL_SETTINGS = frozenset(
    {
        "model_name_or_path",
        "model_revision",
        "trust_remote_code",
        "use_peft",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_target_parameters",
        "lora_modules_to_save",
        "lora_task_type",
        "use_rslora",
        "use_dora",
        "load_in_4bit",
        "load_in_8bit",
        "bnb_4bit_quant_type",
        "use_bnb_nested_quant",
    }
)


def settings_record(spec: Any) -> dict[str, Any]:
    """Every setting of the run (`run --help`'s fields, first dataclass wins) and its process count, as JSON."""
    values: dict[str, Any] = {}
    for options in (spec.script, spec.training, spec.model):
        for field in dataclasses.fields(options):
            if field.init and field.name not in values and field.name not in IGNORED_SETTINGS:
                values[field.name] = getattr(options, field.name, None)
    values["world_size"] = int(os.environ.get("WORLD_SIZE", "1") or 1)
    record: dict[str, Any] = json.loads(json.dumps(values, default=str))
    return record


@dataclass
class ResumePlan:
    """How a resume goes on: from `source` ("checkpoint", the final-model "stage", or "output_dir" itself),
    training on or only finishing the end of the run, with the weights only or the whole training state."""

    source: str
    kind: str
    run_id: str | None
    finish: bool = False
    weights_only: bool = False
    note: str = ""


def check_resume_flags(spec: Any) -> None:
    """Refuse resume flags that contradict each other (before anything else is looked at)."""
    training, script = spec.training, spec.script
    output_dir = Path(str(training.output_dir))
    explicit = training.resume_from_checkpoint
    latest = bool(getattr(script, "resume", False))
    overwrite = bool(getattr(script, "overwrite_output_dir", False))
    inside = bool(explicit) and _inside(Path(str(explicit)), output_dir)
    if overwrite and (latest or inside):
        how = "resume" if latest else f"resume_from_checkpoint={str(explicit)!r}"
        raise ConfigError(
            f"{how} continues the run in output_dir {str(output_dir)!r}, and overwrite_output_dir replaces it: the "
            "two contradict each other. Pass --resume true alone to continue the run, or --overwrite_output_dir "
            "true alone to start a new one in its place."
        )
    if getattr(script, "resume_weights_only", False) and not (latest or explicit):
        raise ConfigError(
            "resume_weights_only applies to a resume, and none is asked for. Add --resume true (or "
            "--resume_from_checkpoint PATH), or leave resume_weights_only out."
        )


def unfinished_end(output_dir: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(folder, kind) of the trained model of the run recorded in `output_dir` whose end did not finish, else None.

    That is the staging folder holding the whole final model and its `trainer_state.json` ("stage"), or the model
    moved into `output_dir` without `run_summary.json` ("output_dir"); each stamped with the folder's run id.
    """
    folder = Path(output_dir)
    recorded = read_identity(folder)
    run_id = recorded.get("run_id") if recorded else None
    if not run_id:
        return None
    stage = folder / FINAL_STAGE
    # The save writes the stage's trainer_state.json last (atomically): with it, the whole model was saved, though a
    # move cut off halfway may have taken some of its files into output_dir already.
    if (stage / TRAINER_STATE).is_file() and _run_of(stage) == run_id:
        return str(stage), "stage"
    if not (folder / SUMMARY_FILE).exists() and checkpoint_problem(folder) is None and _run_of(folder) == run_id:
        return str(folder), "output_dir"  # only the end of a run writes output_dir's trainer_state.json
    return None


def source_kind(output_dir: str | os.PathLike[str], source: str) -> str:
    """ "stage", "output_dir" or "checkpoint": what kind of folder a resume starts from."""
    path, folder = Path(source).resolve(), Path(output_dir).resolve()
    if path == folder / FINAL_STAGE:
        return "stage"
    return "output_dir" if path == folder else "checkpoint"


def plan_resume(spec: Any, source: str, run_id: str | None, *, scheduler_lrs: Any = None) -> ResumePlan:
    """Check a resume from `source` against the run's record and the settings given now (see the module docstring).

    `scheduler_lrs(path)` reads a checkpoint's scheduler base learning rates (for checkpoints without a settings
    record); it is passed in so that this module loads no torch.
    """
    training, script = spec.training, spec.script
    output_dir = str(training.output_dir)
    kind = source_kind(output_dir, source)
    state = _state(Path(source))
    step = _int(state.get("global_step"))
    end = _int(state.get("max_steps"))
    # The end of a run (the staging folder, output_dir) holds where training ended, also before max_steps (a KL
    # monitor's stop): only settings that train past the run's end train on from it.
    trains_on = _raises_end(training, state) if kind != "checkpoint" else _trains_on(training, state, step)
    finished = _finished_step(output_dir, run_id)
    if finished is not None and not _raises_end(training, _state(Path(output_dir))):
        raise ConfigError(
            f"Nothing to resume: output_dir {output_dir!r} holds run {run_id or '(no id)'}, finished at step "
            f"{finished}{f' of {end}' if end else ''} (its model and {SUMMARY_FILE} are there). To train it further, "
            f"raise max_steps above {finished} (or num_train_epochs) with --resume true; to start a new run, choose "
            "a new output_dir, or pass --overwrite_output_dir true without --resume."
        )
    if trains_on and kind != "checkpoint":  # train on from a checkpoint with its optimizer, when there is one
        newer = _own_latest_checkpoint(output_dir, run_id)
        if newer is not None:
            source, kind = newer, "checkpoint"
            state, step = _state(Path(newer)), _int(_state(Path(newer)).get("global_step"))
    recorded = _recorded_settings(source, state, training, scheduler_lrs)
    current = settings_record(spec)
    differences = {
        k: (old, current.get(k))
        for k, old in recorded.items()
        if k not in IGNORED_SETTINGS and k in current and old != current.get(k)
    }
    shown = f"{source!r} (step {step}{f' of {end}' if end else ''})"
    if not trains_on:
        if differences:
            raise ConfigError(
                f"Cannot finish run {run_id or '(no id)'} from {shown} with settings other than the run's: "
                f"{_listed(differences)}. Nothing is trained, and the model card and the report state the run's "
                "settings: finish with them (the command printed when the run stopped)."
            )
        what = {
            "stage": "its trained model is saved whole in the staging folder",
            "output_dir": "its trained model is saved in output_dir",
            "checkpoint": "the checkpoint holds its trained weights",
        }[kind]
        note = (
            f"Finishing run {run_id or '(no id)'} from {shown}: its training ended and {what}; saving the model in "
            "place and writing the model card and the report (nothing is trained)."
        )
        return ResumePlan(source, kind, run_id, finish=True, note=note)
    weights_only = bool(getattr(script, "resume_weights_only", False))
    world = int(current.get("world_size") or 1)
    missing = missing_state_files(source, world)
    if missing and not weights_only:
        raise ConfigError(
            f"Cannot resume from {shown}: it has no {', no '.join(missing)} (the optimizer, learning-rate scheduler "
            "and random state a resume restores), so training would go on from its weights alone and end "
            "differently from the run it continues. Resume from a complete checkpoint, or pass "
            "--resume_weights_only true to go on from its weights with a fresh optimizer and schedule."
        )
    fresh = weights_only  # the optimizer and scheduler start afresh: their settings apply
    refused = {
        k: v
        for k, v in differences.items()
        if k in DATA_SETTINGS or k in MODEL_SETTINGS or (k in OPTIMIZER_SETTINGS and not fresh)
    }
    if refused:
        raise ConfigError(f"Cannot resume from {shown}: {_refusal(refused)}")
    parts = [f"Resuming run {run_id or '(no id)'} from {shown}"]
    if differences:
        parts.append(f"settings that differ from the run's, applied from here on: {_listed(differences)}")
    if weights_only:
        lacking = f" ({', '.join(missing)} missing)" if missing else ""
        parts.append(
            "with its weights only (resume_weights_only): the optimizer, the learning-rate schedule and the random "
            f"state start afresh{lacking}, so the run will not match an unbroken one"
        )
    return ResumePlan(source, kind, run_id, weights_only=weights_only, note="; ".join(parts) + ".")


# --- what the run recorded -------------------------------------------------------------------------------------
def _recorded_settings(
    source: str, state: Mapping[str, Any], training: Any, scheduler_lrs: Any
) -> dict[str, Any]:
    stored = state.get("stateful_callbacks") if isinstance(state, Mapping) else None
    stamp = stored.get(SettingsStamp.__name__) if isinstance(stored, Mapping) else None
    if isinstance(stamp, list):
        stamp = stamp[0] if stamp else None
    settings = stamp.get("args", {}).get("settings") if isinstance(stamp, Mapping) else None
    if isinstance(settings, dict):
        return settings
    # A checkpoint from before the record (or from Python): what trainer_state.json and scheduler.pt hold.
    found: dict[str, Any] = {}
    if isinstance(state.get("train_batch_size"), int):
        per_process = max(
            1, int(training.train_batch_size) // max(1, int(training.per_device_train_batch_size))
        )
        found["per_device_train_batch_size"] = state["train_batch_size"] // per_process
    if training.max_steps > 0 and isinstance(state.get("max_steps"), int):
        found["max_steps"] = state["max_steps"]
    lrs = scheduler_lrs(source) if scheduler_lrs is not None else None
    if lrs:
        found["learning_rate"] = lrs[0] if len(set(lrs)) == 1 else lrs
    recorded: dict[str, Any] = json.loads(json.dumps(found))
    return recorded


def _refusal(refused: Mapping[str, tuple[Any, Any]]) -> str:
    groups = (
        (
            OPTIMIZER_SETTINGS,
            "the optimizer and learning-rate scheduler restored from the checkpoint keep the run's values, so a new "
            "one would not take effect (--resume_weights_only true restarts them with the new values)",
        ),
        (
            DATA_SETTINGS,
            "the checkpoint's step counts batches of the run's shape and order, so training would go on from "
            "another place in the data",
        ),
        (MODEL_SETTINGS, "the checkpoint's weights belong to the run's model setup"),
    )
    texts = []
    for names, reason in groups:
        group = {k: v for k, v in refused.items() if k in names}
        if group:
            texts.append(f"{_listed(group)} would not take effect as the run continues ({reason})")
    return (
        "; ".join(texts)
        + ". Resume with the run's values, or start a new run (a new output_dir, or "
        + ("--overwrite_output_dir true without --resume).")
    )


def _listed(differences: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(
        f"{k} {_shown(new)} (the run: {_shown(old)})" for k, (old, new) in sorted(differences.items())
    )


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


# --- the folders ---------------------------------------------------------------------------------------------------
def _state(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _at_end(state: Mapping[str, Any]) -> bool:
    step, end = _int(state.get("global_step")), _int(state.get("max_steps"))
    return end > 0 and step >= end


def _trains_on(training: Any, state: Mapping[str, Any], step: int) -> bool:
    """Whether the settings given now train past `step`, the step of a folder whose state is `state`."""
    if training.max_steps > 0:
        return bool(training.max_steps > step)
    recorded_epochs = state.get("num_train_epochs")
    if isinstance(recorded_epochs, (int, float)) and float(training.num_train_epochs) > float(
        recorded_epochs
    ):
        return True
    return not _at_end(state)


def _raises_end(training: Any, state: Mapping[str, Any]) -> bool:
    """Whether the settings given now train past the end of the run whose last state is `state`."""
    if training.max_steps > 0:
        return bool(training.max_steps > max(_int(state.get("max_steps")), _int(state.get("global_step"))))
    recorded_epochs = state.get("num_train_epochs")
    return isinstance(recorded_epochs, (int, float)) and float(training.num_train_epochs) > float(recorded_epochs)


def _run_of(folder: Path) -> str | None:
    stamp = checkpoint_stamp(folder)
    return str(stamp["run_id"]) if stamp and stamp.get("run_id") else None


def _finished_step(output_dir: str, run_id: str | None) -> int | None:
    """The last step of the run in `output_dir` when it finished (model, state and `run_summary.json` in place)."""
    folder = Path(output_dir)
    if not (folder / SUMMARY_FILE).is_file() or unfinished_end(folder) is not None:
        return None
    state = _state(folder)
    if not state or checkpoint_problem(folder) is not None:
        return None
    stamped = _run_of(folder)
    if stamped is not None and run_id is not None and stamped != run_id:
        return None  # another run's results, which this run replaces when it finishes
    return _int(state.get("global_step"))


def _own_latest_checkpoint(output_dir: str, run_id: str | None) -> str | None:
    for path in reversed(list_checkpoints(output_dir)):
        if checkpoint_problem(path) is None and (run_id is None or _run_of(path) in (run_id, None)):
            return str(path)
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
