"""One finished `trl-conservative run` folder per test session, built on first use (a tiny 2-step run with an
evaluation, curves, a label-noise step and checkpoints), for tests that damage copies of it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

_BUILT: dict[str, Path] = {}

SUSPECTS = [
    {
        "rank": rank,
        "index": index,
        "flip_probability": 0.9 - rank / 10,
        "score": -2.0 + rank / 4,
        "margin": -0.2 + rank / 40,
        "step": 1,
        "prompt": f"What is {index}+{index}?",
        "chosen": str(2 * index + 1),
        "rejected": str(2 * index),
    }
    for rank, index in enumerate((3, 7, 11), start=1)
]


def finished_run(tmp_path_factory: Any, model: Path, *, umask: int = 0o027) -> Path:
    """The run folder (built once per session under `umask`): never modify it, copy it (`copy_run`)."""
    if "run" in _BUILT:
        return _BUILT["run"]
    from trl_conservative.cli import main
    from trl_conservative.demo.tiny import tiny_preference_rows

    root = tmp_path_factory.mktemp("finished-run")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in tiny_preference_rows(16, seed=0)))
    config = {
        "model_name_or_path": str(model),
        "dataset_name": str(pairs),
        "output_dir": str(root / "out"),
        "loss_type": "cdpo",
        "label_smoothing": 0.1,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "test_split_size": 0.25,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "save_strategy": "steps",
        "save_steps": 1,
        "max_length": 32,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "activation_checkpointing": False,
        "dataloader_num_workers": 0,
        "plot": True,
        "suspected_flips": 5,
        "kl_sequence_prompts": 2,
        "kl_sequence_max_new_tokens": 4,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    old = os.umask(umask)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            status = main(["run", "--config", str(root / "run.yaml")])
    finally:
        os.umask(old)
    assert status == 0, err.getvalue()[-3000:]
    out = root / "out"
    # A label-noise list to damage (a 2-step run scores too few pairs to list any): the file and its count.
    (out / "suspected_flips.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SUSPECTS))
    summary = json.loads((out / "run_summary.json").read_text())
    assert isinstance(summary.get("label_noise"), dict), summary
    summary["label_noise"].update(listed=len(SUSPECTS), share=0.25, low=0.1, high=0.45, scored=20)
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2))
    _BUILT["run"] = out
    return out


def copy_run(source: Path, target: Path) -> Path:
    """A copy of the run folder whose recorded paths (`run_summary.json`) point into the copy."""
    shutil.copytree(source, target)
    path = target / "run_summary.json"
    path.write_text(path.read_text().replace(str(source), str(target)))
    return target


def report(folder: Path) -> tuple[int, str, str]:
    """`trl-conservative report FOLDER` in this process: (status, stdout, stderr)."""
    from trl_conservative.cli import main

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "250"  # rich's width off a terminal: wide enough that no note wraps
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()) as out,
            contextlib.redirect_stderr(io.StringIO()) as err,
        ):
            status = main(["report", str(folder)])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return status, out.getvalue(), err.getvalue()


def flat(text: str) -> str:
    """Report text with the box drawing removed and the whitespace collapsed, for phrase checks."""
    return " ".join(text.replace("│", " ").split())
