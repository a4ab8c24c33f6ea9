"""`trl-conservative env`: the versions and settings to paste into a bug report.

The same facts `trl env` gives (platform, Python, the libraries, accelerators, the default accelerate config), plus
ours: the package version, the TRL line in use (`trl_compat.TRL_STACK`, or why the installed TRL is refused), the
loss plugins installed (entry points) with their versions, and the cache folder. Nothing here fails on a broken
stack: a fact that cannot be read says why, since a broken stack is what a bug report is about.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

__all__ = ["environment_info", "format_environment"]

NOT_INSTALLED = "not installed"
# (label, distribution) as `trl env` lists them.
LIBRARIES = (
    ("TRL version", "trl"),
    ("PyTorch version", "torch"),
    ("Transformers version", "transformers"),
    ("Accelerate version", "accelerate"),
    ("Datasets version", "datasets"),
    ("HF Hub version", "huggingface_hub"),
    ("bitsandbytes version", "bitsandbytes"),
    ("DeepSpeed version", "deepspeed"),
    ("Liger-Kernel version", "liger_kernel"),
    ("PEFT version", "peft"),
    ("vLLM version", "vllm"),
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _accelerators() -> str:
    try:
        import torch
    except Exception as exc:  # a broken torch is a fact for the report
        return f"unknown ({type(exc).__name__}: {exc})"
    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if torch.backends.mps.is_available():
        return "MPS"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return ", ".join(xpu.get_device_name(i) for i in range(xpu.device_count()))
    return "cpu"


def _accelerate_config() -> str:
    try:
        from accelerate.commands.config import default_config_file, load_config_from_file
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    if not os.path.isfile(default_config_file):
        return "not found"
    settings: dict[str, Any] = load_config_from_file(default_config_file).to_dict()
    return "".join(f"\n  - {key}: {value}" for key, value in settings.items())


def _trl_line() -> str:
    try:
        from trl_conservative.trainer.trl_compat import SUPPORTED_TRL_TEXT, TRL_STACK
    except Exception as exc:  # UnsupportedTRLError says which TRL and transformers to install
        return f"refused: {' '.join(str(exc).split())}"
    line = "TRL 1.16, fused LM head" if TRL_STACK == "fused_head" else "TRL 0.23-0.28, dpo_loss"
    return f"{TRL_STACK} ({line}; supported: TRL {SUPPORTED_TRL_TEXT})"


def _plugins() -> str:
    from trl_conservative.registry.hookspecs import PROJECT_NAME
    from trl_conservative.registry.loading import DISABLE_ENV, blocks, disabled_plugins

    blocked = disabled_plugins()
    lines = []
    for ep in sorted(importlib.metadata.entry_points(group=PROJECT_NAME), key=lambda e: e.name):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
        off = f", disabled by {DISABLE_ENV}" if any(blocks(name, ep) for name in blocked) else ""
        lines.append(f"\n  - {ep.name}: {dist} ({ep.value}{off})")
    return "".join(lines) or "none"


def environment_info() -> dict[str, str]:
    """Label -> value, in the order `trl env` prints them, then trl-conservative's own."""
    from trl_conservative import __version__
    from trl_conservative.demo.embedded import CACHE_ENV, cache_dir

    info = {"Platform": platform.platform(), "Python version": platform.python_version()}
    for label, dist in LIBRARIES:
        info[label] = _version(dist)
        if dist == "torch":
            info["accelerator(s)"] = _accelerators()
        if dist == "accelerate":
            info["Accelerate config"] = _accelerate_config()
    info["trl-conservative version"] = __version__
    info["TRL line in use"] = _trl_line()
    info["Loss plugins"] = _plugins()
    info["Cache folder"] = f"{cache_dir()} (${CACHE_ENV})"
    return info


def format_environment(info: dict[str, str]) -> str:
    """The text `trl-conservative env` prints."""
    body = "\n".join(f"- {label}:{'' if value.startswith(chr(10)) else ' '}{value}" for label, value in info.items())
    return f"\nCopy-paste the following information when reporting an issue:\n\n{body}\n"
