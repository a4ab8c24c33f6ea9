"""Settings the installed transformers knows under another name or form, read as it knows them, with a note.

transformers 5 renamed or reshaped a few `TrainingArguments` fields that configs written for TRL 1.16 use; the
transformers 4.56 beside TRL 0.2x knows only the older form:

    activation_checkpointing(_kwargs)   gradient_checkpointing(_kwargs) before 5.23 (5.23 keeps the old name as a
                                        deprecated alias, so the translation only runs the other way)
    warmup_steps: 0.1                   a float < 1 is a fraction of the training steps from transformers 5; before,
                                        warmup_steps is a step count and the fraction is warmup_ratio (translated
                                        both ways: transformers 5 has no warmup_ratio)

A setting only the other TRL line has (`LINE_ONLY_SETTINGS`) is refused with a hint saying so and, where that line
has one, naming what replaces it on the installed line (`REPLACEMENTS`, `line_only_hint`).

`older_names` rewrites a config mapping and the command-line flags in place, before they are checked and parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl_conservative.errors import ConfigError

__all__ = ["LINE_ONLY_SETTINGS", "RENAMED_SETTINGS", "REPLACEMENTS", "line_only_hint", "older_names"]

# New name -> the name transformers < 5.23 knows it by.
RENAMED_SETTINGS = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}
WARMUP_STEPS, WARMUP_RATIO = "warmup_steps", "warmup_ratio"
# Settings only one TRL line has (its DPOConfig, transformers' TrainingArguments or its ModelConfig), beyond those
# translated above: a config written for one line and run on the other is told so, not just "unknown setting".
# Read off TRL 1.16 and TRL 0.23.0 (0.24-0.28 drop a few of the latter and gain a few of the former);
# tests/test_cli.py checks, on those two, the installed line's names are settings here and the other line's are not.
LINE_ONLY_SETTINGS: dict[str, frozenset[str]] = {
    "TRL 1.16 (transformers >= 5.23)": frozenset(
        {
            "activation_offloading", "bnb_4bit_quant_storage", "dataloader_in_order",
            "dataloader_multiprocessing_context", "ddp_static_graph", "enable_jit_checkpoint", "pad_to_multiple_of",
            "pad_token", "project", "router_aux_loss_coef", "trackio_bucket_id", "trackio_space_id",
            "trackio_static_space_id", "train_sampling_strategy", "use_cache",
        }
    ),
    "TRL 0.23 (transformers 4)": frozenset(
        {
            "base_model_attribute_name", "force_use_ref_model", "generate_during_eval", "label_pad_token_id",
            "max_completion_length", "max_prompt_length", "model_adapter_name", "padding_value", "ref_adapter_name",
            "ref_model_init_kwargs", "reference_free", "rpo_alpha", "tools", "use_liger_loss", "use_logits_to_keep",
            "adafactor", "fp16_backend", "fsdp_min_num_params", "fsdp_transformer_layer_cls_to_wrap",
            "group_by_length", "include_inputs_for_metrics", "include_tokens_per_second", "jit_mode_eval",
            "logging_dir", "no_cuda", "past_index", "per_gpu_eval_batch_size", "per_gpu_train_batch_size",
            "push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token", "ray_scope", "save_safetensors",
            "torchdynamo", "use_ipex", "use_legacy_prediction_loop", "use_mps_device",
        }
    ),
}  # fmt: skip


# A line-only setting -> what does its job on the other line, read off the deprecation messages of transformers 4.57
# and the fields of TRL 1.16 / transformers 5.24 (tests/test_cli.py checks each replacement names a setting the
# installed line has). A line-only setting not listed here has no counterpart: it is removed.
ENV_HINT = "set the {var} environment variable instead (in the config: `env: {{{var}: {value}}}`)"
REPLACEMENTS: dict[str, str] = {
    # TRL 0.23 / transformers 4 -> TRL 1.16 / transformers 5
    "logging_dir": ENV_HINT.format(var="TENSORBOARD_LOGGING_DIR", value="DIR"),
    "no_cuda": "set use_cpu: true instead",
    "per_gpu_train_batch_size": "use per_device_train_batch_size instead",
    "per_gpu_eval_batch_size": "use per_device_eval_batch_size instead",
    "push_to_hub_model_id": "use hub_model_id instead (the full repo name, ORG/NAME)",
    "push_to_hub_organization": "use hub_model_id instead (the full repo name, ORG/NAME)",
    "push_to_hub_token": "use hub_token instead",
    "adafactor": "use optim: adafactor instead",
    "torchdynamo": "use torch_compile_backend instead",
    "include_inputs_for_metrics": "use include_for_metrics: [inputs] instead",
    "fsdp_min_num_params": "use fsdp_config: {min_num_params: N} instead",
    "fsdp_transformer_layer_cls_to_wrap": "use fsdp_config: {transformer_layer_cls_to_wrap: [CLASS]} instead",
    "group_by_length": "use train_sampling_strategy: group_by_length instead",
    "use_mps_device": "remove it: the MPS device is used when available",
    "save_safetensors": "remove it: transformers 5 always saves safetensors",
    "max_prompt_length": "use max_length instead (prompt and completion are cut together; truncation_mode picks the end kept)",
    "max_completion_length": "use max_length instead (prompt and completion are cut together; truncation_mode picks the end kept)",
    "padding_value": "use pad_token instead (the token itself, not its id)",
    "rpo_alpha": "add TRL's sft loss instead: loss_type: [sigmoid, sft] with loss_weights: [1.0, ALPHA]",
    "tools": "give each row's tools in a tools column of the dataset instead",
    # TRL 1.16 / transformers 5 -> TRL 0.23 / transformers 4
    "train_sampling_strategy": "set group_by_length: true instead (for group_by_length)",
    "pad_token": "use padding_value instead (the token's id)",
}


def line_only_hint(key: str) -> str:
    """The end of the unknown-setting message for a setting only the other TRL line has, else an empty string."""
    import trl

    for line, names in LINE_ONLY_SETTINGS.items():
        if key in names:
            said = f" It is a setting of {line} only; the installed TRL {trl.__version__} has none"
            if key in REPLACEMENTS:
                return f"{said}; {REPLACEMENTS[key]} (or install that TRL)."
            return f"{said}, so remove it (or install that TRL)."
    return ""


def older_names(
    config: dict[str, Any], rest: list[str], dests: Sequence[str], *, where: str, given: bool = True
) -> list[str]:
    """Rewrite, in place, the settings of `config` (read from file `where`) and the flags `rest` that the parser
    (whose setting names are `dests`) knows under an older name or form. Returns one note per setting rewritten;
    with `given=False` (the embedded default, which the user did not write) the file's own are not noted."""
    import transformers

    version = transformers.__version__
    notes: list[str] = []
    for new, old in RENAMED_SETTINGS.items():
        if new in dests or old not in dests:
            continue
        found = _rename(config, rest, new, old, where=where, version=version, given=given)
        if found:
            notes.append(
                f"Note: transformers {version} calls {new} {old!r} (renamed in transformers 5.23); {new} "
                f"{' and '.join(found)} is applied as {old}."
            )
    if WARMUP_RATIO not in dests and WARMUP_STEPS in dests:  # transformers >= 5: warmup_ratio is gone
        found = _rename(
            config, rest, WARMUP_RATIO, WARMUP_STEPS, where=where, version=version, given=given, when=_fraction
        )
        if found:
            notes.append(
                f"Note: transformers {version} takes a warmup fraction as warmup_steps < 1 (it has no "
                f"warmup_ratio); warmup_ratio {' and '.join(found)} is applied as warmup_steps."
            )
    if WARMUP_RATIO in dests:  # transformers < 5: warmup_steps counts steps
        found = _rename(
            config, rest, WARMUP_STEPS, WARMUP_RATIO, where=where, version=version, given=given, when=_fraction
        )
        if found:
            notes.append(
                f"Note: transformers {version} counts warmup_steps in steps and takes a fraction of the training "
                f"steps as warmup_ratio; warmup_steps < 1 {' and '.join(found)} is applied as warmup_ratio."
            )
    return notes


def _fraction(value: Any) -> bool:
    """A warmup fraction, as transformers 5 reads `warmup_steps`: a number strictly between 0 and 1."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool) and 0 < number < 1


def _rename(
    config: dict[str, Any],
    rest: list[str],
    new: str,
    old: str,
    *,
    where: str,
    version: str,
    given: bool,
    when: Any = None,
) -> list[str]:
    """Rename `new` to `old` in `config` and in the flags `rest` (where `when(value)` holds, if given); returns
    where the user gave it ("in FILE", "on the command line")."""
    found: list[str] = []
    if new in config and (when is None or when(config[new])):
        if old in config:
            raise ConfigError(
                f"{where!r} sets both {new} and {old}, one setting under two names on transformers {version}. "
                f"Keep {new}."
            )
        config[old] = config.pop(new)
        if given:
            found.append(f"in {where!r}")
    flags = {f"--{new}", f"--{new.replace('_', '-')}"}
    for i, arg in enumerate(rest):
        flag, sep, value = arg.partition("=")
        if flag not in flags:
            continue
        if when is not None:
            value_given = value if sep else (rest[i + 1] if i + 1 < len(rest) else None)
            if not when(value_given):
                continue
        rest[i] = f"--{old}{sep}{value}"
        found.append("on the command line")
    return found
