"""Unit tests of the one settings check (`settings_check.py`) and of the precise file messages (`files.py`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from trl_conservative.cli import main
from trl_conservative.errors import ConfigError
from trl_conservative.file_checks import safetensors_problem, utf8_problem
from trl_conservative.registry import DISABLE_ENV
from trl_conservative.report.summary import SUMMARY_FILE, RunSummary
from trl_conservative.run.args import parse_run_args
from trl_conservative.run.files import check_data_file
from trl_conservative.run.settings_check import check_config_types, duplicate_yaml_keys, kl_metric_choices


def _parse(tmp_path: Path, **settings: Any) -> Any:
    config = {
        "model_name_or_path": "some/model",
        "dataset_name": "builtin:arithmetic",
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "max_steps": 1,
        **settings,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return parse_run_args(["--config", str(path)])


# --- combinations -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("losses", "refused"),
    [("ipo", True), ("hinge", True), (["ipo", "cdpo"], False), ("robust", False), ("cdpo", False)],
)
def test_label_smoothing_is_refused_only_when_no_selected_loss_applies_it(
    tmp_path: Path, losses: Any, refused: bool
) -> None:
    weights = {"loss_weights": [1.0, 1.0]} if isinstance(losses, list) else {}
    if refused:
        with pytest.raises(ConfigError, match="has no effect on loss_type"):
            _parse(tmp_path, loss_type=losses, label_smoothing=0.2, **weights)
    else:
        _parse(tmp_path, loss_type=losses, label_smoothing=0.2, **weights)


def test_trl_losses_with_label_smoothing_are_those_whose_source_reads_it() -> None:
    from trl_conservative.trainer.trl_compat import (
        TRL_STACK,
        trl_losses_reading_label_smoothing,
        trl_native_losses,
    )

    reading = trl_losses_reading_label_smoothing()
    assert reading <= trl_native_losses()
    assert {"robust", "exo_pair"} <= reading and not {"hinge", "ipo", "nca_pair"} & reading
    # TRL <= 0.28's sigmoid is cDPO; TRL 1.16's ignores label_smoothing (why our registry `sigmoid` exists).
    assert ("sigmoid" in reading) == (TRL_STACK == "dpo_loss")


def test_kl_metric_choices_follow_the_run_and_accept_auto(tmp_path: Path) -> None:
    spec = _parse(tmp_path, loss_type="cdpo", label_smoothing=0.1)
    choices = kl_metric_choices(spec.training)
    assert choices[0] == "auto" and "kl/exact" in choices and "rewards/margins" in choices
    assert not any(c.startswith("eval_") for c in choices)  # the run does not evaluate
    spec = _parse(tmp_path, kl_warn_above=0.1, kl_monitor_metric="auto")
    assert spec.script.kl_monitor_metric == "auto"
    with pytest.raises(ConfigError, match="kl_monitor_metric 'eval_kl/exact' is not logged by this run"):
        _parse(tmp_path, kl_warn_above=0.1, kl_monitor_metric="eval_kl/exact")
    _parse(tmp_path, kl_monitor_metric="kl/exakt")  # no threshold: no monitor, the name is not used


def test_the_train_split_may_be_the_test_split_when_a_fraction_is_held_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is the train split"):
        _parse(tmp_path, eval_strategy="steps", dataset_test_split="train")
    _parse(tmp_path, eval_strategy="steps", dataset_test_split="train", test_split_size=0.2)


def test_blocked_plugin_names_must_be_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trl_conservative.registry import reset_registry

    monkeypatch.setenv(DISABLE_ENV, "trl_conservative_rdpo")  # a distribution name blocks its plugins
    reset_registry()
    _parse(tmp_path)
    monkeypatch.setenv(DISABLE_ENV, "simpo, rdpoo")
    reset_registry()
    try:
        with pytest.raises(ConfigError, match="names 'rdpoo', which is not an installed plugin") as info:
            _parse(tmp_path)
        assert "simpo" in str(info.value)  # the installed ones are listed
        monkeypatch.setenv(DISABLE_ENV, "['simpo']")
        with pytest.raises(ConfigError, match="must be comma-separated plugin names"):
            _parse(tmp_path)
    finally:
        monkeypatch.delenv(DISABLE_ENV)
        reset_registry()


# --- YAML types -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_steps", 2.5, "max_steps must be an integer, got a float 2.5"),
        ("max_steps", True, "max_steps must be an integer, got a boolean True"),
        ("learning_rate", [1e-5], "learning_rate must be a number, got a list"),
        ("loss_type", [1, 2], "loss_type must be a list of text"),
        ("use_peft", "yes please", None),  # text: argparse converts (and refuses) it
        ("live", 3, "live must be true or false"),
        ("dtype", "float99", "dtype must be one of"),
        ("loss_weights", [1, 0.5], None),
    ],
)
def test_yaml_values_are_checked_against_their_setting_type(
    key: str, value: Any, expected: str | None
) -> None:
    if expected is None:
        check_config_types({key: value}, "'run.yaml'")
        return
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        check_config_types({key: value}, "'run.yaml'")


def test_duplicate_keys_are_found_at_any_depth() -> None:
    assert duplicate_yaml_keys("beta: 1\nseed: 2\n") is None
    assert duplicate_yaml_keys("beta: 1\nbeta: 2\n") == ("beta", 2)
    assert duplicate_yaml_keys("loss_params:\n  gamma: 1\n  gamma: 2\n") == ("gamma", 3)


# --- files ------------------------------------------------------------------------------------------------------
def test_utf8_problem_names_the_byte_and_where() -> None:
    assert utf8_problem("é ok\n".encode()) is None
    assert utf8_problem(b"ab\ncd\xfe") == "byte 0xfe at offset 5 (line 2, column 3)"


def test_a_json_document_is_not_read_as_json_lines(tmp_path: Path) -> None:
    document = tmp_path / "pairs.json"
    document.write_text(json.dumps([{"prompt": "a", "chosen": "b", "rejected": "c"}], indent=2))
    check_data_file(document, "pairs.json")
    lines = tmp_path / "lines.json"
    lines.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ConfigError, match="line 2, column 12 is not valid JSON"):
        check_data_file(lines, "lines.json")


def test_safetensors_problems_are_found_from_the_header(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64)}, str(path))
    assert safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert "is truncated: its tensors need 256 bytes of data, the file holds 246" == safetensors_problem(path)
    path.write_bytes(data[:20])
    assert "truncated or corrupt" in str(safetensors_problem(path))
    path.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00nope")
    assert safetensors_problem(path) == "has a corrupt header (not JSON)"


# --- the report of another program's summary, and Ctrl-C outside training ---------------------------------------
def test_report_on_a_summary_of_another_shape_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / SUMMARY_FILE).write_text(json.dumps({"settings": {"model": "x", "lr": 1}}))
    with pytest.raises(ConfigError, match="is not a run summary this version of trl-conservative can read"):
        RunSummary.load(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_ctrl_c_before_training_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import trl_conservative.run.args as run_args

    def interrupted(argv: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_args, "parse_run_args", interrupted)
    assert main(["run", "--config", "x.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted by Ctrl-C" in err
