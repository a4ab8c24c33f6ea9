"""Check the output folder before a run writes anything: writable, and not holding someone else's work.

`trl-conservative run` records what defines a run (model, dataset, loss settings, seed) in
`output_dir/trl_conservative_run.json` when it starts. Before the next run writes anything, `check_output_dir`:
  - refuses a folder it cannot write to (read-only file system, no permission) or a path that is a file;
  - refuses a folder recorded for a *different* run (another model, dataset, loss or seed), whose model,
    checkpoints and report the new run would overwrite (and whose checkpoints `save_total_limit` would delete);
  - refuses a folder without that record that holds files a run writes (`config.json`, `README.md`,
    `checkpoint-N`, ...), e.g. a model folder or another tool's output;
  - refuses a *new* run into a folder that holds the results (model, report, checkpoints) of an earlier run,
    even one of the same settings: only `--resume` continues it;
  - accepts a new or empty folder, unrelated files (a log, a notes file), and `--resume` of the same run.
`overwrite_output_dir=True` accepts any writable folder. Every refusal is a `ConfigError` naming the fix.

Every run gets a run id (`new_run_id`), recorded with its identity in `trl_conservative_run.json` and, through the
`RunStamp` callback, in the `trainer_state.json` of every checkpoint. A resume (`check_resume`) continues only the
same run: the checkpoint's stamp must match the settings (and the run recorded in the folder), else the refusal
names the settings that differ.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers.trainer_callback import ExportableState, TrainerCallback

from trl_conservative.errors import ConfigError

from . import atomic
from .checkpoints import CHECKPOINT_PREFIX, TRAINER_STATE

__all__ = [
    "IDENTITY_FILE",
    "IDENTITY_KEYS",
    "RUN_FILES",
    "RunStamp",
    "check_output_dir",
    "check_resume",
    "checkpoint_stamp",
    "new_run_id",
    "read_identity",
    "run_identity",
    "write_identity",
]

IDENTITY_FILE = "trl_conservative_run.json"
IDENTITY_KEYS = (
    "model",
    "dataset",
    "loss_type",
    "loss_weights",
    "loss_params",
    "beta",
    "label_smoothing",
    "seed",
)
# Files a run writes into output_dir (model, tokenizer, card, state, report): overwriting them loses work.
RUN_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "trainer_state.json",
    "training_args.bin",
    "run_summary.json",
    "training_curves.png",
    "suspected_flips.jsonl",
)


def run_identity(**values: Any) -> dict[str, Any]:
    """The identity record of a run: exactly `IDENTITY_KEYS`, JSON-normalised (tuples become lists)."""
    missing = sorted(set(IDENTITY_KEYS) - set(values))
    extra = sorted(set(values) - set(IDENTITY_KEYS))
    if missing or extra:
        raise TypeError(f"run_identity needs exactly {IDENTITY_KEYS}; missing {missing}, unexpected {extra}")
    normalised: dict[str, Any] = json.loads(json.dumps({k: values[k] for k in IDENTITY_KEYS}, default=str))
    return normalised


def read_identity(output_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The identity recorded in `output_dir`, or None (no record, or an unreadable one)."""
    path = Path(output_dir) / IDENTITY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_identity(
    output_dir: str | os.PathLike[str], identity: Mapping[str, Any], run_id: str | None = None
) -> Path:
    """Record `identity` (and the run id) in `output_dir`, atomically (main process only)."""
    record = dict(identity)
    if run_id is not None:
        record["run_id"] = run_id
    return atomic.write_json(Path(output_dir) / IDENTITY_FILE, record)


def new_run_id() -> str:
    """A fresh run id: UTC start time and 8 random hex digits, e.g. `20261201-013000-1f2e3d4c`."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


class RunStamp(TrainerCallback, ExportableState):  # type: ignore[misc]
    """Stamps the run id and identity into every checkpoint's `trainer_state.json` (`stateful_callbacks`)."""

    def __init__(self, run_id: str, identity: Mapping[str, Any]) -> None:
        self.run_id, self.identity = run_id, dict(identity)

    def state(self) -> dict[str, Any]:
        return {"args": {"run_id": self.run_id, "identity": self.identity}, "attributes": {}}


def checkpoint_stamp(checkpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The `RunStamp` args (`run_id`, `identity`) saved in a checkpoint, or None (made without trl-conservative)."""
    try:
        state = json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stored = state.get("stateful_callbacks", {}).get(RunStamp.__name__) if isinstance(state, dict) else None
    if isinstance(stored, list):
        stored = stored[0] if stored else None
    args = stored.get("args") if isinstance(stored, dict) else None
    return args if isinstance(args, dict) and isinstance(args.get("identity"), dict) else None


def check_resume(
    output_dir: str | os.PathLike[str], checkpoint: str, identity: Mapping[str, Any]
) -> str | None:
    """Refuse (`ConfigError`) to resume `checkpoint` as a different run; returns the run id to continue.

    Different settings (model, dataset, loss settings, seed) are named; a checkpoint of another run id than the
    one recorded in `output_dir` (a run replaced with --overwrite_output_dir) is refused too. A checkpoint without
    a stamp (made from Python with a plain Trainer) is accepted, with the folder's run id if any.
    """
    recorded = read_identity(output_dir)
    stamp = checkpoint_stamp(checkpoint)
    if stamp is None:
        return str(recorded["run_id"]) if recorded and recorded.get("run_id") else None
    differences = _differences(stamp["identity"], identity)
    if differences:
        raise ConfigError(
            f"Cannot resume {checkpoint!r}: it belongs to run {stamp.get('run_id')} with other settings: "
            f"{'; '.join(differences)}. Resume with that run's settings, or start a new run in a new output_dir."
        )
    folder_run = recorded.get("run_id") if recorded else None
    if folder_run and stamp.get("run_id") and folder_run != stamp["run_id"]:
        raise ConfigError(
            f"Cannot resume {checkpoint!r}: it belongs to run {stamp['run_id']}, but {str(output_dir)!r} now holds "
            f"run {folder_run} (it replaced the earlier one). Resume one of run {folder_run}'s checkpoints, or "
            "start a new run."
        )
    return str(stamp["run_id"]) if stamp.get("run_id") else None


def _writable_problem(folder: Path) -> str | None:
    """Why nothing can be created in `folder` (its nearest existing ancestor when it does not exist yet)."""
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            return "none of its parent folders exists"
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        return f"{str(probe_dir)!r} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".trl-conservative-write-test-", dir=probe_dir)
    except OSError as exc:
        return f"{exc.strerror or exc} in {str(probe_dir)!r}"
    os.close(fd)
    os.unlink(name)
    return None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [
        f"{key} {old.get(key)!r} (now {new.get(key)!r})"
        for key in IDENTITY_KEYS
        if old.get(key) != new.get(key)
    ]


def check_output_dir(
    output_dir: str | os.PathLike[str],
    identity: Mapping[str, Any],
    *,
    resuming: bool = False,
    overwrite: bool = False,
) -> None:
    """Raise `ConfigError` unless this run may write into `output_dir` (see the module docstring)."""
    folder = Path(output_dir).expanduser()
    shown = str(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {shown!r} is a file, not a folder. Choose a folder for output_dir.")
    problem = _writable_problem(folder)
    if problem is not None:
        raise ConfigError(
            f"output_dir {shown!r} is not writable: {problem}. Choose a folder you can write to for output_dir."
        )
    if overwrite or not folder.is_dir():
        return
    recorded, lost = read_identity(folder), ""
    if (
        recorded is None
    ):  # the record gone with a folder deleted mid-run: what the run wrote after still names it
        found = _unrecorded_run(folder, identity)
        if found is not None:
            recorded, source = found
            lost = (
                f" (its record {IDENTITY_FILE} is missing: the folder was deleted while that run was writing into "
                f"it, and the run recreated only what it saved afterwards; {source} still names the run)"
            )
    if recorded is not None:
        differences = _differences(recorded, identity)
        if differences:
            action = "resume it with its own settings" if resuming else "choose a new output_dir"
            raise ConfigError(
                f"output_dir {shown!r} holds a different run{lost}: {'; '.join(differences)}. To keep it, {action}; "
                "to replace it, pass --overwrite_output_dir true (or delete the folder)."
            )
        results = [] if resuming else _run_results(folder)
        if results:
            run = f"run {recorded['run_id']}" if recorded.get("run_id") else "an earlier run"
            raise ConfigError(
                f"output_dir {shown!r} holds the results of {run}{lost} with these settings ({_listed(results)}); a "
                "new run would replace them. Continue it with --resume true, choose a new output_dir, or pass "
                "--overwrite_output_dir true to replace it."
            )
        return
    if (
        resuming
    ):  # an explicit resume of a run started elsewhere (e.g. from Python): its checkpoints are wanted
        return
    taken = _run_results(folder)
    if taken:
        raise ConfigError(
            f"output_dir {shown!r} already holds files this run would overwrite ({_listed(taken)}), not "
            "from a trl-conservative run of these settings. Choose a new or empty output_dir, pass --resume to "
            "continue its checkpoints, or pass --overwrite_output_dir true to replace them."
        )


def _unrecorded_run(folder: Path, identity: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The run whose files `folder` holds though its identity record is missing, and the file that names it.

    A folder deleted while a run trains loses `trl_conservative_run.json`; what the run saves afterwards still names
    it: the `RunStamp` in `trainer_state.json` and each checkpoint's, or `run_summary.json`'s settings.
    """
    states = [folder / TRAINER_STATE] + sorted(
        (p / TRAINER_STATE for p in folder.glob(f"{CHECKPOINT_PREFIX}-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: -int(p.parent.name.split("-")[-1]),
    )
    for state in states:
        stamp = checkpoint_stamp(state.parent) if state.is_file() else None
        if stamp is not None:
            return {**stamp["identity"], "run_id": stamp.get("run_id")}, str(state.relative_to(folder))
    try:
        settings = json.loads((folder / "run_summary.json").read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(settings, dict) or not all(
        key in settings for key in IDENTITY_KEYS if key != "loss_weights"
    ):
        return None
    # The summary holds the weights in effect ([1.0]), not as given (None): not compared.
    recorded = {key: settings[key] for key in IDENTITY_KEYS if key != "loss_weights"}
    return {**recorded, "loss_weights": identity.get("loss_weights")}, "run_summary.json"


def _run_results(folder: Path) -> list[str]:
    """The files and checkpoints in `folder` that a run writes (and a new run would overwrite)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name in RUN_FILES or p.name.startswith(f"{CHECKPOINT_PREFIX}-")
    )


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return f"{', '.join(names[:4])}{more}"
