"""Parse `trl-conservative run` settings: a YAML file and `--flag value` overrides, through TRL's `TrlParser`.

Three dataclasses share one namespace, as in `trl dpo`: `RunArguments` (TRL's `ScriptArguments` dataset names
plus our run options), `ConservativeDPOConfig` (every `DPOConfig`/`TrainingArguments` field and ours) and TRL's
`ModelConfig` (model, dtype, PEFT/LoRA, quantisation). Flags override the YAML. Any mistake (unknown key, bad
value, missing file) raises `ConfigError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from trl import ModelConfig, TrlParser

from trl_conservative.demo.embedded import DEFAULT_CONFIG
from trl_conservative.errors import ConfigError
from trl_conservative.recipes import resolve_config
from trl_conservative.trainer.config import ConservativeDPOConfig

from .options import RunArguments
from .refusals import raised_here
from .renamed import line_only_hint, older_names
from .settings_check import (
    check_config_types,
    check_loss_weights_count,
    check_ranges,
    check_settings,
    duplicate_yaml_keys,
)

__all__ = [
    "ENV_KEY",
    "RunSpec",
    "build_parser",
    "load_yaml",
    "one_line",
    "parse_run_args",
    "split_config_flag",
    "unknown_key_message",
]

ENV_KEY = "env"  # TrlParser exports a top-level `env:` mapping to the environment


@dataclass
class RunSpec:
    """The parsed settings of one run, and the YAML they came from."""

    script: RunArguments
    training: ConservativeDPOConfig
    model: ModelConfig
    config_path: Path
    notes: list[str] = field(default_factory=list)  # one line each, shown before training starts


def _int_or_text(text: str) -> int | str:
    """A whole number where the text is one (`8`, `-1`), else the text (`auto`)."""
    try:
        return int(text)
    except ValueError:
        return text


class _Parser(TrlParser):  # type: ignore[misc]
    """`TrlParser` whose argparse errors raise `ConfigError` instead of printing usage and exiting.

    A setting two of the dataclasses define (`overwrite_output_dir`: ours in `RunArguments`, and transformers <
    5's in `TrainingArguments`) gets one flag, the first dataclass's (its help and type; the order of
    `setting_fields()`), instead of argparse's "conflicting option strings". The parsed value goes to every dataclass
    that has the field.
    """

    @staticmethod
    def _parse_dataclass_field(parser: Any, field: Any) -> None:
        flag = f"--{field.name}"
        if flag in parser._option_string_actions:
            return
        # A number-or-word field (`pad_to_multiple_of: int | str`, 'auto' or a count) is read as text by
        # transformers' parser, so `--pad_to_multiple_of 8` gave the text '8', which the range check refused.
        choices = typing.get_args(field.type)  # read first: transformers' parser narrows field.type in place
        TrlParser._parse_dataclass_field(parser, field)
        if int in choices and str in choices and flag in parser._option_string_actions:
            parser._option_string_actions[flag].type = _int_or_text

    def parse_into_dataclasses(self, args: Sequence[str]) -> tuple[Any, ...]:
        """`parse_args_into_dataclasses`, except that every dataclass gets each parsed value it has a field for
        (the shared ones included; transformers' gives a value to the first dataclass only)."""
        namespace, remaining = self.parse_known_args(args=args)
        if remaining:
            raise ValueError(f"Some specified arguments are not used by the HfArgumentParser: {remaining}")
        values = vars(namespace)
        return tuple(
            dtype(
                **{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values}
            )
            for dtype in self.dataclass_types
        )

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}. Run `trl-conservative run --help` for the settings and their types.")


def build_parser() -> _Parser:
    types: tuple[Any, ...] = (RunArguments, ConservativeDPOConfig, ModelConfig)
    return _Parser(
        types,
        prog="trl-conservative run",
        description="Train with DPO and pluggable losses. Settings come from --config FILE.yaml (without it: the "
        "embedded offline default) and from --name value flags, which override the file.",
    )


def load_yaml(path: Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; a missing file, a syntax error or a non-mapping raises `ConfigError`."""
    from .files import path_problem, read_text

    problem = path_problem(path, "file")
    if problem is not None:
        raise ConfigError(
            f"Config file {str(path)!r} {problem}. Pass an existing YAML file to --config, "
            "or leave --config out to run the embedded default."
        )
    text = read_text(path, what="Config file")
    try:
        data = yaml.safe_load(text)
        duplicate = duplicate_yaml_keys(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"Config file {str(path)!r} is not valid YAML{at}: {problem}. Fix the syntax."
        ) from None
    if duplicate is not None:
        raise ConfigError(
            f"Config file {str(path)!r} sets {duplicate[0]!r} twice (again at line {duplicate[1]}); YAML would "
            "silently keep the last value. Keep one of them."
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {str(path)!r} must hold a mapping of setting: value, got a {type(data).__name__}."
        )
    if ENV_KEY in data and not isinstance(data[ENV_KEY], dict):
        raise ConfigError(
            f"`env` in {str(path)!r} must be a mapping of VARIABLE: value, got {data[ENV_KEY]!r}."
        )
    for name, value in (data.get(ENV_KEY) or {}).items():
        if isinstance(value, (list, dict)) or value is None:
            raise ConfigError(
                f"`env` variable {name!r} in {str(path)!r} must be one text value, got {value!r} (an environment "
                "variable is a string; a list is not split). Write it as one string, e.g. 'rdpo,simpo'."
            )
    return data


def unknown_key_message(key: str, known: Sequence[str], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    line = line_only_hint(key)
    if line:
        return f"Unknown setting {key!r} {where}.{line}"
    return f"Unknown setting {key!r} {where}.{hint} Fix or remove it; `trl-conservative run --help` lists them all."


def split_config_flag(argv: Sequence[str]) -> tuple[Path | None, list[str]]:
    """Take `--config PATH` (or `--config=PATH`) out of the arguments."""
    rest: list[str] = []
    config: Path | None = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError("--config needs a path: `trl-conservative run --config my_run.yaml`.")
            config = resolve_config(args[i + 1])  # a path, or builtin:NAME for a shipped recipe
            i += 2
            continue
        if arg.startswith("--config="):
            config = resolve_config(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return config, rest


def parse_run_args(argv: Sequence[str]) -> RunSpec:
    """Parse `trl-conservative run` arguments; without `--config` the embedded default YAML is the base.

    The YAML's `env:` mapping is exported to `os.environ` for the run, and only when every setting parsed.
    """
    config_path, rest = split_config_flag(argv)
    config_path = config_path or DEFAULT_CONFIG
    config = load_yaml(config_path)
    parser = build_parser()
    dests = sorted({a.dest for a in parser._actions if a.dest != "help"})
    options = {s for a in parser._actions for s in a.option_strings}
    notes = older_names(config, rest, dests, where=str(config_path), given=config_path != DEFAULT_CONFIG)
    for key in config:
        if key != ENV_KEY and key not in dests:
            raise ConfigError(unknown_key_message(str(key), dests, f"in {str(config_path)!r}"))
    check_config_types({k: v for k, v in config.items() if k != ENV_KEY}, repr(str(config_path)))
    for arg in rest:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            if flag not in options:
                raise ConfigError(unknown_key_message(flag[2:], dests, "on the command line"))
        elif arg.startswith("-") and arg not in options and not _is_number(arg):
            raise ConfigError(f"Unknown option {arg!r}. Settings are given as --name value.")
    rest = _join_negative_numbers(rest)
    env = {str(name): str(value) for name, value in (config.pop(ENV_KEY, None) or {}).items()}
    with _environment_kept_on_success(env):
        spec = _parse(parser, config, rest, config_path=config_path, notes=notes)
    return spec


def _parse(
    parser: _Parser, config: dict[str, Any], rest: list[str], *, config_path: Path, notes: list[str]
) -> RunSpec:
    parser.set_defaults_with_config(**config)
    parsed = vars(parser.parse_known_args(args=rest)[0])
    check_ranges(parsed)  # before the dataclasses' own, vaguer checks
    check_loss_weights_count(parsed)
    try:
        script, training, model = parser.parse_into_dataclasses(rest)
    except (ValueError, TypeError, OverflowError, OSError, ImportError) as exc:
        # transformers', TRL's and PEFT's own checks of the values (__post_init__): `logging_steps: .inf` is an
        # OverflowError there, a missing `deepspeed` file an OSError. Ours are ConfigErrors; anything else of ours
        # is a bug, and keeps its traceback.
        if isinstance(exc, ConfigError) or raised_here(exc):
            raise
        detail = one_line(str(exc)) or type(exc).__name__
        raise ConfigError(f"Invalid setting: {detail}") from None
    if not model.model_name_or_path:
        raise ConfigError(
            "model_name_or_path is not set. Give a local model folder or a hub id in the config."
        )
    if not script.dataset_name:
        raise ConfigError(
            "dataset_name is not set. Give a hub id, a local JSON/JSONL/parquet file or a dataset folder."
        )
    spec = RunSpec(script=script, training=training, model=model, config_path=config_path, notes=notes)
    check_settings(spec)  # ranges and combinations of every setting, before anything is written or loaded
    return spec


@contextlib.contextmanager
def _environment_kept_on_success(env: dict[str, str]) -> Iterator[None]:
    """The YAML's `env:` mapping in `os.environ` while the settings are parsed, kept only if parsing succeeds.

    The settings' own checks read it (`TRL_CONSERVATIVE_DISABLE_PLUGINS` decides which losses exist;
    `CUDA_VISIBLE_DEVICES` which devices transformers sees). A failed parse leaves `os.environ` as it found it, the
    variables transformers' `TrainingArguments` exports for accelerate included, and the loss registry unbuilt if
    the mapping changed which plugins are blocked.
    """
    from trl_conservative.registry.loading import DISABLE_ENV
    from trl_conservative.registry.registry import reset_registry

    saved = dict(os.environ)
    blocks = DISABLE_ENV in env and env[DISABLE_ENV] != saved.get(DISABLE_ENV)
    os.environ.update(env)
    if blocks:
        reset_registry()  # built under the previous block list, if at all
    try:
        yield
    except BaseException:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update({k: v for k, v in saved.items() if os.environ.get(k) != v})
        if blocks:
            reset_registry()
        raise


def one_line(message: str) -> str:
    return " ".join(message.split())


def _join_negative_numbers(args: list[str]) -> list[str]:
    """`--learning_rate -1e-5` as `--learning_rate=-1e-5`: argparse takes "-1e-5" for an option, not a value."""
    joined: list[str] = []
    for arg in args:
        previous = joined[-1] if joined else ""
        if arg.startswith("-") and _is_number(arg) and previous.startswith("--") and "=" not in previous:
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
