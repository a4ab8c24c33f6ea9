"""The public surface: every import the README, the plugin author guide and the examples document keeps working.

Internal modules may move; these names may not (or only with a deprecation). Each subpackage states its exports.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pluggy
import pytest

import trl_conservative

# module -> names documented as importable from it
DOCUMENTED = {
    "trl_conservative": [
        "ConservativeDPOConfig",
        "ConservativeDPOTrainer",
        "KLMonitorCallback",
        "Loss",
        "LossInputs",
        "LossOutput",
        "LossParam",
        "LossParamError",
        "ConfigError",
        "NonFiniteError",
        "TrainingInterrupted",
        "available_losses",
        "get_loss",
        "hookimpl",
        "loss_info",
    ],
    "trl_conservative.kl": [
        "SequenceKL",
        "sampled_sequence_kl",
        "exact_token_kl_chunked",
        "logratio_sums",
        "KL_EXACT",
        "KL_SEQUENCE",
    ],
    "trl_conservative.model_card": ["CardData", "render_model_card", "card_data_from_trainer"],
    "trl_conservative.testing": [
        "KnownPoint",
        "check_loss",
        "conformance_checks",
        "make_inputs",
        "train_two_steps",
        "tiny_config",
    ],
    "trl_conservative.registry": ["get_registry", "reset_registry", "registered_plugins", "hookimpl"],
    "trl_conservative.losses": ["conservative_sigmoid_loss", "ipo_loss", "LossInputs"],
    "trl_conservative.demo.embedded": ["builtin_dataset_files", "builtin_model_path"],
    "trl_conservative.kl.monitor": ["KLMonitorCallback"],
    "trl_conservative.cli": ["main"],
}



def _subclass(*bases: str) -> Callable[[Any], bool]:
    def check(obj: Any) -> bool:
        return isinstance(obj, type) and all(issubclass(obj, _resolve(base)) for base in bases)

    return check


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _function(*parameters: str) -> Callable[[Any], bool]:
    """A function whose leading parameters are `parameters` (the documented call)."""

    def check(obj: Any) -> bool:
        names = list(inspect.signature(obj).parameters)
        return inspect.isfunction(obj) and names[: len(parameters)] == list(parameters)

    return check


# What each documented name is said to be: its kind, and what the README and the guides promise of it.
CLAIMS: dict[str, Callable[[Any], bool]] = {
    "ConservativeDPOConfig": _subclass("trl.DPOConfig"),
    "ConservativeDPOTrainer": _subclass("trl.DPOTrainer"),
    "KLMonitorCallback": _subclass("transformers.TrainerCallback"),
    "Loss": lambda obj: getattr(obj, "_is_protocol", False),
    "LossInputs": _subclass(),
    "LossOutput": _subclass(),
    "LossParam": _subclass(),
    "LossParamError": _subclass("trl_conservative.errors.ConfigError"),
    "ConfigError": _subclass("builtins.ValueError", "trl_conservative.errors.TrlConservativeError"),
    "NonFiniteError": _subclass("trl_conservative.errors.TrainingHalted"),
    "TrainingInterrupted": _subclass("trl_conservative.errors.TrainingHalted"),
    "available_losses": _function(),
    "get_loss": _function("name"),
    "loss_info": _function("name"),
    "hookimpl": lambda obj: isinstance(obj, pluggy.HookimplMarker) and obj.project_name == "trl_conservative",
    "SequenceKL": _subclass(),
    "sampled_sequence_kl": _function("policy", "reference"),
    "exact_token_kl_chunked": _function(),
    "logratio_sums": _function(),
    "KL_EXACT": lambda obj: obj == "kl/exact",
    "KL_SEQUENCE": lambda obj: obj == "kl/sequence",
    "CardData": _subclass(),
    "render_model_card": _function("data"),
    "card_data_from_trainer": _function("trainer"),
    "KnownPoint": _subclass(),
    "check_loss": _function(),
    "conformance_checks": _function(),
    "make_inputs": _function(),
    "train_two_steps": _function(),
    "tiny_config": _function(),
    "get_registry": _function(),
    "reset_registry": _function(),
    "registered_plugins": _function(),
    "conservative_sigmoid_loss": _function("chosen_logratios", "rejected_logratios", "beta", "eps"),
    "ipo_loss": _function("chosen_logratios", "rejected_logratios", "chosen_lengths", "rejected_lengths", "beta"),
    "builtin_dataset_files": _function(),
    "builtin_model_path": _function(),
    "main": _function("argv"),
}


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_names_import(module: str) -> None:
    """Each documented name is the object it claims to be: its own name (not an alias of another), defined in the
    package where its `__module__` says (one object wherever it is imported from), of the documented kind."""
    mod = importlib.import_module(module)
    for name in DOCUMENTED[module]:
        obj = getattr(mod, name)
        assert CLAIMS[name](obj), f"{module}.{name} is {obj!r}"
        if isinstance(obj, type) or inspect.isfunction(obj):
            assert obj.__name__ == name, f"{module}.{name} is {obj.__module__}.{obj.__qualname__}"
            assert obj.__module__.startswith("trl_conservative."), f"{module}.{name}: {obj.__module__}"
            assert _resolve(f"{obj.__module__}.{obj.__qualname__}") is obj, f"{module}.{name}"
    if module == "trl_conservative":
        assert trl_conservative.hookimpl is _resolve("trl_conservative.registry.hookimpl")


def test_every_module_states_its_exports_and_they_exist() -> None:
    missing, broken = [], []
    for info in pkgutil.walk_packages(trl_conservative.__path__, "trl_conservative."):
        mod = importlib.import_module(info.name)
        exports = getattr(mod, "__all__", None)
        if exports is None:
            missing.append(info.name)
            continue
        broken += [f"{info.name}.{n}" for n in exports if not hasattr(mod, n) and not _lazy(mod, n)]
    assert not missing, f"modules without __all__: {missing}"
    assert not broken, f"__all__ names that do not exist: {broken}"


def _lazy(mod: object, name: str) -> bool:
    try:
        return getattr(mod, name) is not None
    except AttributeError:
        return False


def test_the_documented_module_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trl_conservative.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "run" in out and "losses" in out and "report" in out
