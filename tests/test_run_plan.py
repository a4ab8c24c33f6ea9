"""`trl-conservative run` plans, then acts: the plan is inspectable and leaves nothing behind; work is done once; only
the user's mistakes are one-line errors (exit 2), our bugs keep their traceback, out of memory is one line (exit 1)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_settings import tiny_run_settings, write_pairs
from trl_conservative.cli import main
from trl_conservative.run.args import parse_run_args


def _config(tmp_path: Path, model: Path, **extra: Any) -> Path:
    path = tmp_path / "run.yaml"
    settings = tiny_run_settings(model, write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "out", **extra)
    path.write_text(yaml.safe_dump({"live": False, **settings}))
    return path


def _our_bug(*args: Any, **kwargs: Any) -> Any:
    """A ValueError raised inside the package, as a bug of ours would raise it (not a refusal: no ConfigError)."""
    from trl_conservative.report.suspected_flips import rank_suspects

    return rank_suspects([], top=-1)


# --- the plan -----------------------------------------------------------------------------------------------------
def test_the_plan_holds_what_the_run_will_do_and_changes_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    import torch

    from trl_conservative.kl.monitor import KLMonitorCallback
    from trl_conservative.reliability.callback_state import SettingsStamp
    from trl_conservative.reliability.end_of_run import EndOfRunGuard
    from trl_conservative.reliability.output_dir import RunStamp
    from trl_conservative.run.plan import TrainingStarted, plan_run

    spec = parse_run_args(
        ["--config", str(_config(tmp_path, tiny_model_dir, loss_type=["cdpo", "ipo"], label_smoothing=0.0,
                                 kl_warn_above=5.0))]  # fmt: skip
    )
    env, filters, threads = dict(os.environ), list(warnings.filters), torch.get_num_threads()
    plan = plan_run(spec, log=lambda line: None)
    assert [(e.name, e.weight) for e in plan.losses.entries] == [("cdpo", 1.0), ("ipo", 1.0)]
    assert plan.model.path == str(tiny_model_dir) and plan.model.trust_remote_code is False
    assert not plan.model.load_here and plan.model.init_kwargs["dtype"] == spec.model.dtype
    assert len(plan.data.train) == 8 and plan.data.eval is None  # eval_strategy: no
    assert plan.checked.resume is None and plan.checked.run_id
    kinds = [type(c) for c in plan.callbacks]
    assert kinds == [RunStamp, SettingsStamp, EndOfRunGuard, TrainingStarted, KLMonitorCallback]  # live: false
    assert plan.guard in plan.callbacks and plan.started in plan.callbacks and not plan.started.began
    assert plan.torch_threads is None  # a model folder, not the builtin tiny model
    # Planning writes nothing and leaves no process-wide state behind.
    assert not (tmp_path / "out").exists()
    assert dict(os.environ) == env and warnings.filters == filters and torch.get_num_threads() == threads
    assert spec.training.model_init_kwargs is None  # the executor hands the trainer plan.model.init_kwargs


def test_env_is_exported_only_when_every_setting_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trl_conservative.errors import ConfigError

    monkeypatch.delenv("TRLC_PLAN_VAR", raising=False)
    path = tmp_path / "run.yaml"
    base = {"model_name_or_path": "m", "dataset_name": "d.jsonl", "output_dir": str(tmp_path / "out"),
            "use_cpu": True, "bf16": False, "report_to": "none", "env": {"TRLC_PLAN_VAR": "yes"}}  # fmt: skip
    path.write_text(yaml.safe_dump({**base, "max_steps": -1, "num_train_epochs": 0}))
    before = dict(os.environ)
    with pytest.raises(ConfigError, match="0 training steps"):
        parse_run_args(["--config", str(path)])
    assert dict(os.environ) == before  # nothing exported, nor anything transformers exported while parsing
    path.write_text(yaml.safe_dump(base))
    parse_run_args(["--config", str(path)])
    assert os.environ["TRLC_PLAN_VAR"] == "yes"


def test_raised_here_tells_our_code_from_the_libraries() -> None:
    from trl import DPOConfig

    from trl_conservative.run.refusals import raised_here

    with pytest.raises(ValueError) as ours:
        _our_bug()
    assert raised_here(ours.value)
    with pytest.raises(ValueError) as theirs:  # transformers' own check of a value
        DPOConfig(output_dir="unused", use_cpu=True, report_to="none", load_best_model_at_end=True,
                  eval_strategy="steps", save_strategy="epoch")  # fmt: skip
    assert not raised_here(theirs.value)


def test_out_of_memory_line_names_the_settings_that_lower_memory(tmp_path: Path) -> None:
    import torch

    from trl_conservative.run.refusals import out_of_memory_line

    spec = parse_run_args(["--config", str(_config(tmp_path, Path("m"), per_device_train_batch_size=8))])
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB")
    line = out_of_memory_line(error, spec.training)
    assert line is not None and line.startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB).")
    for fragment in ("per_device_train_batch_size (now 8;", "gradient_accumulation_steps", "max_length (now 32)"):
        assert fragment in line
    assert "checkpointing: true" in line
    assert out_of_memory_line(RuntimeError("CUDA error: an illegal memory access"), spec.training) is None


# --- a whole run ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_resolves_its_losses_and_remote_code_policy_once_and_leaves_no_state(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    import torch

    from trl_conservative.losses import plan as losses_plan
    from trl_conservative.reliability import nan_guard

    calls: dict[str, int] = {}

    def counted(module: Any, name: str) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    # Every module that imports resolve_losses by name, and every caller of remote_code_allowed.
    for module in ("trl_conservative.trainer.config", "trl_conservative.trainer.trainer"):
        counted(importlib.import_module(module), "resolve_losses")
    assert losses_plan.resolve_losses is not None
    for module in ("trl_conservative.run.plan", "trl_conservative.run.remote_code"):
        counted(importlib.import_module(module), "remote_code_allowed")
    counted(nan_guard, "latest_checkpoint")
    filters, threads = list(warnings.filters), torch.get_num_threads()
    config = _config(tmp_path, tiny_model_dir, kl_warn_above=50.0, max_steps=2)  # the KL monitor's checks too
    assert main(["run", "--config", str(config)]) == 0, capsys.readouterr().err
    assert calls == {"resolve_losses": 1, "remote_code_allowed": 1}
    assert warnings.filters == filters and torch.get_num_threads() == threads


@pytest.mark.slow
def test_a_bug_in_our_loss_code_keeps_its_traceback(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the first step, before which any exception used to be 'These settings could not start training' (exit 2)."""
    from trl_conservative.errors import ConfigError
    from trl_conservative.losses.sigmoid import SigmoidLoss

    monkeypatch.setattr(SigmoidLoss, "__call__", _our_bug)  # cdpo's code
    with pytest.raises(ValueError, match="top must be >= 0") as err:
        main(["run", "--config", str(_config(tmp_path, tiny_model_dir))])
    assert not isinstance(err.value, ConfigError)  # raised to the interpreter: a traceback, exit status 1
    assert "trl-conservative: error:" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_bug_in_our_trainer_code_is_not_a_settings_error(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Building the trainer: it used to be 'These settings could not build the trainer' (exit 2)."""
    from trl_conservative.trainer.trainer import ConservativeDPOTrainer

    monkeypatch.setattr(ConservativeDPOTrainer, "_start_pair_scores", _our_bug)
    with pytest.raises(ValueError, match="top must be >= 0"):
        main(["run", "--config", str(_config(tmp_path, tiny_model_dir))])
    assert "trl-conservative: error:" not in capsys.readouterr().err


@pytest.mark.slow
def test_out_of_memory_on_the_first_step_is_one_line_and_exit_1(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from trl_conservative.losses.sigmoid import SigmoidLoss

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 1.2 GiB free.")

    monkeypatch.setattr(SigmoidLoss, "__call__", out_of_memory)
    assert main(["run", "--config", str(_config(tmp_path, tiny_model_dir))]) == 1
    err = capsys.readouterr().err  # live: false, so the Trainer's progress bar comes first
    assert "Traceback" not in err and err.count("trl-conservative:") == 1
    # transformers 4 may print after it (a progress bar's last refresh): take the line, not the last one
    line = next(x for x in err.splitlines() if "trl-conservative: " in x).split("trl-conservative: ", 1)[1]
    assert line.startswith("out of memory (CUDA out of memory. Tried to allocate 2.00 GiB).")
    assert "per_device_train_batch_size (now 4;" in line and "max_length (now 32)" in line


def test_halt_scans_the_checkpoints_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scan warns of every broken checkpoint it skips: the NaN guard's message scanned twice, so warned twice."""
    from trl_conservative.reliability import nan_guard

    scans: list[Any] = []
    original = nan_guard.latest_checkpoint
    monkeypatch.setattr(nan_guard, "latest_checkpoint", lambda folder: scans.append(folder) or original(folder))
    error = nan_guard.halt("loss", float("nan"), step=3, phase="train", output_dir=str(tmp_path))
    assert len(scans) == 1 and error.checkpoint is None and "No checkpoint was saved" in str(error)
