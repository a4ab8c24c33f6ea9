"""One check of every `trl-conservative run` setting, before anything is written or loaded.

It walks the fields `run --help` lists (`RunArguments`, `ConservativeDPOConfig`, `ModelConfig`: `run_settings()`):

1. `check_config_types`: each value of the YAML file against its field's type and choices (argparse checks the
   command line, but a YAML value reaches the dataclasses unconverted: `max_steps: 2.5`, `beta: [0.1]`,
   `dtype: float99`). Duplicate YAML keys are found by `duplicate_yaml_keys`.
2. `check_settings`: each parsed value against the range TrainingArguments, torch or TRL would reject later
   (`RANGES`: a batch size of 0, a negative learning rate, ...), every float for NaN/inf, every other integer for
   a negative value, then the combinations that make a run meaningless (`_combinations`: zero training steps,
   loss weights <= 0 or not finite, label_smoothing given to losses that ignore it, a KL monitor metric the run
   never logs, plugin names in TRL_CONSERVATIVE_DISABLE_PLUGINS that are not installed, the test split equal
   to the train split).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.metric_names import TRL_METRICS

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
    "evaluates",
    "kl_metric_choices",
    "run_settings",
]

NO_LABEL_SMOOTHING = False  # the value of a loss's `uses_label_smoothing` attribute when it ignores eps
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
def run_settings() -> dict[str, Setting]:
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
    settings = run_settings()
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
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
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
@dataclass(frozen=True)
class Range:
    """What a setting's value must satisfy (`ok`), in words (`need`); None passes when `optional`."""

    ok: Callable[[Any], bool]
    need: str
    optional: bool = True


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(low: float, what: str = "a number") -> Range:
    return Range(lambda v: _num(v) and math.isfinite(v) and v >= low, f"{what} >= {low:g}")


def _above(low: float, what: str = "a number") -> Range:
    return Range(lambda v: _num(v) and math.isfinite(v) and v > low, f"{what} > {low:g}")


def _between(low: float, high: float, *, high_open: bool = True) -> Range:
    def ok(v: Any) -> bool:
        return _num(v) and math.isfinite(v) and low <= v and (v < high if high_open else v <= high)

    return Range(ok, f"a number in [{low:g}, {high:g}{')' if high_open else ']'}")


_POSITIVE_INT = _at_least(1, "an integer")
_FINITE = Range(lambda v: _num(v) and math.isfinite(v), "a finite number")
_PROCESSES = Range(lambda v: _num(v) and 0 <= v <= 1024, "an integer in [0, 1024] (processes to start)")
_SEED = Range(lambda v: _num(v) and 0 <= v < 2**32, "an integer in [0, 2**32)")
RANGES: dict[str, Range] = {
    "per_device_train_batch_size": _POSITIVE_INT,
    "per_device_eval_batch_size": _POSITIVE_INT,
    "gradient_accumulation_steps": _POSITIVE_INT,
    "num_train_epochs": _at_least(0),
    "max_steps": Range(
        lambda v: _num(v) and (v == -1 or v >= 1), "-1 (train num_train_epochs) or an integer >= 1"
    ),
    "learning_rate": _above(0),
    "warmup_steps": _at_least(0),
    "weight_decay": _at_least(0),
    "adam_beta1": _between(0, 1),
    "adam_beta2": _between(0, 1),
    "adam_epsilon": _above(0),  # 0 divides 0 by 0 for a weight whose gradient is 0: NaN weights
    "max_grad_norm": Range(lambda v: _num(v) and not math.isnan(v) and v >= 0, "a number >= 0"),
    "label_smoothing_factor": _between(0, 1),
    "neftune_noise_alpha": _at_least(0),
    "torch_empty_cache_steps": _POSITIVE_INT,
    "logging_steps": _above(0),
    "eval_steps": _above(0),
    "eval_delay": _at_least(0),
    "eval_accumulation_steps": _POSITIVE_INT,
    "save_steps": _above(0),
    "save_total_limit": _POSITIVE_INT,
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": _PROCESSES,
    "dataset_num_proc": Range(
        lambda v: _num(v) and 1 <= v <= 1024, "an integer in [1, 1024] (processes to start)"
    ),
    "dataloader_prefetch_factor": _POSITIVE_INT,
    "ddp_bucket_cap_mb": _POSITIVE_INT,
    "ddp_timeout": _POSITIVE_INT,
    "local_rank": _at_least(-1, "an integer"),
    "max_length": _POSITIVE_INT,
    "pad_to_multiple_of": Range(
        lambda v: v == "auto" or (_num(v) and 1 <= v <= 2**16), "'auto' or an integer in [1, 65536]"
    ),
    "torch_compile_mode": Range(lambda v: isinstance(v, str) and v.strip() != "", "a torch.compile mode"),
    "torch_compile_backend": Range(
        lambda v: isinstance(v, str) and v.strip() != "", "a torch.compile backend"
    ),
    "optim_args": Range(
        lambda v: isinstance(v, str) and all(part.count("=") == 1 for part in v.replace(" ", "").split(",")),
        "comma-separated key=value pairs (e.g. 'betas=0.9,eps=1e-6')",
    ),
    "precompute_ref_batch_size": _POSITIVE_INT,
    "ld_alpha": _between(0, 1, high_open=False),
    "discopop_tau": _above(0),
    "ref_model_mixup_alpha": _between(0, 1, high_open=False),
    "ref_model_sync_steps": _POSITIVE_INT,
    "router_aux_loss_coef": _at_least(0),
    "test_split_size": Range(lambda v: _num(v) and 0 < v < 1, "a fraction in (0, 1)"),
    "kl_warn_above": _FINITE,  # log-ratios and k1 can be negative: any finite threshold
    "kl_stop_above": _FINITE,
    "kl_stop_patience": _POSITIVE_INT,
    "suspected_flips": _at_least(0, "an integer"),
    "lora_r": _POSITIVE_INT,
    "lora_alpha": _above(0),
    "lora_dropout": _between(0, 1),
    "output_dir": Range(lambda v: isinstance(v, str) and v.strip() != "", "a folder path"),
    "dataset_train_split": Range(lambda v: isinstance(v, str) and v.strip() != "", "a split name"),
    "dataset_test_split": Range(lambda v: isinstance(v, str) and v.strip() != "", "a split name"),
    "loss_weights": Range(
        lambda v: isinstance(v, list) and all(_num(w) and math.isfinite(w) and w > 0 for w in v),
        "a list of finite weights > 0 (a weight of 0 trains nothing, a negative one ascends the loss)",
    ),
}
# Integers where a negative value means something (or that TRL/transformers check themselves). transformers 4.56
# and TRL 0.2x add two: `past_index` (-1: off) and `label_pad_token_id` (-100, the ignored label).
_NEGATIVE_INTS_ALLOWED = frozenset({"max_steps", "local_rank", "past_index", "label_pad_token_id"})


def check_settings(spec: Any) -> None:
    """Raise `ConfigError` for the first setting out of range or combination that makes the run meaningless."""
    check_ranges({**vars(spec.script), **vars(spec.model), **_training_values(spec.training)})
    _combinations(spec)


def check_ranges(values: Mapping[str, Any]) -> None:
    """Raise `ConfigError` for the first value out of its range (`RANGES`, finite floats, integers >= 0).

    `parse_run_args` runs it on the parsed values before the dataclasses are built (whose own checks give less
    precise messages, e.g. "cannot convert float infinity to integer"), and again on the built config.
    """
    settings = run_settings()
    for name in settings:
        if name not in values:
            continue
        value = values[name]
        if value is not None and value == settings[name].unset_marker:
            continue
        rule = RANGES.get(name)
        if rule is not None:
            if value is None and rule.optional:
                continue
            if not rule.ok(value):
                raise ConfigError(
                    f"{name} must be {rule.need}, got {value!r}. Fix {name} in the config or on the command line."
                )
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}. Fix {name}.")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value < 0
            and name not in _NEGATIVE_INTS_ALLOWED
        ):
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}. Fix {name}.")


def check_loss_weights_count(values: Mapping[str, Any]) -> None:
    """One weight per `loss_type` entry: checked before the config is built, whose TRL checks word it by release."""
    loss_type, weights = values.get("loss_type"), values.get("loss_weights")
    if weights is None or not isinstance(weights, list) or loss_type is None:
        return
    losses = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if len(weights) != len(losses):
        raise ConfigError(
            f"loss_weights {weights!r} has {len(weights)} weights for {len(losses)} losses {losses}. Give one weight "
            "per loss_type entry, in the same order, or leave loss_weights out for equal weights."
        )


def _training_values(training: Any) -> dict[str, Any]:
    return {f.name: getattr(training, f.name, None) for f in dataclasses.fields(training) if f.init}


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))


def evaluates(training: Any) -> bool:
    """Whether the run evaluates (an eval split is then required by the data loader)."""
    return _strategy(training.eval_strategy) != "no" or bool(getattr(training, "eval_on_start", False))


def _combinations(spec: Any) -> None:
    training, script = spec.training, spec.script
    if training.max_steps <= 0 and training.num_train_epochs == 0:
        raise ConfigError(
            "The run has 0 training steps: max_steps is not set and num_train_epochs is 0. Set max_steps >= 1 or "
            "num_train_epochs > 0."
        )
    same_split = script.dataset_test_split == script.dataset_train_split
    if evaluates(training) and same_split and not script.test_split_size:  # a held-out fraction is fine
        raise ConfigError(
            f"dataset_test_split {script.dataset_test_split!r} is the train split: evaluating on the pairs it "
            "trains on measures nothing held out. Set dataset_test_split to another split, or test_split_size: 0.1."
        )
    if training.dataloader_num_workers == 0:
        needs_workers = {  # dataloader_multiprocessing_context: transformers >= 5 only
            "dataloader_multiprocessing_context": getattr(training, "dataloader_multiprocessing_context", None)
            is not None,
            "dataloader_prefetch_factor": training.dataloader_prefetch_factor is not None,
            "dataloader_persistent_workers": bool(training.dataloader_persistent_workers),
        }
        for name, given in needs_workers.items():
            if given:
                raise ConfigError(
                    f"{name} applies to data loader worker processes, but dataloader_num_workers is 0. Set "
                    f"dataloader_num_workers >= 1, or remove {name}."
                )
    for key, value in dict(training.loss_params or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"loss_params[{key!r}] must be a finite number, got {value!r}. Fix loss_params."
            )
    _check_scheduler_kwargs(training)
    _check_label_smoothing(training)
    _check_kl_monitor(training, script)
    check_disabled_plugins()


def _check_scheduler_kwargs(training: Any) -> None:
    """`lr_scheduler_kwargs` must be options the chosen schedule takes (transformers fails in `train()` otherwise)."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    kwargs = training.lr_scheduler_kwargs
    if not isinstance(kwargs, dict) or not kwargs:
        return
    schedule = getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type)
    function = typing.cast(
        "Callable[..., Any] | None", TYPE_TO_SCHEDULER_FUNCTION.get(training.lr_scheduler_type)
    )
    if function is None:
        return
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = sorted(set(parameters) - {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"})
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"lr_scheduler_kwargs {', '.join(map(repr, unknown))} is not an option of the {schedule!r} schedule, "
            f"which takes: {', '.join(accepted) or 'no options'}. Fix lr_scheduler_kwargs or lr_scheduler_type."
        )


def _check_label_smoothing(training: Any) -> None:
    eps = float(training.label_smoothing)
    if eps == 0:
        return
    from trl_conservative.losses.plan import resolve_losses

    # TRL's own losses that read label_smoothing, from the installed TRL's source (they differ by release).
    from trl_conservative.trainer.trl_compat import trl_losses_reading_label_smoothing

    plan = resolve_losses(training)
    using = [
        e.name
        for e in plan.entries
        if (e.info is None and e.name in trl_losses_reading_label_smoothing())
        or (
            e.info is not None
            and getattr(e.info.loss, "uses_label_smoothing", True) is not NO_LABEL_SMOOTHING
        )
    ]
    if not using:
        names = [e.name for e in plan.entries]
        raise ConfigError(
            f"label_smoothing {eps:g} has no effect on loss_type {names}: these losses ignore it, so the run would "
            "train without it while the report and model card show it. Set label_smoothing: 0, or use a loss "
            "that applies it (cdpo, sigmoid, or TRL's robust)."
        )


def kl_metric_choices(training: Any) -> list[str]:
    """The metric names a KL monitor may watch in this run: what it logs, and `auto`."""
    from trl_conservative.kl.settings import kl_settings
    from trl_conservative.metric_names import logged_metric_names

    settings = kl_settings(training)  # the trainer's own reading of the kl_* fields
    kl = logged_metric_names(
        exact=settings.exact_steps > 0,
        logratio=settings.drift,
        sequence=settings.sequence_prompts > 0,
        evaluates=evaluates(training),
    )
    trl = set(TRL_METRICS) | ({f"eval_{m}" for m in TRL_METRICS} if evaluates(training) else set())
    return [AUTO_METRIC, *sorted(kl), *sorted(trl)]


def _check_kl_monitor(training: Any, script: Any) -> None:
    if script.kl_warn_above is None and script.kl_stop_above is None:
        return  # no monitor: the metric name is not used
    metric = script.kl_monitor_metric
    choices = kl_metric_choices(training)
    if metric in choices:
        return
    import difflib

    close = difflib.get_close_matches(str(metric), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"kl_monitor_metric {metric!r} is not logged by this run, so the KL monitor would never fire.{hint} "
        f"This run logs: {', '.join(choices)}."
    )


def check_disabled_plugins() -> None:
    """Every name in TRL_CONSERVATIVE_DISABLE_PLUGINS must be an installed plugin (entry point)."""
    import importlib.metadata

    from trl_conservative.registry.hookspecs import PROJECT_NAME
    from trl_conservative.registry.loading import DISABLE_ENV, disabled_plugins, normalize_dist_name

    raw = os.environ.get(DISABLE_ENV, "")
    if raw.lstrip().startswith(("[", "{")):
        raise ConfigError(
            f"{DISABLE_ENV} must be comma-separated plugin names (e.g. rdpo,simpo), got {raw!r}. In a YAML "
            "`env:` mapping write it as one string."
        )
    entry_points = importlib.metadata.entry_points(group=PROJECT_NAME)
    installed = sorted({ep.name for ep in entry_points})
    dists = {
        normalize_dist_name(ep.dist.name) for ep in entry_points if ep.dist is not None
    }  # blocked by package too
    unknown = sorted(
        n for n in disabled_plugins() if n not in installed and normalize_dist_name(n) not in dists
    )
    if unknown:
        raise ConfigError(
            f"{DISABLE_ENV} names {', '.join(map(repr, unknown))}, which is not an installed plugin, so it blocks "
            f"nothing. Installed plugins: {', '.join(installed) or 'none'}. Fix the name or remove it."
        )
