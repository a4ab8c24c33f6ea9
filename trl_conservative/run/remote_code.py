"""The remote-code policy: a model's own Python code runs only when the user passed `--trust_remote_code true`.

`remote_code_allowed` reads the one setting (where each TRL line keeps it); `custom_code_problem` refuses, before
any weights load, a local model folder that can only be loaded by running its code; `remote_code_error` turns
transformers' own refusal into the same one line.
"""

from __future__ import annotations

from typing import Any

from trl_conservative.errors import ConfigError

__all__ = ["custom_code_problem", "remote_code_allowed", "remote_code_error"]


def remote_code_allowed(spec: Any) -> bool:
    """`trust_remote_code`: a `DPOConfig` field on TRL 1.16 (transformers 5), a `ModelConfig` one on TRL 0.2x."""
    value = getattr(spec.training, "trust_remote_code", None)
    if value is None:
        value = getattr(spec.model, "trust_remote_code", False)
    return bool(value)


def custom_code_problem(model_path: str) -> ConfigError | None:
    """The refusal for a local model folder that can only be loaded by running its own code, else None.

    That is a `config.json` with an `auto_map` and a `model_type` transformers does not know (a known type is
    loaded with transformers' own classes, and the folder's code is ignored).
    """
    import json
    from pathlib import Path

    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a hub id, or no readable config: transformers decides (and refuses without the flag)
    if isinstance(config, dict) and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        return remote_code_error(model_path, ValueError("trust_remote_code"))
    return None


def remote_code_error(model: str, exc: Exception) -> ConfigError | None:
    """A one-line `ConfigError` for transformers' "custom code ... trust_remote_code" refusal, else None."""
    if "trust_remote_code" not in str(exc):
        return None
    return ConfigError(
        f"Model {model!r} ships its own Python code (auto_map in config.json), which is not run unless you pass "
        "--trust_remote_code true. Pass it only for code you have read and trust, or use a model without custom code."
    )
