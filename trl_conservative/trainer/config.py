"""`ConservativeDPOConfig`: TRL's `DPOConfig` plus our fields, checked before any model loads."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.kl.settings import (
    KL_CHUNK_SIZE_DEFAULT,
    KL_EXACT_STEPS_DEFAULT,
    KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT,
    KL_SEQUENCE_PROMPTS_DEFAULT,
    kl_settings,
)
from trl_conservative.losses.plan import LossPlan, check_loss_weights, resolve_losses
from trl_conservative.registry.registry import get_registry

from .trl_compat import DPOConfig

__all__ = ["LOSS_FIELDS", "ConservativeDPOConfig", "loss_plan"]

# Every field `resolve_losses` reads: a plan kept on a config is reused while these (and the registry) are unchanged.
# tests/test_config.py checks that `resolve_losses` reads no other attribute of a config.
LOSS_FIELDS = (
    "beta",
    "label_smoothing",
    "loss_type",
    "loss_weights",
    "loss_params",
    "ld_alpha",
    "f_divergence_type",
    "use_weighting",
    "use_liger_loss",
    "use_liger_kernel",
)
_KEPT = "_kept_loss_plan"  # (the loss fields' values, the registry, the plan), in a ConservativeDPOConfig's __dict__


def loss_plan(args: Any) -> LossPlan:
    """The loss plan of `args` (`resolve_losses`), resolved once per config.

    A `ConservativeDPOConfig` resolves it when it is built and keeps it: every later reader (the run's settings
    check, its identity and report, the trainer, the KL checks) gets that plan while the config's loss settings
    and the loss registry are as they were, and a fresh one after either changed. Any other config is resolved
    on each call.
    """
    values = tuple(copy.deepcopy(getattr(args, name, None)) for name in LOSS_FIELDS)
    kept = vars(args).get(_KEPT) if isinstance(args, ConservativeDPOConfig) else None
    if kept is not None and kept[0] == values and kept[1] is get_registry():
        plan: LossPlan = kept[2]
        return plan
    plan = resolve_losses(args)
    if isinstance(args, ConservativeDPOConfig):
        vars(args)[_KEPT] = (values, get_registry(), plan)
    return plan


@dataclass
class ConservativeDPOConfig(DPOConfig):
    r"""
    Configuration for [`ConservativeDPOTrainer`]: every field of TRL's [`~trl.DPOConfig`], plus the ones below.

    The loss settings (`loss_type`, `beta`, `label_smoothing`, `loss_weights`, `loss_params`) are checked when the
    config is built, so a typo fails before any model loads. `ConservativeDPOTrainer` checks every other setting
    when it is built, before any weights load, with the same lines as `trl-conservative run`
    (`trainer/validation.py`).

    Parameters:
        loss_params (`dict[str, Any]` or `str`, *optional*):
            Options of the selected losses, checked against what each loss declares (see
            `trl-conservative losses`). A JSON string is accepted, for the command line.
        kl_exact_steps (`int`, *optional*, defaults to `10`):
            Log `kl/exact` (and `kl/exact_chosen`, `kl/exact_rejected`), the exact full-vocabulary token
            KL(policy || reference) at the dataset's completion contexts, on every this many optimizer steps (the
            last step of each window, so a log at step N describes the policy of step N) and on every evaluation
            batch; `0` turns it off.
        kl_chunk_size (`int`, *optional*, defaults to `256`):
            Completion tokens projected through the LM heads at a time for `kl/exact`; its extra peak memory is
            about 3 x kl_chunk_size x vocabulary size x 4 bytes.
        kl_drift (`bool`, *optional*, defaults to `True`):
            Log the log-ratio drift signals on dataset tokens every step: `logratio/chosen`, `logratio/rejected`
            (mean sequence log-ratio log pi(y|x) - log pi_ref(y|x)) and their per-token means. They are not KLs
            (the tokens are not sampled from the policy) and can be negative.
        kl_sequence_prompts (`int`, *optional*, defaults to `8`):
            At each evaluation, sample completions from the policy for the first this many distinct prompts of the
            evaluation set and log `eval_kl/sequence`, the sequence KL(policy || reference) in nats per sequence,
            with `eval_sampled/kl_stderr`, `eval_sampled/truncated` and `eval_sampled/length`; `0` turns it off.
        kl_sequence_max_new_tokens (`int`, *optional*, defaults to `128`):
            Length limit of each sampled completion.
        kl_sequence_samples_per_prompt (`int`, *optional*, defaults to `1`):
            Completions sampled per prompt.
        nan_guard (`bool`, *optional*, defaults to `True`):
            Stop training with `NonFiniteError` at the first NaN or infinite loss (before its optimizer step), and
            never save non-finite weights. Diagnostic metrics (`kl/*`, `logratio/*`) never stop training: a
            non-finite one is logged as it is and warned about once. `False` keeps transformers' behaviour (skip the
            loss in the logged average and go on).
        save_on_interrupt (`bool`, *optional*, defaults to `True`):
            On SIGINT (Ctrl-C) or SIGTERM during `train()`, save a checkpoint at the next step boundary, stop, and
            raise `TrainingInterrupted` naming it. `False` leaves the signals to Python (KeyboardInterrupt).
    """

    loss_params: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Options of the selected losses (a mapping, or a JSON object string on the command line), "
            "checked against the parameters each loss declares. List them with `trl-conservative losses`."
        },
    )

    kl_exact_steps: int = field(
        default=KL_EXACT_STEPS_DEFAULT,
        metadata={
            "help": "Log `kl/exact` (exact token KL(policy || reference) over the full vocabulary, at the dataset's "
            "chosen and rejected contexts) on every this many optimizer steps and every evaluation batch; 0 = off."
        },
    )
    kl_chunk_size: int = field(
        default=KL_CHUNK_SIZE_DEFAULT,
        metadata={
            "help": "Completion tokens projected through the LM heads at a time when computing `kl/exact`."
        },
    )
    kl_drift: bool = field(
        default=True,
        metadata={
            "help": "Log the log-ratio drift signals `logratio/chosen|rejected` (per sequence and per token) every "
            "step (almost free; not KLs)."
        },
    )
    kl_sequence_prompts: int = field(
        default=KL_SEQUENCE_PROMPTS_DEFAULT,
        metadata={
            "help": "At each evaluation, log `eval_kl/sequence`: the sequence KL(policy || reference) on completions "
            "sampled from the policy for this many evaluation prompts; 0 = off."
        },
    )
    kl_sequence_max_new_tokens: int = field(
        default=KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT,
        metadata={"help": "Length limit of each completion sampled for `eval_kl/sequence`."},
    )
    kl_sequence_samples_per_prompt: int = field(
        default=1,
        metadata={"help": "Completions sampled per prompt for `eval_kl/sequence`."},
    )
    nan_guard: bool = field(
        default=True,
        metadata={
            "help": "Stop at the first NaN/inf loss, naming the step, and never save non-finite weights (diagnostic "
            "metrics never stop training); false keeps transformers' skip-and-continue behaviour."
        },
    )
    save_on_interrupt: bool = field(
        default=True,
        metadata={
            "help": "On SIGINT/SIGTERM during training, save a checkpoint at the next step boundary, print how to "
            "resume and stop (exit status 130/143 from the CLI)."
        },
    )

    def __post_init__(self) -> None:
        kl_settings(self)
        if isinstance(self.loss_params, str):
            try:
                parsed = json.loads(self.loss_params)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"loss_params must be a mapping or a JSON object string, got {self.loss_params!r} ({exc}). "
                    "Example: --loss_params '{\"gamma\": 0.5}'."
                ) from None
            self.loss_params = parsed
        if self.loss_params is not None and not isinstance(self.loss_params, dict):
            raise ConfigError(
                f"loss_params must be a mapping of option names to values, got {self.loss_params!r}."
            )
        # Before TRL's own count check, which words it differently by release: one line on every TRL and door.
        check_loss_weights(self.loss_weights, self.loss_type)
        try:
            super().__post_init__()  # type: ignore[no-untyped-call]
            loss_plan(self)  # checked now, and kept for the config's readers
        except (ValueError, TypeError, OverflowError):  # ConfigError is a ValueError
            # Name the first problem in `trl-conservative run`'s order and words: its ranges come first (a value
            # TrainingArguments refuses in its own words, an ld_alpha out of range before ld_alpha with cdpo).
            from .validation import check_values

            try:
                check_values(self)
            except ConfigError as problem:
                raise problem from None
            raise

    def __getstate__(self) -> dict[str, Any]:
        # The kept loss plan holds read-only mappings, which do not pickle (training_args.bin); a copy resolves anew.
        state = dict(self.__dict__)
        state.pop(_KEPT, None)
        return state
