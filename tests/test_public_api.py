"""The public surface: every import the README, the plugin author guide and the examples document keeps working.

Internal modules may move; these names may not (or only with a deprecation). Each subpackage states its exports.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

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


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_names_import(module: str) -> None:
    mod = importlib.import_module(module)
    for name in DOCUMENTED[module]:
        assert getattr(mod, name, None) is not None, f"{module}.{name}"


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
