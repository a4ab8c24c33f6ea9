"""Which KL measures a config logs in its setup, known before any weights load, and the check that a KL monitor
watches one of them (`check_monitor_metric`), shared by `trl-conservative run` and `ConservativeDPOTrainer`.

`unlogged_kl` says from the settings what `KLLoggingTrainer._set_up_kl_exact`, `_sequence_kl_unavailable` and
the adapters' `_drift_limits` find once the trainer is built, in the same words; reasons that depend on the model
itself (an encoder-decoder model, a backbone without `base_model_prefix`) are left to them.
"""

from __future__ import annotations

import difflib
from typing import Any

from trl_conservative.errors import ConfigError
from trl_conservative.kl.monitor import AUTO, auto_metric
from trl_conservative.kl.settings import kl_settings
from trl_conservative.metric_names import (
    EXACT_METRICS,
    KL_EXACT,
    KL_SEQUENCE,
    LOGRATIO_METRICS,
    SAMPLED_METRICS,
    TRL_METRICS,
    logged_metric_names,
)
from trl_conservative.training_args import evaluates

from .config import loss_plan
from .trl_compat import TRL_STACK

__all__ = ["LOGRATIO", "check_monitor_metric", "kl_metric_choices", "unlogged_kl"]

LOGRATIO = "logratio/*"  # the key of the log-ratio drift signals in `unlogged_kl`
_REFERENCE_FREE = "every selected loss is reference-free, so no reference model is loaded"


def unlogged_kl(
    args: Any, *, reference_free: bool, ref_model: bool = False, peft: bool = False
) -> dict[str, str]:
    """Why each KL measure `args` turns on is not logged in this setup: keys `kl/exact`, `kl/sequence`, `LOGRATIO`.

    `reference_free`: every selected loss is reference-free; `ref_model`: a reference model is passed to the
    trainer; `peft`: the policy is a PEFT model (its reference is the model with the adapter disabled).
    """
    settings = kl_settings(args)
    on = {
        KL_EXACT: settings.exact_steps > 0,
        KL_SEQUENCE: settings.sequence_prompts > 0,
        LOGRATIO: settings.drift,
    }
    if reference_free:
        return {name: _REFERENCE_FREE for name, wanted in on.items() if wanted}
    found: dict[str, str] = {}
    precompute = bool(getattr(args, "precompute_ref_log_probs", False))
    no_reference_model = precompute and not ref_model and not peft
    if on[KL_EXACT]:
        if no_reference_model:
            found[KL_EXACT] = (
                "precompute_ref_log_probs=True without a ref_model keeps only the reference's sequence log-prob "
                "sums, not its token distributions"
            )
        elif TRL_STACK == "dpo_loss" and getattr(args, "padding_free", False):
            found[KL_EXACT] = (
                "padding_free=True flattens the batch, which the exact token KL does not unflatten on TRL 0.2x"
            )
    if on[KL_SEQUENCE]:
        if no_reference_model:
            found[KL_SEQUENCE] = (
                "precompute_ref_log_probs=True without a ref_model keeps no reference model to sample against"
            )
        elif TRL_STACK == "dpo_loss" and peft and getattr(args, "ref_adapter_name", None):
            found[KL_SEQUENCE] = (
                "ref_adapter_name makes the reference a second adapter, which the sampler does not switch to"
            )
    if on[LOGRATIO] and getattr(args, "ld_alpha", None) is not None:
        if TRL_STACK == "dpo_loss":
            found[LOGRATIO] = "TRL 0.2x weights the policy's sequence log-probs by ld_alpha"
        elif precompute:
            found[LOGRATIO] = "the precomputed reference sums are weighted by ld_alpha"
    return found


def _missing(args: Any, ref_model: bool, peft: bool) -> dict[str, str]:
    plan = loss_plan(args)
    return unlogged_kl(args, reference_free=not plan.needs_reference, ref_model=ref_model, peft=peft)


def _logged(args: Any, missing: dict[str, str]) -> list[str]:
    settings = kl_settings(args)
    kl = logged_metric_names(
        exact=settings.exact_steps > 0 and KL_EXACT not in missing,
        logratio=settings.drift and LOGRATIO not in missing,
        sequence=settings.sequence_prompts > 0 and KL_SEQUENCE not in missing,
        evaluates=evaluates(args),
    )
    trl = set(TRL_METRICS) | ({f"eval_{m}" for m in TRL_METRICS} if evaluates(args) else set())
    return [*sorted(kl), *sorted(trl)]


def kl_metric_choices(args: Any, *, ref_model: bool = False, peft: bool = False) -> list[str]:
    """The metric names a KL monitor may watch in this run: what it logs, and `auto` when that is one of them."""
    logged = _logged(args, _missing(args, ref_model, peft))
    return ([AUTO] if auto_metric(args) in logged else []) + logged


def _why_not_logged(name: str, args: Any, missing: dict[str, str]) -> str | None:
    """Why the KL-family metric `name` is not logged by this run; None for a name outside the KL family."""
    base, at_evaluation = name.removeprefix("eval_"), name.startswith("eval_")
    families = {KL_EXACT: EXACT_METRICS, KL_SEQUENCE: SAMPLED_METRICS, LOGRATIO: LOGRATIO_METRICS}
    family = next((key for key, names in families.items() if base in names), None)
    if family is None:
        return None
    if family == KL_SEQUENCE and not at_evaluation:
        return f"{base} is measured at evaluations only, logged as eval_{base}"
    if at_evaluation and not evaluates(args):
        return "the run does not evaluate: eval_strategy is 'no'"
    if family in missing:
        return missing[family]
    settings = kl_settings(args)
    off = {
        KL_EXACT: settings.exact_steps == 0 and "kl_exact_steps is 0",
        KL_SEQUENCE: settings.sequence_prompts == 0 and "kl_sequence_prompts is 0",
        LOGRATIO: not settings.drift and "kl_drift is false",
    }
    return off[family] or None


def check_monitor_metric(
    metric: str,
    args: Any,
    *,
    setting: str,
    ref_model: bool = False,
    peft: bool = False,
    any_name: bool = False,
) -> str:
    """The metric a KL monitor on `metric` watches (`auto` resolved); `ConfigError` when this run never logs it.

    `setting` names the option in the message (`kl_monitor_metric`, `KLMonitorCallback metric`). With `any_name`,
    a name outside the KL family (`kl/*`, `logratio/*`, `sampled/*`) passes: a Python trainer may log metrics of its
    own, which `KLMonitorCallback(strict=True)` checks at the first log.
    """
    missing = _missing(args, ref_model, peft)
    logged = _logged(args, missing)
    watched = auto_metric(args) if metric == AUTO else metric
    if watched in logged:
        return watched
    reason = _why_not_logged(watched, args, missing)
    choices = ([AUTO] if auto_metric(args) in logged else []) + logged
    listed = f"This run logs: {', '.join(choices)}."
    if metric == AUTO:
        raise ConfigError(
            f"{setting} 'auto' watches {watched!r} in this run, which it does not log ({reason}), so the KL monitor "
            f"would never fire. Name a metric it logs, or change the setting named. {listed}"
        )
    if reason is not None:
        raise ConfigError(
            f"{setting} {metric!r} is not logged by this run ({reason}), so the KL monitor would never fire. {listed}"
        )
    if any_name:
        return watched
    close = difflib.get_close_matches(str(metric), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{setting} {metric!r} is not logged by this run, so the KL monitor would never fire.{hint} {listed}"
    )
