"""Check the output folder before a run writes anything: writable, and not holding someone else's work.

`trl-conservative run` records what defines a run (model, dataset, loss settings, seed) in
`output_dir/trl_conservative_run.json` when it starts. Before the next run writes anything, `check_output_dir`:
  - refuses a folder it cannot write to (read-only file system, no permission) or a path that is a file;
  - refuses a folder recorded for a *different* run (another model, dataset, loss or seed), whose model,
    checkpoints and report the new run would overwrite (and whose checkpoints `save_total_limit` would delete);
  - refuses a folder without that record that holds files a run writes (`config.json`, `README.md`,
    `checkpoint-N`, ...), e.g. a model folder or another tool's output;
  - accepts a new or empty folder, unrelated files (a log, a notes file), and the same run again (a re-run,
    or `--resume`, which continues from its checkpoints).
`overwrite_output_dir=True` accepts any writable folder. Every refusal is a `ConfigError` naming the fix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoints import CHECKPOINT_PREFIX
from .errors import ConfigError

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


def write_identity(output_dir: str | os.PathLike[str], identity: Mapping[str, Any]) -> Path:
    """Record `identity` in `output_dir` (main process only)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / IDENTITY_FILE
    path.write_text(json.dumps(dict(identity), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


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
    recorded = read_identity(folder)
    if recorded is not None:
        differences = _differences(recorded, identity)
        if differences:
            action = "resume it with its own settings" if resuming else "choose a new output_dir"
            raise ConfigError(
                f"output_dir {shown!r} holds a different run: {'; '.join(differences)}. To keep it, {action}; to "
                "replace it, pass --overwrite_output_dir true (or delete the folder)."
            )
        return
    if (
        resuming
    ):  # an explicit resume of a run started elsewhere (e.g. from Python): its checkpoints are wanted
        return
    taken = sorted(
        p.name for p in folder.iterdir() if p.name in RUN_FILES or p.name.startswith(f"{CHECKPOINT_PREFIX}-")
    )
    if taken:
        more = f" and {len(taken) - 4} more" if len(taken) > 4 else ""
        raise ConfigError(
            f"output_dir {shown!r} already holds files this run would overwrite ({', '.join(taken[:4])}{more}), not "
            "from a trl-conservative run of these settings. Choose a new or empty output_dir, pass --resume to "
            "continue its checkpoints, or pass --overwrite_output_dir true to replace them."
        )
