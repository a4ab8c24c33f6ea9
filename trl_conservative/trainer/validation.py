"""`check_training_settings`: every rule about a DPO config's training settings, one function for both doors.

`trl-conservative run` (`run/settings_check.py`, before anything is written) and `ConservativeDPOTrainer.__init__`
(before any weights load, for a `ConservativeDPOConfig` or a plain `trl.DPOConfig`) call it, so whatever the command
refuses the Python API refuses too, with the same line. Its rules:

1. each value against its range (`TRAINING_RANGES`: what TrainingArguments, torch or TRL would reject later), every
   other float for NaN/inf, every other integer for a negative value (`check_value`); the loss settings and the
   `kl_*` settings by the checks that own them (`losses/plan.py`, `kl/settings.py`), whichever door they came in by;
2. the loss plan (`resolve_losses`: known names, none twice, weights, parameters, beta's bound);
3. the combinations that make a run meaningless: zero training steps, data-loader worker options without workers,
   non-finite `loss_params`, `lr_scheduler_kwargs` the schedule does not take, `label_smoothing` given to losses that
   ignore it, a reference-free run that would update a reference.

The command adds what only it has: the YAML types, the dataset splits, the KL monitor options and the plugin
environment (`run/settings_check.py`). Each problem raises `ConfigError` with one line naming the setting, the value
and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.kl.settings import kl_settings
from trl_conservative.losses.plan import (
    LossPlan,
    check_beta,
    check_label_smoothing,
    check_loss_weights,
)
from trl_conservative.training_args import is_number, plain

from .config import loss_plan

__all__ = [
    "NEGATIVE_INTS_ALLOWED",
    "NO_LABEL_SMOOTHING",
    "TRAINING_RANGES",
    "Range",
    "above",
    "at_least",
    "between",
    "check_training_settings",
    "check_value",
    "check_values",
    "text_range",
    "training_values",
]

NO_LABEL_SMOOTHING = False  # the value of a loss's `uses_label_smoothing` attribute when it ignores eps


@dataclass(frozen=True)
class Range:
    """What a setting's value must satisfy (`ok`), in words (`need`); None passes when `optional`."""

    ok: Callable[[Any], bool]
    need: str
    optional: bool = True


def at_least(low: float, what: str = "a number") -> Range:
    """A finite number (`what`) >= `low`."""
    return Range(lambda v: is_number(v) and math.isfinite(v) and v >= low, f"{what} >= {low:g}")


def above(low: float, what: str = "a number") -> Range:
    return Range(lambda v: is_number(v) and math.isfinite(v) and v > low, f"{what} > {low:g}")


def between(low: float, high: float, *, high_open: bool = True) -> Range:
    def ok(v: Any) -> bool:
        return is_number(v) and math.isfinite(v) and low <= v and (v < high if high_open else v <= high)

    return Range(ok, f"a number in [{low:g}, {high:g}{')' if high_open else ']'}")


def text_range(what: str) -> Range:
    return Range(lambda v: isinstance(v, str) and v.strip() != "", what)


_POSITIVE_INT = at_least(1, "an integer")
_PROCESSES = Range(lambda v: is_number(v) and 0 <= v <= 1024, "an integer in [0, 1024] (processes to start)")
_SEED = Range(lambda v: is_number(v) and 0 <= v < 2**32, "an integer in [0, 2**32)")
# The fields of TrainingArguments, DPOConfig and ConservativeDPOConfig with a range of their own.
TRAINING_RANGES: dict[str, Range] = {
    "per_device_train_batch_size": _POSITIVE_INT,
    "per_device_eval_batch_size": _POSITIVE_INT,
    "gradient_accumulation_steps": _POSITIVE_INT,
    "num_train_epochs": at_least(0),
    "max_steps": Range(
        lambda v: is_number(v) and (v == -1 or v >= 1), "-1 (train num_train_epochs) or an integer >= 1"
    ),
    "learning_rate": above(0),
    "warmup_steps": at_least(0),
    "weight_decay": at_least(0),
    "adam_beta1": between(0, 1),
    "adam_beta2": between(0, 1),
    "adam_epsilon": above(0),  # 0 divides 0 by 0 for a weight whose gradient is 0: NaN weights
    "max_grad_norm": Range(lambda v: is_number(v) and not math.isnan(v) and v >= 0, "a number >= 0"),
    "label_smoothing_factor": between(0, 1),
    "neftune_noise_alpha": at_least(0),
    "torch_empty_cache_steps": _POSITIVE_INT,
    "logging_steps": above(0),
    "eval_steps": above(0),
    "eval_delay": at_least(0),
    "eval_accumulation_steps": _POSITIVE_INT,
    "save_steps": above(0),
    "save_total_limit": _POSITIVE_INT,
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": _PROCESSES,
    "dataset_num_proc": Range(
        lambda v: is_number(v) and 1 <= v <= 1024, "an integer in [1, 1024] (processes to start)"
    ),
    "dataloader_prefetch_factor": _POSITIVE_INT,
    "ddp_bucket_cap_mb": _POSITIVE_INT,
    "ddp_timeout": _POSITIVE_INT,
    "local_rank": at_least(-1, "an integer"),
    "max_length": _POSITIVE_INT,
    "pad_to_multiple_of": Range(
        lambda v: v == "auto" or (is_number(v) and 1 <= v <= 2**16), "'auto' or an integer in [1, 65536]"
    ),
    "torch_compile_mode": text_range("a torch.compile mode"),
    "torch_compile_backend": text_range("a torch.compile backend"),
    "optim_args": Range(
        lambda v: isinstance(v, str) and all(part.count("=") == 1 for part in v.replace(" ", "").split(",")),
        "comma-separated key=value pairs (e.g. 'betas=0.9,eps=1e-6')",
    ),
    "precompute_ref_batch_size": _POSITIVE_INT,
    "ld_alpha": between(0, 1, high_open=False),
    "discopop_tau": above(0),
    "ref_model_mixup_alpha": between(0, 1, high_open=False),
    "ref_model_sync_steps": _POSITIVE_INT,
    "router_aux_loss_coef": at_least(0),
    "output_dir": text_range("a folder path"),
}
# Integers where a negative value means something (or that TRL/transformers check themselves). transformers 4.56
# and TRL 0.2x add two: `past_index` (-1: off) and `label_pad_token_id` (-100, the ignored label).
NEGATIVE_INTS_ALLOWED = frozenset({"max_steps", "local_rank", "past_index", "label_pad_token_id"})


def _kl_value(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        kl_settings(types.SimpleNamespace(**{name: value}))

    return check


# Settings whose message belongs to the check that reads them (the same line from a flag, a YAML file or Python).
_OWN_CHECKS: dict[str, Callable[[Any], None]] = {
    "beta": check_beta,
    "label_smoothing": check_label_smoothing,
    "loss_weights": lambda value: check_loss_weights(value, None),
    **{
        name: _kl_value(name)
        for name in (
            "kl_exact_steps",
            "kl_chunk_size",
            "kl_drift",
            "kl_sequence_prompts",
            "kl_sequence_max_new_tokens",
            "kl_sequence_samples_per_prompt",
        )
    },
}


def check_value(
    name: str,
    value: Any,
    ranges: Mapping[str, Range],
    unset_marker: Any = None,
    choices: tuple[Any, ...] | None = None,
) -> None:
    """`ConfigError` when `value` is out of `name`'s range (`ranges`), or else a non-finite float or an integer < 0.

    `unset_marker`: the setting's negative default, which means "not set" (TRL 0.28's max_prompt_length=-1, ...).
    `choices`: the values the field lists (a YAML value and a flag are checked against them when parsed).
    """
    if value is not None and unset_marker is not None and value == unset_marker:
        return
    if choices is not None and value is not None and plain(value) not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}. Fix {name}."
        )
    own = _OWN_CHECKS.get(name)
    if own is not None:
        if value is not None:
            own(value)
        return
    rule = ranges.get(name)
    if rule is not None:
        if value is None and rule.optional:
            return
        if not rule.ok(value):
            raise ConfigError(
                f"{name} must be {rule.need}, got {value!r}. Fix {name} in the config or on the command line."
            )
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}. Fix {name}.")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value < 0
        and name not in NEGATIVE_INTS_ALLOWED
    ):
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}. Fix {name}.")


def _unset_marker(f: dataclasses.Field[Any]) -> int | None:
    default = f.default
    negative = isinstance(default, int) and not isinstance(default, bool) and default < 0
    return int(default) if negative else None  # type: ignore[arg-type]


def training_values(args: Any) -> dict[str, tuple[Any, int | None, tuple[Any, ...] | None]]:
    """The settings of a config, by name: (value, the negative default meaning "not set" or None, the choices).

    Only the fields of `ConservativeDPOConfig` (TrainingArguments, DPOConfig and ours): a user's subclass may add
    fields of its own, which keep their own rules.
    """
    from .config import ConservativeDPOConfig

    known = {f.name for f in dataclasses.fields(ConservativeDPOConfig) if f.init}
    fields = dataclasses.fields(args) if dataclasses.is_dataclass(args) else ()
    return {
        f.name: (
            getattr(args, f.name, None),
            _unset_marker(f),
            tuple(f.metadata.get("choices") or ()) or None,
        )
        for f in fields
        if f.init and f.name in known
    }


def check_values(args: Any) -> None:
    """Rule 1 alone: each value of `args` against its range (`check_value`)."""
    for name, (value, marker, choices) in training_values(args).items():
        check_value(name, value, TRAINING_RANGES, marker, choices)


def check_training_settings(args: Any) -> LossPlan:
    """Check every training setting of `args` (a `ConservativeDPOConfig` or a plain `DPOConfig`); return its plan.

    Raises `ConfigError` with one line for the first problem: the same line `trl-conservative run` gives.
    """
    check_values(args)
    kl_settings(args)
    loss_params = getattr(args, "loss_params", None)
    if loss_params is not None and not isinstance(loss_params, dict):
        raise ConfigError(f"loss_params must be a mapping of option names to values, got {loss_params!r}.")
    plan = loss_plan(args)  # kept on a ConservativeDPOConfig since it was built
    _check_combinations(args, plan)
    return plan


def _check_combinations(args: Any, plan: LossPlan) -> None:
    max_steps = getattr(args, "max_steps", -1)
    if max_steps <= 0 and getattr(args, "num_train_epochs", 1) == 0:
        raise ConfigError(
            "The run has 0 training steps: max_steps is not set and num_train_epochs is 0. Set max_steps >= 1 or "
            "num_train_epochs > 0."
        )
    if getattr(args, "dataloader_num_workers", 0) == 0:
        needs_workers = {  # dataloader_multiprocessing_context: transformers >= 5 only
            "dataloader_multiprocessing_context": getattr(args, "dataloader_multiprocessing_context", None)
            is not None,
            "dataloader_prefetch_factor": getattr(args, "dataloader_prefetch_factor", None) is not None,
            "dataloader_persistent_workers": bool(getattr(args, "dataloader_persistent_workers", False)),
        }
        for name, given in needs_workers.items():
            if given:
                raise ConfigError(
                    f"{name} applies to data loader worker processes, but dataloader_num_workers is 0. Set "
                    f"dataloader_num_workers >= 1, or remove {name}."
                )
    for key, value in dict(getattr(args, "loss_params", None) or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"loss_params[{key!r}] must be a finite number, got {value!r}. Fix loss_params."
            )
    _check_scheduler_kwargs(args)
    _check_label_smoothing(args, plan)
    if not plan.needs_reference:
        from .reference_free import check_reference_free_args

        check_reference_free_args(args, [e.name for e in plan.entries])


def _check_scheduler_kwargs(args: Any) -> None:
    """`lr_scheduler_kwargs` must be options the chosen schedule takes (transformers fails in `train()` otherwise)."""
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    kwargs = getattr(args, "lr_scheduler_kwargs", None)
    if not isinstance(kwargs, dict) or not kwargs:
        return
    schedule = plain(args.lr_scheduler_type)
    function = typing.cast(
        "Callable[..., Any] | None", TYPE_TO_SCHEDULER_FUNCTION.get(args.lr_scheduler_type)
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


def _check_label_smoothing(args: Any, plan: LossPlan) -> None:
    eps = float(args.label_smoothing)
    if eps == 0:
        return
    # TRL's own losses that read label_smoothing, from the installed TRL's source (they differ by release).
    from .trl_compat import trl_losses_reading_label_smoothing

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
