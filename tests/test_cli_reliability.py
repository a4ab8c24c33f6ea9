"""`trl-conservative run` under stress: SIGTERM mid-run (exit 143, a checkpoint, the exact resume command that
ends like an uninterrupted run, report history included), and a NaN loss (exit 1, nothing saved after it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_settings import tiny_run_settings, write_pairs
from safetensors.torch import load_file

from trl_conservative.cli import main
from trl_conservative.report.summary import SUMMARY_FILE

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, model: Path, out: str, **extra: Any) -> Path:
    data = write_pairs(tmp_path / "pairs.jsonl", n=64)
    settings: dict[str, Any] = dict(
        max_steps=12, learning_rate=1e-3, logging_steps=1, live=False, disable_tqdm=True, seed=0, data_seed=0
    )
    config = tiny_run_settings(model, data, tmp_path / out, **{**settings, **extra})
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _history(folder: Path) -> list[dict[str, Any]]:
    volatile = {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
    }
    state = json.loads((folder / "trainer_state.json").read_text())
    return [{k: v for k, v in h.items() if k not in volatile} for h in state["log_history"]]


def test_sigterm_saves_prints_the_resume_command_and_resuming_matches_an_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tiny_model_dir, "interrupted")
    process = subprocess.Popen(
        [sys.executable, "-m", "trl_conservative.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        for line in process.stdout:  # the Trainer prints one log dict per step (live: false)
            if "'loss'" in line:
                process.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "no training step within 120 s"
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"trl-conservative: training interrupted by SIGTERM at step (\d+): saved checkpoint (\S+)\. "
        r"Resume with: (trl-conservative run .*)",
        last,
    )
    assert match, stderr
    step, checkpoint, command = int(match.group(1)), Path(match.group(2)), match.group(3)
    assert 1 <= step < 12 and checkpoint == tmp_path / "interrupted" / f"checkpoint-{step}"
    assert (checkpoint / "trainer_state.json").is_file()
    assert not (tmp_path / "interrupted" / SUMMARY_FILE).exists()  # not reported as a finished run
    argv = shlex.split(command)
    assert argv[:2] == ["trl-conservative", "run"] and argv[-2:] == [
        "--resume_from_checkpoint",
        str(checkpoint),
    ]

    # Run the printed command, then the same settings uninterrupted, in this process.
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    assert main(["run", "--config", str(_config(tmp_path, tiny_model_dir, "full"))]) == 0
    capsys.readouterr()
    resumed = load_file(str(tmp_path / "interrupted" / "model.safetensors"))
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    assert resumed.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=1e-6, msg=name)
    # The report's history: every step once, the same values (num_tokens continues across the resume).
    assert _history(tmp_path / "interrupted") == _history(tmp_path / "full")
    summary = json.loads((tmp_path / "interrupted" / SUMMARY_FILE).read_text())
    assert summary["global_step"] == 12


_NAN_PLUGIN = """
import torch.nn.functional as F
from trl_conservative import LossOutput, hookimpl

class NanAtThird:
    name = "nan_at_third"

    def __init__(self):
        self.calls = 0

    def __call__(self, inputs):
        self.calls += 1
        h = inputs.chosen_logratios - inputs.rejected_logratios
        losses = -F.logsigmoid(inputs.beta * h) * (float("nan") if self.calls == 3 else 1.0)
        return LossOutput(
            losses=losses,
            chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
            rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
        )

@hookimpl
def register_losses(register):
    register(NanAtThird())
"""


def test_nan_loss_exits_1_names_step_and_checkpoint_and_saves_nothing_after(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trl_conservative.registry import reset_registry

    site = tmp_path / "site-packages"
    (site / "nan_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "nan_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nan-plugin\nVersion: 1.0\n"
    )
    (site / "nan_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[trl_conservative]\nnanp = nan_plugin_mod\n"
    )
    (site / "nan_plugin_mod.py").write_text(_NAN_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    try:
        config = _config(
            tmp_path,
            tiny_model_dir,
            "nan",
            loss_type="nan_at_third",
            logging_steps=5,
            save_strategy="steps",
            save_steps=2,
        )
        rc = main(["run", "--config", str(config)])
    finally:
        sys.modules.pop("nan_plugin_mod", None)
        reset_registry()
    err = capsys.readouterr().err.strip().splitlines()
    out = tmp_path / "nan"
    assert rc == 1
    assert err[-1].startswith("trl-conservative: Training halted: loss is nan at step 3;"), err
    assert f"The last good checkpoint is {out / 'checkpoint-2'}" in err[-1]
    assert err[-1].endswith(f"--resume_from_checkpoint {out / 'checkpoint-2'}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists() and not (out / SUMMARY_FILE).exists()
