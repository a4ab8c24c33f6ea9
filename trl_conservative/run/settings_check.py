"""One check of every `trl-conservative run` setting, before anything is written or loaded.

It walks the fields `run --help` lists (`RunArguments`, `ConservativeDPOConfig`, `ModelConfig`: `setting_fields()`):

1. `check_config_types`: each value of the YAML file against its field's type and choices (argparse checks the
   command line, but a YAML value reaches the dataclasses unconverted: `max_steps: 2.5`, `beta: [0.1]`,
   `dtype: float99`). Duplicate YAML keys are found by `duplicate_yaml_keys`.
2. `check_settings`: the training settings by `check_training_settings` (`trainer/validation.py`), the one
   check `ConservativeDPOTrainer` runs too, so the Python API refuses what this command refuses with the same line
   (ranges, non-finite floats, negative integers, the loss plan, zero training steps, label_smoothing given to
   losses that ignore it, ...); the run options and model settings against their ranges (`RANGES`); then what only
   the command has: the test split equal to the train split, a KL monitor that could never fire (a metric the run
   never logs; `kl/monitor.py: check_thresholds`: a negative threshold on a KL, a warning above the stop) and plugin
   names in TRL_CONSERVATIVE_DISABLE_PLUGINS that are not installed.

Each problem raises `ConfigError` with one line naming the setting, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.trainer.kl_availability import check_monitor_metric, kl_metric_choices
from trl_conservative.trainer.validation import (
    NO_LABEL_SMOOTHING,
    TRAINING_RANGES,
    Range,
    above,
    at_least,
    between,
    check_training_settings,
    check_value,
    text_range,
)
from trl_conservative.training_args import evaluates, is_number

__all__ = [
    "AUTO_METRIC",
    "NO_LABEL_SMOOTHING",
    "RANGES",
    "Range",
    "Setting",
    "check_config_types",
    "check_disabled_plugins",
    "check_loss_weights_count",
    "check_ranges",
    "check_settings",
    "duplicate_yaml_keys",
    "kl_metric_choices",
    "setting_fields",
]

AUTO_METRIC = "auto"


@dataclass(frozen=True)
class Setting:
    """One field `run --help` lists: its dataclass, type annotation and choices."""

    name: str
    owner: str
    type: Any
    choices: tuple[Any, ...] | None
    # A negative integer default is a "not set" marker (TRL 0.28's deprecated max_prompt_length, ... are -1).
    unset_marker: int | None = None


@functools.cache
def setting_fields() -> dict[str, Setting]:
    """Every setting of `trl-conservative run`, by name."""
    from trl import ModelConfig

    from trl_conservative.trainer.config import ConservativeDPOConfig

    from .options import RunArguments

    found: dict[str, Setting] = {}
    for cls in (RunArguments, ConservativeDPOConfig, ModelConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in found:
                choices = f.metadata.get("choices")
                negative = isinstance(f.default, int) and not isinstance(f.default, bool) and f.default < 0
                found[f.name] = Setting(
                    f.name,
                    cls.__name__,
                    hints.get(f.name, Any),
                    tuple(choices or ()) or None,
                    unset_marker=int(f.default) if negative else None,  # type: ignore[arg-type]
                )
    return found


# --- 1. types of YAML values ------------------------------------------------------------------------------------
def check_config_types(config: Mapping[str, Any], where: str) -> None:
    """Raise `ConfigError` for a YAML value whose type or choice its setting cannot take."""
    settings = setting_fields()
    for name, value in config.items():
        setting = settings.get(str(name))
        if setting is None or value is None:
            continue  # unknown keys are reported elsewhere; None is a default
        # Text is converted (and refused) by argparse like a flag's value; other YAML values reach the config as is.
        expected = None if isinstance(value, str) else _type_problem(value, setting.type)
        if expected is not None:
            raise ConfigError(
                f"{name} must be {expected}, got {_kind(value)} {value!r} in {where}. Fix {name} in that file "
                "(`trl-conservative run --help` lists each setting's type)."
            )
        if setting.choices is not None and value not in setting.choices:  # argparse checks only flags
            raise ConfigError(
                f"{name} must be one of {', '.join(map(repr, setting.choices))}, got {value!r} in {where}."
            )


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _type_problem(value: Any, tp: Any) -> str | None:
    """None when `value` fits annotation `tp`, else what was expected ("an integer", "true or false", ...)."""
    if tp is Any or tp is object:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        problems = [_type_problem(value, a) for a in members]
        if any(p is None for p in problems):
            return None
        return " or ".join(dict.fromkeys(p for p in problems if p))
    if origin is typing.Literal:
        return None if value in typing.get_args(tp) else f"one of {typing.get_args(tp)}"
    if origin is list or tp is list:
        if not isinstance(value, list):
            return "a list"
        (item,) = typing.get_args(tp) or (Any,)
        bad = [v for v in value if _type_problem(v, item) is not None]
        return f"a list of {_type_problem(bad[0], item)}" if bad else None
    if origin is dict or tp is dict:
        return None if isinstance(value, dict) else "a mapping"
    if tp is bool:
        return None if isinstance(value, bool) else "true or false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if tp is float:
        return None if is_number(value) else "a number"
    if tp is str or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return None if isinstance(value, str) else "text (quote it in YAML)"
    return None  # another class (e.g. accelerate's ParallelismConfig): left to its own checks


def duplicate_yaml_keys(text: str) -> tuple[str, int] | None:
    """The first key repeated in one YAML mapping and the line of its repetition, or None.

    PyYAML keeps the last value silently; this walks the safe-composed node tree (nothing is constructed).
    """
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key, child in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        return str(key.value), key.start_mark.line + 1
                    seen.add(key.value)
                stack.append(child)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return None


# --- 2. ranges --------------------------------------------------------------------------------------------------
# The run options and model settings with a range; the training settings' are `TRAINING_RANGES`.
RANGES: dict[str, Range] = {
    **TRAINING_RANGES,
    "test_split_size": Range(lambda v: is_number(v) and 0 < v < 1, "a fraction in (0, 1)"),
    # Any finite threshold here; what is meaningless depends on the metric watched (`_check_kl_monitor`).
    "kl_warn_above": Range(lambda v: is_number(v) and math.isfinite(v), "a finite number"),
    "kl_stop_above": Range(lambda v: is_number(v) and math.isfinite(v), "a finite number"),
    "kl_stop_patience": at_least(1, "an integer"),
    "suspected_flips": at_least(0, "an integer"),
    "lora_r": at_least(1, "an integer"),
    "lora_alpha": above(0),
    "lora_dropout": between(0, 1),
    "dataset_train_split": text_range("a split name"),
    "dataset_test_split": text_range("a split name"),
}


def check_settings(spec: Any) -> None:
    """Raise `ConfigError` for the first setting out of range or combination that makes the run meaningless."""
    check_ranges({**vars(spec.script), **vars(spec.model)})
    check_training_settings(spec.training)  # the trainer's own check: the same line from Python
    _combinations(spec)


def check_ranges(values: Mapping[str, Any]) -> None:
    """Raise `ConfigError` for the first value out of its range (`RANGES`, finite floats, integers >= 0).

    `parse_run_args` runs it on the parsed values before the dataclasses are built (whose own checks give less
    precise messages, e.g. "cannot convert float infinity to integer"); `check_training_settings` checks the built
    config the same way (`check_value`).
    """
    settings = setting_fields()
    for name in settings:
        if name in values:
            check_value(name, values[name], RANGES, settings[name].unset_marker)


def check_loss_weights_count(values: Mapping[str, Any]) -> None:
    """One weight > 0 per `loss_type` entry: checked before the config is built, whose TRL checks word it by release
    (`losses/plan.py: check_loss_weights`, which the config and the trainer call too)."""
    from trl_conservative.losses.plan import check_loss_weights

    weights = values.get("loss_weights")
    if isinstance(weights, list) and values.get("loss_type") is not None:
        check_loss_weights(weights, values["loss_type"])


def _combinations(spec: Any) -> None:
    training, script = spec.training, spec.script
    same_split = script.dataset_test_split == script.dataset_train_split
    if evaluates(training) and same_split and not script.test_split_size:  # a held-out fraction is fine
        raise ConfigError(
            f"dataset_test_split {script.dataset_test_split!r} is the train split: evaluating on the pairs it "
            "trains on measures nothing held out. Set dataset_test_split to another split, or test_split_size: 0.1."
        )
    _check_kl_monitor(spec)
    check_disabled_plugins()


def _check_kl_monitor(spec: Any) -> None:
    script = spec.script
    if script.kl_warn_above is None and script.kl_stop_above is None:
        return  # no monitor: the metric name is not used
    from trl_conservative.kl.monitor import check_thresholds

    # The run passes no ref_model: the reference is a copy of the model, or the model without its adapter (PEFT).
    watched = check_monitor_metric(
        script.kl_monitor_metric, spec.training, setting="kl_monitor_metric", peft=bool(spec.model.use_peft)
    )
    check_thresholds(
        watched,
        script.kl_warn_above,
        script.kl_stop_above,
        names=("kl_warn_above", "kl_stop_above"),
        owner="",
    )


def check_disabled_plugins() -> None:
    """Every name in TRL_CONSERVATIVE_DISABLE_PLUGINS must be an installed plugin (entry point)."""
    import importlib.metadata

    from trl_conservative.registry.hookspecs import PROJECT_NAME
    from trl_conservative.registry.loading import DISABLE_ENV, blocks, disabled_plugins

    raw = os.environ.get(DISABLE_ENV, "")
    if raw.lstrip().startswith(("[", "{")):
        raise ConfigError(
            f"{DISABLE_ENV} must be comma-separated plugin names (e.g. rdpo,simpo), got {raw!r}. In a YAML "
            "`env:` mapping write it as one string."
        )
    entry_points = importlib.metadata.entry_points(group=PROJECT_NAME)
    installed = sorted({ep.name for ep in entry_points})
    unknown = sorted(n for n in disabled_plugins() if not any(blocks(n, ep) for ep in entry_points))
    if unknown:
        raise ConfigError(
            f"{DISABLE_ENV} names {', '.join(map(repr, unknown))}, which is not an installed plugin, so it blocks "
            f"nothing. Installed plugins: {', '.join(installed) or 'none'}. Fix the name or remove it."
        )
