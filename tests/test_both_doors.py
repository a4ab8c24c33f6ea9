"""One validation for both doors: what `trl-conservative run` refuses about the training settings,
`ConservativeDPOTrainer` refuses when it is built, before any weights load, for a `ConservativeDPOConfig` and for a
plain `trl.DPOConfig`, with the same one line (`trainer/validation.py: check_training_settings`).

The table is generated: every training setting `run --help` lists (the fields of `ConservativeDPOConfig`) with the
edge values `tests/test_every_setting.py` gives its kind (those of the right type: a YAML type error names the file
and has no Python counterpart), plus both booleans, plus combinations. Each case runs through the CLI (validation
only, as in test_every_setting) and through the Python API on the same base settings (`cli_settings.py`):
- the CLI refuses it (exit 2, one line) -> the config refuses it with that line when it is built (the loss
  settings), or the trainer does, before it loads the model (given as a path that does not exist: had it loaded,
  the error would be an OSError); a value the dataclasses themselves refuse ("Invalid setting: ...") fails to build
  as a config too;
- the CLI accepts it -> `check_training_settings` accepts the config too.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs
from test_every_setting import EDGES, _kind

from trl_conservative import ConfigError, ConservativeDPOConfig, ConservativeDPOTrainer, KLMonitorCallback
from trl_conservative.cli import main
from trl_conservative.run import runner
from trl_conservative.run.renamed import RENAMED_SETTINGS
from trl_conservative.run.settings_check import _type_problem, setting_fields
from trl_conservative.trainer.validation import check_training_settings

SETTINGS = setting_fields()
TRAINING = sorted(n for n, s in SETTINGS.items() if s.owner == "ConservativeDPOConfig")
MISSING_MODEL = "/nonexistent/model/trl-conservative"
# The settings of the base run that are not training settings (RunArguments, ModelConfig).
NOT_TRAINING = {"model_name_or_path", "dataset_name", "plot"}
# Combinations a single value cannot show (family 3 of issue 20 and the rules between settings).
COMBINATIONS: list[dict[str, Any]] = [
    {"loss_type": ["ipo"], "label_smoothing": 0.3},
    {"loss_type": "hinge", "label_smoothing": 0.2},
    {"loss_type": ["cdpo", "cdpo"]},
    {"loss_type": ["cdpo", "ipo"], "loss_weights": [1.0]},
    {"loss_type": ["cdpo", "ipo"], "loss_weights": [1.0, 0.0]},
    {"max_steps": -1, "num_train_epochs": 0},
    {"beta": 1e30},
    {"beta": 2.0**23},
    {"dataloader_persistent_workers": True},
    {"dataloader_prefetch_factor": 2},
    {"lr_scheduler_type": "linear", "lr_scheduler_kwargs": {"power": 2}},
    {"loss_type": "cdpo", "ld_alpha": 0.5},
    {"loss_params": {"gamma": 1.0}},
    {"loss_params": {"gamma": math.inf}},
    {"kl_exact_steps": -1},
    {"kl_sequence_max_new_tokens": 0},
]


def _base(model: Path, data: Path, output_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """The CLI's base run plus `extra`; a setting `extra` gives under its other name (transformers < 5.23's
    gradient_checkpointing for activation_checkpointing) replaces the base's."""
    base = tiny_run_settings(model, data, output_dir)
    for new, old in RENAMED_SETTINGS.items():
        if old in extra:
            base.pop(new, None)
    return {**base, **extra}


def _field_names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _python_settings(cls: Any, extra: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The training settings of the CLI's base run plus `extra`, under the names `cls` knows."""
    settings = {
        k: v for k, v in _base(Path("m"), Path("d"), output_dir, extra).items() if k not in NOT_TRAINING
    }
    names = _field_names(cls)
    if "activation_checkpointing" in settings and "activation_checkpointing" not in names:
        settings["gradient_checkpointing"] = settings.pop("activation_checkpointing")  # transformers < 5.23
    return settings


def _cli_line(extra: dict[str, Any], model: Path, capsys: pytest.CaptureFixture[str]) -> str | None:
    """The CLI's one line for the base run plus `extra` (None when it accepts them)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = _base(model, write_pairs(root / "pairs.jsonl"), root / "out", extra)
        (root / "run.yaml").write_text(yaml.safe_dump(config))
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(["run", "--config", str(root / "run.yaml")])
        err = capsys.readouterr().err.strip()
        assert rc in (0, 2), f"{extra}: exit {rc}\n{err}"
        if rc == 0:
            return None
        assert err.count("\n") == 0 and err.startswith("trl-conservative: error: "), err
        line = err.removeprefix("trl-conservative: error: ")
        return line.replace(str(root), "<tmp>")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _python_line(cls: Any, extra: dict[str, Any], tmp: Path) -> tuple[str, str | None]:
    """(which door refused, its line): "config" when building the config refused, "trainer" when the trainer did,
    "config-other" for a non-ConfigError from the config's own checks (line None), "accepted" when neither did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            args = cls(**_python_settings(cls, extra, tmp / "out"))
        except ConfigError as exc:
            return "config", _one_line(exc)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError, ImportError):
            return "config-other", None  # the dataclasses' own checks (`run` catches the same list)
        try:
            check = check_training_settings(args)
        except ConfigError as exc:
            with pytest.raises(ConfigError) as built:
                ConservativeDPOTrainer(model=MISSING_MODEL, args=args)
            assert _one_line(built.value) == _one_line(exc)  # the trainer's own call gives the same line
            return "trainer", _one_line(exc)
    assert check is not None
    return "accepted", None


def _check_both_doors(
    extra: dict[str, Any], model: Path, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli_line(extra, model, capsys)
    classes: list[Any] = [ConservativeDPOConfig]
    from trl import DPOConfig

    if set(extra) <= _field_names(DPOConfig):
        classes.append(DPOConfig)
    for cls in classes:
        door, line = _python_line(cls, extra, tmp)
        shown = f"{cls.__name__}({extra})"
        if cli is None:
            assert door == "accepted", f"{shown}: the CLI accepts it, Python refuses it: {line}"
        elif cli.startswith("argument --"):
            continue  # argparse's reading of the text of a flag or YAML value: the command line's own door
        elif cli.startswith("Invalid setting:") or "<tmp>" in cli:
            # The dataclasses' own checks, or a YAML choice (its line names the file): Python refuses too.
            assert door in ("config", "config-other", "trainer"), (
                f"{shown}: CLI refuses ({cli}), Python accepts"
            )
        elif door == "config-other" and cls is not ConservativeDPOConfig:
            # TRL's DPOConfig refuses the value itself, in its own words; ours says it in the CLI's (checked above).
            assert _python_line(ConservativeDPOConfig, extra, tmp) == ("config", cli), shown
        else:
            assert door in ("config", "trainer"), f"{shown}: the CLI refuses it ({cli}); Python: {door}"
            assert line == cli, f"{shown}\n  CLI:    {cli}\n  Python: {line}"


def _edge_values(name: str) -> list[Any]:
    """The edge values of `name`'s kind that have its type (a wrong type is the YAML file's own error)."""
    setting = SETTINGS[name]
    kind = _kind(setting.type)
    values = [True, False] if kind == "bool" else [v for v, flag in EDGES[kind] if not flag]
    return [v for v in values if _type_problem(v, setting.type) is None]


@pytest.fixture(autouse=True)
def _validate_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` stops once every setting is parsed and checked: no data, no model, no training."""
    monkeypatch.setattr(runner, "run_training", lambda spec, **kwargs: None)


def test_the_table_covers_every_training_setting() -> None:
    assert len(TRAINING) > 100
    assert sum(len(_edge_values(n)) for n in TRAINING) > 300


@pytest.mark.parametrize("name", TRAINING)
def test_every_training_setting_is_refused_by_both_doors_with_one_line(
    name: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for value in _edge_values(name):
        _check_both_doors({name: value}, tiny_model_dir, tmp_path, capsys)


@pytest.mark.parametrize("extra", COMBINATIONS, ids=[str(c) for c in COMBINATIONS])
def test_combinations_are_refused_by_both_doors_with_one_line(
    extra: dict[str, Any], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli_line(extra, tiny_model_dir, capsys) is not None  # each is a refusal
    _check_both_doors(extra, tiny_model_dir, tmp_path, capsys)


def test_ipo_with_label_smoothing_is_refused_by_the_trainer_for_both_configs(tmp_path: Path) -> None:
    """Issue 20, family 3: it trained, and the card claimed eps = 0.3 though IPO ignores it."""
    from trl import DPOConfig

    for cls in (ConservativeDPOConfig, DPOConfig):
        args = cls(
            output_dir=str(tmp_path), use_cpu=True, report_to="none", loss_type=["ipo"], label_smoothing=0.3
        )
        with pytest.raises(ConfigError, match=r"label_smoothing 0.3 has no effect on loss_type \['ipo'\]"):
            ConservativeDPOTrainer(model=MISSING_MODEL, args=args)


def test_a_monitor_on_a_kl_this_setup_never_logs_is_refused_before_loading(tmp_path: Path) -> None:
    args = ConservativeDPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        precompute_ref_log_probs=True,
        eval_strategy="steps",
    )
    monitor = KLMonitorCallback("eval_kl/sequence", stop_above=1.0)
    with pytest.raises(ConfigError) as err:
        ConservativeDPOTrainer(model=MISSING_MODEL, args=args, callbacks=[monitor])
    assert "KLMonitorCallback metric 'eval_kl/sequence' is not logged by this run" in str(err.value)
    assert "precompute_ref_log_probs=True without a ref_model" in str(err.value)
    with pytest.raises(ConfigError, match="KLMonitorCallback metric 'auto' watches 'eval_kl/sequence'"):
        ConservativeDPOTrainer(model=MISSING_MODEL, args=args, callbacks=[KLMonitorCallback(stop_above=1.0)])
    # A metric outside the KL family is left to the callback (a Python trainer may log metrics of its own): the
    # checks pass and TRL goes on to load the (missing) model.
    with pytest.raises(Exception) as err:  # noqa: B017 - whatever TRL raises for a missing model
        ConservativeDPOTrainer(
            model=MISSING_MODEL, args=args, callbacks=[KLMonitorCallback("my/metric", stop_above=1.0)]
        )
    assert not isinstance(err.value, ConfigError)
