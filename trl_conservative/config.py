"""`ConservativeDPOConfig`: TRL's `DPOConfig` plus our fields, checked before any model loads."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from trl.trainer.dpo_config import DPOConfig

from .errors import ConfigError, LossParamError, UnknownLossError
from .plugins import LossInfo, get_registry

# TRL options its own `_compute_loss` applies to the sequence scores before the loss. Our losses receive raw
# summed log-probs, so they cannot honour these; with them, `sigmoid` at eps = 0 runs on TRL's own code.
_TRL_ONLY_OPTIONS = ("ld_alpha", "f_divergence_type", "use_weighting")


@dataclass(frozen=True)
class ResolvedLoss:
    """One entry of `loss_type`: its weight, and our loss (None when TRL computes it natively)."""

    name: str
    weight: float
    info: LossInfo | None
    params: Mapping[str, Any]


@dataclass(frozen=True)
class LossPlan:
    """How the trainer computes the loss: TRL's native terms and ours, in `loss_type` order."""

    entries: tuple[ResolvedLoss, ...]

    @property
    def native(self) -> tuple[ResolvedLoss, ...]:
        return tuple(e for e in self.entries if e.info is None)

    @property
    def custom(self) -> tuple[ResolvedLoss, ...]:
        return tuple(e for e in self.entries if e.info is not None)

    @property
    def needs_reference(self) -> bool:
        return bool(self.native) or any(e.info is not None and e.info.needs_reference for e in self.entries)

    def citations(self) -> list[str]:
        return [e.info.citation for e in self.custom if e.info is not None and e.info.citation]


def _uses_trl_only_options(args: Any) -> list[str]:
    used = []
    if getattr(args, "ld_alpha", None) is not None:
        used.append(f"ld_alpha={args.ld_alpha!r}")
    if getattr(args, "f_divergence_type", "reverse_kl") != "reverse_kl":
        used.append(f"f_divergence_type={args.f_divergence_type!r}")
    if getattr(args, "use_weighting", False):
        used.append("use_weighting=True")
    return used


def resolve_losses(args: Any) -> LossPlan:
    """Check the loss settings of a `DPOConfig` (or ours) and decide who computes each loss term.

    Raises `ConfigError` (a ValueError) naming the bad value and the fix. Runs before any weights load.
    """
    from .trainer import trl_native_losses

    beta = args.beta
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(beta) or beta <= 0:
        raise ConfigError(f"beta must be a finite number > 0, got {beta!r}. A usual value is 0.1.")
    eps = args.label_smoothing
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 <= eps < 0.5:
        raise ConfigError(
            f"label_smoothing (the cDPO label-flip rate eps) must lie in [0, 0.5), got {eps!r}. "
            "Use 0 for plain DPO, or your estimate of the fraction of flipped preference labels (e.g. 0.1)."
        )
    loss_types = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    if not loss_types:
        raise ConfigError("loss_type is empty; give at least one loss, e.g. loss_type='cdpo'.")
    weights = list(args.loss_weights) if args.loss_weights is not None else [1.0] * len(loss_types)
    if len(weights) != len(loss_types):
        raise ConfigError(
            f"loss_weights has {len(weights)} entries for {len(loss_types)} losses {loss_types}; "
            "give one weight per loss, or none for equal weights."
        )
    registry = get_registry()
    native_names = trl_native_losses()
    trl_only = _uses_trl_only_options(args)
    raw_params = dict(getattr(args, "loss_params", None) or {})
    entries: list[ResolvedLoss] = []
    accepted: dict[str, str] = {}
    for name, weight in zip(loss_types, weights, strict=True):
        if name in registry.losses:
            info = registry.losses[name]
            if trl_only and name == "sigmoid" and eps == 0:
                entries.append(
                    ResolvedLoss(name=name, weight=float(weight), info=None, params=MappingProxyType({}))
                )
                continue
            if trl_only:
                raise ConfigError(
                    f"{', '.join(trl_only)} is applied by TRL's own losses only and cannot be combined with "
                    f"loss {name!r}. Remove it, or use a TRL loss such as 'sigmoid' with label_smoothing=0."
                )
            params = _resolve_params(info, raw_params)
            for p in info.params:
                accepted[p.name] = name
            entries.append(ResolvedLoss(name=name, weight=float(weight), info=info, params=params))
        elif name in native_names:
            entries.append(
                ResolvedLoss(name=name, weight=float(weight), info=None, params=MappingProxyType({}))
            )
        else:
            raise UnknownLossError(
                registry.unknown_message(name, extra_valid=native_names) + " Fix loss_type."
            )
    unknown = sorted(set(raw_params) - set(accepted))
    if unknown:
        hint = (
            f"The selected losses accept: {', '.join(sorted(accepted))}."
            if accepted
            else f"None of the selected losses {loss_types} accepts parameters."
        )
        raise LossParamError(f"Unknown loss_params key(s) {', '.join(map(repr, unknown))}. {hint}")
    return LossPlan(entries=tuple(entries))


def _resolve_params(info: LossInfo, raw: Mapping[str, Any]) -> Mapping[str, Any]:
    values: dict[str, Any] = {}
    for param in info.params:
        if param.name not in raw:
            values[param.name] = param.default
            continue
        try:
            values[param.name] = param.coerce(raw[param.name])
        except TypeError as exc:
            raise LossParamError(
                f"loss_params[{param.name!r}] for loss {info.name!r}: {exc}. "
                f"Set it to a {param.type.__name__} ({param.help or 'see trl-conservative losses'})."
            ) from None
    return MappingProxyType(values)


# benchmarks/bench_kl.py (CPU, V = 32,000, hidden 256): `kl/exact` on every step costs +8.9% step time; with
# these defaults (every 10 steps, plus the log-ratio signals) the step time is 1.011x that with KL off. 256 tokens at
# V = 128,256 take ~376 MiB of float32 logits (3 x chunk x V x 4 bytes), comparable to the 4096-token x
# 32,768-vocabulary tile (256 MiB in bf16) that TRL's own fused LM head allocates.
KL_EXACT_STEPS_DEFAULT = 10
KL_CHUNK_SIZE_DEFAULT = 256
# The sampled sequence KL at each evaluation (benchmarks/bench_kl.py, "sampled sequence KL"): 32 prompts x 128 new
# tokens, one sample each. Its cost is about two incremental decodes (policy and reference) of 32 x 128 tokens.
KL_SEQUENCE_PROMPTS_DEFAULT = 32
KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT = 128


@dataclass(frozen=True)
class KLSettings:
    """The KL monitoring settings of a config; a plain `DPOConfig` gets the defaults."""

    exact_steps: int = KL_EXACT_STEPS_DEFAULT
    chunk_size: int = KL_CHUNK_SIZE_DEFAULT
    drift: bool = True
    sequence_prompts: int = KL_SEQUENCE_PROMPTS_DEFAULT
    sequence_max_new_tokens: int = KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT
    sequence_samples: int = 1


def _int_setting(args: Any, name: str, default: int, low: int, advice: str) -> int:
    value = getattr(args, name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}. {advice}")
    return value


def kl_settings(args: Any) -> KLSettings:
    """Read and check the `kl_*` settings (defaults where `args` lacks them, e.g. a plain `DPOConfig`)."""
    drift = getattr(args, "kl_drift", True)
    if not isinstance(drift, bool):
        raise ConfigError(f"kl_drift must be True or False, got {drift!r}.")
    return KLSettings(
        exact_steps=_int_setting(
            args, "kl_exact_steps", KL_EXACT_STEPS_DEFAULT, 0,
            f"Use 0 to turn kl/exact off, or N to compute it every N optimizer steps (default {KL_EXACT_STEPS_DEFAULT}).",
        ),
        chunk_size=_int_setting(
            args, "kl_chunk_size", KL_CHUNK_SIZE_DEFAULT, 1,
            f"Tokens per chunk; lower it to save memory at large vocabularies (default {KL_CHUNK_SIZE_DEFAULT}).",
        ),
        drift=drift,
        sequence_prompts=_int_setting(
            args, "kl_sequence_prompts", KL_SEQUENCE_PROMPTS_DEFAULT, 0,
            f"Use 0 to turn the sampled sequence KL off (default {KL_SEQUENCE_PROMPTS_DEFAULT} eval prompts).",
        ),
        sequence_max_new_tokens=_int_setting(
            args, "kl_sequence_max_new_tokens", KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT, 1,
            f"The length limit of each sampled completion (default {KL_SEQUENCE_MAX_NEW_TOKENS_DEFAULT}).",
        ),
        sequence_samples=_int_setting(
            args, "kl_sequence_samples_per_prompt", 1, 1, "Completions sampled per prompt (default 1)."
        ),
    )


@dataclass
class ConservativeDPOConfig(DPOConfig):
    r"""
    Configuration for [`ConservativeDPOTrainer`]: every field of TRL's [`~trl.DPOConfig`], plus the ones below.

    The loss settings (`loss_type`, `beta`, `label_smoothing`, `loss_weights`, `loss_params`) are checked when the
    config is built, so a typo fails before any model loads.

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
        kl_sequence_prompts (`int`, *optional*, defaults to `32`):
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
        metadata={"help": "Completion tokens projected through the LM heads at a time when computing `kl/exact`."},
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
        super().__post_init__()  # type: ignore[no-untyped-call]
        resolve_losses(self)
