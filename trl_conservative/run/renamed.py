"""Settings the installed transformers knows under another name or form, read as it knows them, with a note.

transformers 5 renamed or reshaped a few `TrainingArguments` fields that configs written for TRL 1.16 use; the
transformers 4.56 beside TRL 0.2x knows only the older form:

    activation_checkpointing(_kwargs)   gradient_checkpointing(_kwargs) before 5.23 (5.23 keeps the old name as a
                                        deprecated alias, so the translation only runs the other way)
    warmup_steps: 0.1                   a float < 1 is a fraction of the training steps from transformers 5; before,
                                        warmup_steps is a step count and the fraction is warmup_ratio

`older_names` rewrites a config mapping and the command-line flags in place, before they are checked and parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl_conservative.errors import ConfigError

__all__ = ["RENAMED_SETTINGS", "older_names"]

# New name -> the name transformers < 5.23 knows it by.
RENAMED_SETTINGS = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}
WARMUP_STEPS, WARMUP_RATIO = "warmup_steps", "warmup_ratio"


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
