"""The one door to TRL's private API. Everything trl-conservative needs from TRL beyond `trl`'s public exports.

Two TRL lines are supported, each through its own override point (its adapter module in this subpackage):

    "fused_head"  TRL 1.16: the loss is in the private `DPOTrainer._compute_loss` (policy and reference through the
                  fused LM head, per-token log-probs in `.log_probs`); adapter: `fused_head.py`.
    "dpo_loss"    TRL 0.23-0.28 (the stack of the reference recipe): the loss is `DPOTrainer.dpo_loss`, called once
                  per `loss_type` entry with sequence log-prob sums; adapter: `dpo_loss_adapter.py`.

TRL 0.29-1.14 compute the loss from full logits with no fused LM head and no `dpo_loss`, and TRL 1.15's fused head
needs Triton: they are not supported. Importing this module checks the installed TRL first and raises
`UnsupportedTRLError` (one line) outside `SUPPORTED_TRL`, before any private TRL module is imported; every module of
this subpackage reaches TRL through here.

Elsewhere in the package TRL is imported only through its public names (`from trl import DPOConfig, ...`); a ruff
banned-api rule forbids `trl.trainer` and `trl.scripts` imports outside `trl_conservative/trainer/`.
`tests/test_trl_contract.py` pins the shape relied on here and fails loudly when the installed TRL changes it.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from trl_conservative.errors import UnsupportedTRLError

__all__ = [
    "NEWEST_DPO_LOSS_STACK",
    "OLDEST_TESTED_TRL",
    "SEED_STACK_TRL",
    "STACKS",
    "SUPPORTED_TRL",
    "SUPPORTED_TRL_TEXT",
    "TRANSFORMERS_FOR",
    "TRL_STACK",
    "Stack",
    "DPOConfig",
    "DPOTrainer",
    "check_trl_version",
    "stack_of",
    "stack_problem",
    "is_peft_model",
    "load_trained_weights",
    "trains_peft",
    "tracker_urls",
    "trl_losses_reading_label_smoothing",
    "trl_native_losses",
    "unsupported_trl_message",
]

Stack = Literal["fused_head", "dpo_loss"]

# The TRL releases each override point holds on. CI tests the oldest and the newest of each line: OLDEST_TESTED_TRL
# (the fused-head line's oldest; the main venv takes its newest), SEED_STACK_TRL (the dpo_loss line's oldest, the
# reference recipe's) and NEWEST_DPO_LOSS_STACK (that line's last release, with the last transformers 4).
STACKS: dict[Stack, str] = {"dpo_loss": ">=0.23,<0.29", "fused_head": ">=1.16,<1.17"}
# The same as one requirement (pyproject.toml declares exactly this; tests/test_trl_contract.py checks they agree).
SUPPORTED_TRL = ">=0.23,<1.17," + ",".join(["!=0.29.*"] + [f"!=1.{minor}.*" for minor in range(16)])
SUPPORTED_TRL_TEXT = "0.23-0.28 or 1.16"
OLDEST_TESTED_TRL = "1.16.0"
SEED_STACK_TRL = "0.23.0"
NEWEST_DPO_LOSS_STACK = ("0.28.0", "4.57.6")  # (trl, transformers)
# transformers releases each line works with. TRL 1.16 asks for transformers>=4.56.2 and runs on all of them (the
# settings transformers < 5.23 knows under older names, `activation_checkpointing` first, are read so by
# run/renamed.py); TRL 0.23 needs 4.56.1, and TRL 0.2x cannot import beside transformers 5 (its `is_*_available()`
# checks read transformers 5's `(bool, version)` tuples as true and import optional packages that are not there).
# pyproject.toml declares their union, with transformers < 5 where TRL 1.16 cannot install (Python < 3.11);
# scripts/check_resolver.py checks what pip resolves from it against `stack_problem`.
TRANSFORMERS_FOR: dict[Stack, str] = {"dpo_loss": ">=4.56.1,<5", "fused_head": ">=4.56.2"}


def stack_of(installed: str) -> Stack | None:
    """The override point TRL version `installed` has, or None when it is not supported."""
    try:
        version = Version(installed)
    except InvalidVersion:
        return None
    for stack, spec in STACKS.items():
        if version in SpecifierSet(spec, prereleases=True):
            return stack
    return None


def unsupported_trl_message(installed: str) -> str | None:
    """The one-line error for TRL version `installed`, or None when it is supported."""
    if stack_of(installed) is not None:
        return None
    return (
        f"TRL {installed} is installed, but trl-conservative supports TRL {SUPPORTED_TRL_TEXT} only "
        f"({STACKS['dpo_loss']} or {STACKS['fused_head']}). "
        f'Fix: pip install "trl{STACKS["fused_head"]}" (or "trl{STACKS["dpo_loss"]}" to stay on TRL 0.2x).'
    )


def stack_problem(trl_version: str, transformers_version: str) -> str | None:
    """Why trl-conservative refuses TRL `trl_version` beside transformers `transformers_version` (one line, with the
    fix), or None when it runs there. Pure: scripts/check_resolver.py feeds it the versions pip resolves."""
    message = unsupported_trl_message(trl_version)
    if message is not None:
        return message
    stack = stack_of(trl_version)
    assert stack is not None
    needed = TRANSFORMERS_FOR[stack]
    wanted = needed if "<" in needed else f"{needed},<6"
    try:
        transformers = Version(transformers_version)
    except InvalidVersion:
        transformers = None
    if transformers is None or transformers not in SpecifierSet(needed, prereleases=True):
        return (
            f"TRL {trl_version} is installed with transformers {transformers_version}, but trl-conservative "
            f'needs transformers{needed} beside it. Fix: pip install "transformers{wanted}".'
        )
    return None


def check_trl_version() -> Stack:
    """The installed TRL's stack; raise `UnsupportedTRLError` when it is not supported."""
    import transformers
    import trl

    installed = str(getattr(trl, "__version__", "unknown"))
    message = stack_problem(installed, str(transformers.__version__))
    if message is not None:
        raise UnsupportedTRLError(message)
    stack = stack_of(installed)
    assert stack is not None
    return stack


# Before any private TRL module is imported: outside the range they may not even import.
TRL_STACK: Stack = check_trl_version()

from trl.trainer.dpo_config import DPOConfig  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402


@functools.cache
def _loss_source() -> str:
    """The source of TRL's own loss code: TRL 0.2x's `dpo_loss`, TRL 1.16's `_compute_loss`."""
    return inspect.getsource(getattr(DPOTrainer, "dpo_loss" if TRL_STACK == "dpo_loss" else "_compute_loss"))


@functools.cache
def trl_native_losses() -> frozenset[str]:
    """The loss names TRL's own loss code implements, read from its source (never a hand-kept list)."""
    return frozenset(re.findall(r'loss_type == "(\w+)"', _loss_source()))


@functools.cache
def trl_losses_reading_label_smoothing() -> frozenset[str]:
    """TRL's own loss names whose branch of its loss code reads `label_smoothing`, read from its source."""
    reading = set()
    for branch in re.split(r"(?=(?:el)?if loss_type == )", _loss_source()):  # the if/elif chain
        name = re.match(r'(?:el)?if loss_type == "(\w+)"', branch)
        if name and "label_smoothing" in branch:
            reading.add(name.group(1))
    return frozenset(reading)


def tracker_urls() -> dict[str, Any]:
    """The experiment-tracker links TRL's own model card shows (Comet, Trackio), None where not in use."""
    from trl.trainer import utils

    trackio = getattr(utils, "get_trackio_space_url", None)  # TRL >= 0.29
    return {"comet": utils.get_comet_experiment_url(), "trackio": trackio() if trackio is not None else None}


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a PEFT model (its reference is the model with the adapter disabled); False for a model
    name or None. The one PEFT test of the package (accelerate's, which TRL uses too)."""
    if model is None or isinstance(model, str):
        return False
    from accelerate.utils import is_peft_model as accelerate_is_peft_model

    return bool(accelerate_is_peft_model(model))


def trains_peft(bound: Mapping[str, Any]) -> bool:
    """Whether a trainer given these constructor arguments trains a PEFT model: a `peft_config`, or a `model`
    that is a PEFT model already."""
    return bound.get("peft_config") is not None or is_peft_model(bound.get("model"))


def load_trained_weights(trainer: Any, folder: str) -> None:
    """Load the weights saved in `folder` (a checkpoint or a saved model, in any layout transformers writes: one
    file, shards, a PEFT adapter, FSDP or DeepSpeed folders) into `trainer`'s model, as a resume does.

    transformers keeps this loader private (`Trainer._load_from_checkpoint`); tests/test_reliability_contract.py
    checks its signature.
    """
    trainer._load_from_checkpoint(folder)
