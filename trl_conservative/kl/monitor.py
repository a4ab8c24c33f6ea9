"""`KLMonitorCallback`: warn, or save and stop, when a logged KL metric stays above a threshold.

Works with any trainer that logs the metric: `ConservativeDPOTrainer`'s `kl/...` measures, or what stock
`trl.DPOTrainer` logs (`rewards/margins`, ...). By default (`metric="auto"`) it watches the sequence KL on the
policy's own samples, `eval_kl/sequence`, when the run evaluates, else the exact token KL `kl/exact`. The decision
is the pure method `decide`; `on_log` only applies it. A NaN or infinite value is a broken diagnostic, not a
measurement: it is skipped (warned about once), never a reason to stop. On stop the reason is kept in three places a report can read:
  - `state.log_history`: an entry `{"kl_monitor/stopped": reason, "step": step}` (and `trainer_state.json`);
  - `state.stateful_callbacks["KLMonitorCallback"]["attributes"]["reason"]` in the saved checkpoint;
  - the callback's `reason` attribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from transformers.trainer_callback import ExportableState, TrainerCallback, TrainerControl, TrainerState
from transformers.training_args import TrainingArguments
from transformers.utils import logging

from trl_conservative.errors import ConfigError
from trl_conservative.kl.settings import kl_settings
from trl_conservative.metric_names import (
    KL_EXACT,
    KL_SEQUENCE,
    LOSS,
    REWARDS_ACCURACIES,
    SAMPLED_KL_STDERR,
    SAMPLED_LENGTH,
    SAMPLED_TRUNCATED,
)
from trl_conservative.training_args import evaluates

__all__ = [
    "AUTO",
    "STOPPED_KEY",
    "Decision",
    "KLMonitorCallback",
    "auto_metric",
    "check_thresholds",
    "metric_bounds",
]

logger = logging.get_logger(__name__)

STOPPED_KEY = "kl_monitor/stopped"
AUTO = "auto"


def auto_metric(args: Any) -> str:
    """The metric `metric="auto"` watches: `eval_kl/sequence` when the run evaluates (`eval_on_start` alone
    counts) and samples, else `kl/exact`."""
    if evaluates(args) and kl_settings(args).sequence_prompts > 0:
        return f"eval_{KL_SEQUENCE}"
    return KL_EXACT


@dataclass(frozen=True)
class Decision:
    """What to do about one logged value, and the monitor's state after it.

    Attributes:
        action: "none", "warn" (log a warning, keep training), "stop" (save a checkpoint and stop) or "skip" (a
            non-finite value: no measurement, the state stays as it was; warned about once).
        breaches: consecutive logged values above `stop_above`, this one included.
        above_warn: whether this value is above `warn_above` (a warning is given once per crossing).
        message: the warning or the stop reason; None when there is nothing to say.
    """

    action: Literal["none", "warn", "stop", "skip"]
    breaches: int
    above_warn: bool
    message: str | None = None


def _check_threshold(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"KLMonitorCallback {name} must be a finite number or None, got {value!r}.")
    return float(value)


def metric_bounds(metric: str) -> tuple[float, float, str] | None:
    """(lowest, highest, what it is) for a metric whose values are bounded by what it measures, else None.

    A KL is never negative (`kl/*`, `kl/sequence`); shares lie in [0, 1]; a log-probability is never positive.
    The log-ratio drift signals (`logratio/*`), the rewards and the loss are not bounded: any finite threshold.
    """
    base = metric.removeprefix("eval_")
    if base.startswith("kl/"):
        return 0.0, math.inf, "a KL, which is never negative"
    if base in (SAMPLED_KL_STDERR, SAMPLED_LENGTH, "entropy"):
        return 0.0, math.inf, "never negative"
    if base in (SAMPLED_TRUNCATED, REWARDS_ACCURACIES, "mean_token_accuracy"):
        return 0.0, 1.0, "a share in [0, 1]"
    if base.startswith("logps/"):
        return -math.inf, 0.0, "a log-probability, which is never positive"
    return None


def check_thresholds(
    metric: str,
    warn_above: float | None,
    stop_above: float | None,
    *,
    names: tuple[str, str] = ("warn_above", "stop_above"),
    owner: str = "KLMonitorCallback ",
) -> None:
    """`ConfigError` for thresholds that make a monitor of `metric` meaningless (`metric="auto"` watches a KL).

    A threshold below what the metric can be acts on its first log (a negative threshold on a KL stops a run at its
    first logged step); one at or above its highest value never acts; a warning above the stop threshold is never
    given before the run stops. `names` and `owner` name the options in the message (`kl_warn_above`, ...).
    """
    bounds = metric_bounds(KL_EXACT if metric == AUTO else metric)
    watched = f"the metric 'auto' watches ({KL_EXACT} or eval_{KL_SEQUENCE})" if metric == AUTO else metric
    for name, value in zip(names, (warn_above, stop_above), strict=True):
        if value is None or bounds is None:
            continue
        low, high, what = bounds
        if value < low:
            raise ConfigError(
                f"{owner}{name} {value:g} is below {low:g}, but {watched} is {what}: the monitor would act on its "
                f"first log. Set {name} >= {low:g} (e.g. 0.1 nats for a KL), or watch another metric."
            )
        if value >= high:
            raise ConfigError(
                f"{owner}{name} {value:g} is not below {high:g}, but {watched} is {what}: the monitor could never "
                f"act. Set {name} below {high:g}, or watch another metric."
            )
    if warn_above is not None and stop_above is not None and warn_above > stop_above:
        raise ConfigError(
            f"{owner}{names[0]} {warn_above:g} is above {names[1]} {stop_above:g}: the run would stop before the "
            f"warning could be given. Set {names[0]} below {names[1]}, or leave it out."
        )


class KLMonitorCallback(TrainerCallback, ExportableState):
    """Watch a logged KL metric and act when it exceeds a threshold.

    Args:
        metric (`str`, defaults to `"auto"`):
            The log key to watch, exactly as logged: `kl/exact`, `kl/exact_rejected`, ... for training logs,
            `eval_kl/sequence`, `eval_kl/exact` for evaluation logs. `"auto"` picks, when training starts,
            `eval_kl/sequence` (the sequence KL on the policy's own samples) if the run evaluates, else
            `kl/exact`. Logs without the metric are skipped (`kl/exact` is logged on the last step of every
            `kl_exact_steps` window).
        warn_above (`float`, *optional*):
            Log a warning when the value rises above this (once per crossing).
        stop_above (`float`, *optional*):
            Save a checkpoint and stop training once the value has been above this in `patience`
            consecutive logs that contain it. A NaN or infinite value is skipped (and warned about once).
            Thresholds that would make the monitor meaningless are refused (`check_thresholds`): below what the
            metric can be (a negative threshold on a KL), at or above its highest value, or `warn_above` above
            `stop_above`.
        patience (`int`, defaults to `1`):
            Consecutive breaches of `stop_above` needed to stop.
        strict (`bool`, defaults to `False`):
            Raise `ConfigError`, listing the metrics that are logged, when the first log of the metric's kind
            (evaluation logs for `eval_...`, training-step logs otherwise) does not contain it. Later logs may
            lack it.
    """

    def __init__(
        self,
        metric: str = AUTO,
        *,
        warn_above: float | None = None,
        stop_above: float | None = None,
        patience: int = 1,
        strict: bool = False,
    ) -> None:
        if not isinstance(metric, str) or not metric:
            raise ConfigError(
                f"KLMonitorCallback metric must be a log key such as 'kl/exact', got {metric!r}."
            )
        self.warn_above = _check_threshold("warn_above", warn_above)
        self.stop_above = _check_threshold("stop_above", stop_above)
        if self.warn_above is None and self.stop_above is None:
            raise ConfigError(
                f"KLMonitorCallback({metric!r}) has neither warn_above nor stop_above, so it would never act. "
                "Set at least one, e.g. stop_above=0.5."
            )
        check_thresholds(metric, self.warn_above, self.stop_above)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"KLMonitorCallback patience must be an integer >= 1, got {patience!r}.")
        if not isinstance(strict, bool):
            raise ConfigError(f"KLMonitorCallback strict must be True or False, got {strict!r}.")
        self.requested = metric
        # "auto" is resolved when training starts (or at the first log); until then it reads as kl/exact.
        self.metric = KL_EXACT if metric == AUTO else metric
        self._resolved = metric != AUTO
        self.patience = patience
        self.strict = strict
        # Restorable state (see `state()`).
        self.breaches = 0
        self.above_warn = False
        self.seen = False
        self.reason: str | None = None
        self.stopped_at: int | None = None
        self.non_finite_noted = False

    # --- the decision ---------------------------------------------------------------------------------------
    def decide(self, value: float, *, step: int | None = None) -> Decision:
        """The decision for one logged `value`, from the current state; changes nothing.

        A non-finite value is no measurement: it is skipped and the state stays as it was.
        """
        where = f" at step {step}" if step is not None else ""
        if not math.isfinite(value):
            return Decision(
                "skip",
                self.breaches,
                self.above_warn,
                f"{self.metric} is {value}{where}; non-finite values are skipped (warned once).",
            )
        over_stop = self.stop_above is not None and value > self.stop_above
        breaches = self.breaches + 1 if over_stop else 0
        over_warn = self.warn_above is not None and value > self.warn_above
        if over_stop and breaches >= self.patience:
            run = f" for {breaches} consecutive logs" if self.patience > 1 else ""
            return Decision(
                "stop",
                breaches,
                over_warn,
                f"{self.metric} = {value:.6g} > stop_above = {self.stop_above:g}{run}{where}: "
                "saved a checkpoint and stopped training.",
            )
        if over_stop:
            return Decision(
                "warn",
                breaches,
                over_warn,
                f"{self.metric} = {value:.6g} > stop_above = {self.stop_above:g}{where} "
                f"({breaches} of {self.patience} consecutive logs before stopping).",
            )
        if over_warn and not self.above_warn:
            return Decision(
                "warn",
                breaches,
                True,
                f"{self.metric} = {value:.6g} > warn_above = {self.warn_above:g}{where}.",
            )
        return Decision("none", breaches, over_warn)

    # --- the callback ---------------------------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if not self._resolved:
            self.metric, self._resolved = auto_metric(args), True
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if not logs:
            return control
        if not self._resolved:  # driven without on_train_begin (e.g. by hand)
            self.metric, self._resolved = auto_metric(args), True
        if self.metric not in logs:
            if self.strict and not self.seen and self._is_kind_of_log(logs):
                raise ConfigError(self._missing_message(logs, state.global_step))
            return control
        self.seen = True
        decision = self.decide(float(logs[self.metric]), step=state.global_step)
        self.breaches, self.above_warn = decision.breaches, decision.above_warn
        if decision.action == "skip":
            if self.non_finite_noted:
                return control
            self.non_finite_noted = True
        elif decision.action == "stop":
            self.reason, self.stopped_at = decision.message, state.global_step
            control.should_save = True
            control.should_training_stop = True
            entry: dict[str, Any] = {STOPPED_KEY: decision.message, "step": state.global_step}
            state.log_history.append(entry)
        if decision.message is not None and state.is_world_process_zero:
            logger.warning(f"KLMonitorCallback: {decision.message}")
        return control

    def _is_kind_of_log(self, logs: dict[str, Any]) -> bool:
        if self.metric.startswith("eval_"):
            return any(key.startswith("eval_") for key in logs)
        return LOSS in logs  # a training-step log (the end-of-training summary has `train_loss` instead)

    def _missing_message(self, logs: dict[str, Any], step: int) -> str:
        hint = ""
        if self.metric.endswith(KL_EXACT):
            hint = " kl/exact is logged by ConservativeDPOTrainer with kl_exact_steps > 0."
        elif self.metric.endswith(KL_SEQUENCE):
            hint = " eval_kl/sequence is logged at evaluations by ConservativeDPOTrainer with kl_sequence_prompts > 0."
        return (
            f"KLMonitorCallback(strict=True): metric {self.metric!r} is not in the log at step {step}. "
            f"Metrics logged: {', '.join(sorted(logs))}.{hint} Pick one of them, or set strict=False."
        )

    # --- restorable state (saved in trainer_state.json under stateful_callbacks) ------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "metric": self.requested,
                "warn_above": self.warn_above,
                "stop_above": self.stop_above,
                "patience": self.patience,
                "strict": self.strict,
            },
            "attributes": {
                "breaches": self.breaches,
                "above_warn": self.above_warn,
                "seen": self.seen,
                "reason": self.reason,
                "stopped_at": self.stopped_at,
                "metric": self.metric,
                "non_finite_noted": self.non_finite_noted,
            },
        }
