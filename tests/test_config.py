"""Bad loss settings fail when the config or trainer is built, before any model loads."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from trl_conservative import (
    ConfigError,
    ConservativeDPOConfig,
    ConservativeDPOTrainer,
    LossInputs,
    LossOutput,
    LossParam,
    LossParamError,
    UnknownLossError,
    hookimpl,
)
from trl_conservative.registry import registered_plugins


class _MarginLoss:
    name = "margin_test"
    params = (
        LossParam(name="margin", type=float, default=1.0, help="hinge margin"),
        LossParam(name="squared", type=bool, default=False, help="square the hinge"),
    )

    def __call__(self, inputs: LossInputs) -> LossOutput:
        h = inputs.chosen_logratios - inputs.rejected_logratios
        losses = torch.relu(inputs.params["margin"] - inputs.beta * h)
        if inputs.params["squared"]:
            losses = losses**2
        return LossOutput(
            losses=losses,
            chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
            rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
        )


@hookimpl
def _register(register: Any) -> None:
    register(_MarginLoss())


MARGIN_PLUGIN = types.SimpleNamespace(register_losses=_register)


def _cfg(**kw: Any) -> ConservativeDPOConfig:
    return ConservativeDPOConfig(output_dir="unused", use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize(
    ("kwargs", "error", "fragments"),
    [
        ({"loss_type": "cdp"}, UnknownLossError, ["'cdp'", "Did you mean 'cdpo'", "hinge", "ipo"]),
        ({"loss_type": ["cdpo", "hinge2"]}, UnknownLossError, ["'hinge2'", "hinge"]),
        ({"label_smoothing": 0.5}, ConfigError, ["0.5", "[0, 0.5)"]),
        ({"label_smoothing": -0.1}, ConfigError, ["-0.1", "[0, 0.5)"]),
        ({"beta": 0.0}, ConfigError, ["beta", "0.0", "> 0"]),
        ({"beta": -1.0}, ConfigError, ["beta", "-1.0"]),
        ({"loss_params": {"gamma": 1.0}}, LossParamError, ["'gamma'", "accepts parameters"]),
        ({"loss_params": "{not json"}, ConfigError, ["loss_params", "JSON"]),
        ({"loss_type": "cdpo", "ld_alpha": 0.5}, ConfigError, ["ld_alpha", "'cdpo'"]),
        (
            {"loss_type": "sigmoid", "label_smoothing": 0.1, "use_weighting": True},
            ConfigError,
            ["use_weighting"],
        ),
    ],
)
def test_bad_settings_raise_with_value_and_fix(
    kwargs: dict[str, Any], error: type, fragments: list[str]
) -> None:
    with pytest.raises(error) as err:
        _cfg(**kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_good_settings_pass() -> None:
    from trl_conservative.trainer.config import loss_plan

    cfg = _cfg(loss_type=["cdpo", "hinge"], loss_weights=[1.0, 0.5], label_smoothing=0.2)
    plan = loss_plan(cfg)
    assert [(e.name, e.weight) for e in plan.entries] == [("cdpo", 1.0), ("hinge", 0.5)]
    # cdpo is the registry's built-in (no loss_params: label_smoothing is its epsilon); TRL computes hinge natively
    assert [e.name for e in plan.custom] == ["cdpo"] and [e.name for e in plan.native] == ["hinge"]
    assert plan.custom[0].info is not None and plan.custom[0].info.plugin == "builtin"
    assert dict(plan.custom[0].params) == {}
    assert plan.needs_reference


def test_the_plan_is_resolved_once_and_follows_a_changed_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy
    import pickle

    from trl_conservative.trainer import config as config_module

    calls: list[object] = []
    original = config_module.resolve_losses
    monkeypatch.setattr(config_module, "resolve_losses", lambda args: calls.append(args) or original(args))
    cfg = _cfg(loss_type="cdpo", label_smoothing=0.1)
    assert len(calls) == 1  # checked when built
    first = config_module.loss_plan(cfg)
    assert config_module.loss_plan(cfg) is first and len(calls) == 1  # kept
    cfg.loss_type = "ipo"
    cfg.label_smoothing = 0.0
    assert [e.name for e in config_module.loss_plan(cfg).entries] == ["ipo"] and len(calls) == 2
    cfg.loss_params = {}  # changed in place or replaced, a loss field that differs resolves anew
    config_module.loss_plan(cfg)
    assert len(calls) == 3
    # training_args.bin pickles the config: the kept plan (read-only mappings) stays behind
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg


def test_the_kept_plan_covers_every_field_resolve_losses_reads() -> None:
    """A field resolve_losses reads but LOSS_FIELDS misses would let a kept plan go stale after it changed."""
    from trl_conservative.losses.plan import resolve_losses
    from trl_conservative.trainer.config import LOSS_FIELDS

    read: set[str] = set()

    class Recorder:
        def __init__(self, config: Any) -> None:
            self._config = config

        def __getattr__(self, name: str) -> Any:
            read.add(name)
            return getattr(self._config, name)

    for settings in ({"loss_type": "cdpo", "label_smoothing": 0.1}, {"loss_type": "sigmoid", "ld_alpha": 0.5}):
        resolve_losses(Recorder(_cfg(**settings)))
    assert read and read <= set(LOSS_FIELDS), read - set(LOSS_FIELDS)


def test_sigmoid_with_trl_only_option_runs_on_trl() -> None:
    from trl_conservative.losses.plan import resolve_losses

    plan = resolve_losses(_cfg(loss_type="sigmoid", ld_alpha=0.5))
    assert [e.name for e in plan.native] == ["sigmoid"] and not plan.custom


def test_loss_params_are_typed_and_defaulted() -> None:
    from trl_conservative.losses.plan import resolve_losses

    with registered_plugins(("margin", MARGIN_PLUGIN)):
        plan = resolve_losses(_cfg(loss_type="margin_test", loss_params='{"margin": 2}'))
        assert dict(plan.custom[0].params) == {"margin": 2.0, "squared": False}
        assert isinstance(plan.custom[0].params["margin"], float)
        with pytest.raises(LossParamError) as err:
            _cfg(loss_type="margin_test", loss_params={"margin": "big"})
        assert "'margin'" in str(err.value) and "float" in str(err.value) and "'big'" in str(err.value)
        with pytest.raises(LossParamError) as err:
            _cfg(loss_type="margin_test", loss_params={"margn": 1.0})
        assert "'margn'" in str(err.value) and "margin" in str(err.value)


def test_trainer_validates_a_plain_dpo_config_before_loading_the_model(tiny_dataset: Any) -> None:
    from trl import DPOConfig

    args = DPOConfig(
        output_dir="unused", use_cpu=True, report_to="none", loss_type="cdpo", label_smoothing=0.7
    )
    # The model path does not exist: had TRL loaded it first, this would be an OSError, not our ConfigError.
    with pytest.raises(ConfigError, match="label_smoothing"):
        ConservativeDPOTrainer(model="/nonexistent/model", args=args, train_dataset=tiny_dataset)
    args = DPOConfig(output_dir="unused", use_cpu=True, report_to="none", loss_type="nope")
    with pytest.raises(UnknownLossError, match="'nope'"):
        ConservativeDPOTrainer(model="/nonexistent/model", args=args, train_dataset=tiny_dataset)


def test_tiny_config_turns_checkpointing_off_under_the_installed_name_without_warning(tmp_path: Any) -> None:
    import warnings

    from trl_conservative.testing import tiny_config

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers >= 5.23 warns on the old name gradient_checkpointing
        config = tiny_config(tmp_path / "out")
        assert config.gradient_checkpointing is False  # the old name mirrors the new one on transformers 5
        assert getattr(config, "activation_checkpointing", False) is False
        name = "activation_checkpointing" if hasattr(config, "activation_checkpointing") else "gradient_checkpointing"
        on = tiny_config(tmp_path / "out", **{name: True})  # an override wins
    assert on.gradient_checkpointing is True and getattr(on, "activation_checkpointing", True) is True
