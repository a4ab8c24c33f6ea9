"""KLMonitorCallback: the pure decision, the callback protocol without a Trainer, then real trainings."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trl_conservative import ConfigError, KLMonitorCallback
from trl_conservative.kl.monitor import STOPPED_KEY


# --- the decision ------------------------------------------------------------------------------------------
def _run(cb: KLMonitorCallback, values: list[float]) -> list[str]:
    """Feed values through `decide`, applying each decision's state as `on_log` does."""
    actions = []
    for v in values:
        d = cb.decide(v)
        cb.breaches, cb.above_warn = d.breaches, d.above_warn
        actions.append(d.action)
    return actions


def test_decide_is_pure() -> None:
    cb = KLMonitorCallback(stop_above=0.5)
    before = cb.state()
    decision = cb.decide(0.9, step=7)
    assert decision.action == "stop" and decision.breaches == 1
    assert "kl/exact = 0.9 > stop_above = 0.5 at step 7" in (decision.message or "")
    assert cb.state() == before


def test_stop_needs_patience_consecutive_breaches() -> None:
    cb = KLMonitorCallback(stop_above=0.5, patience=3)
    # A value at or below the threshold resets the count.
    assert _run(cb, [0.6, 0.7, 0.5, 0.6, 0.8, 0.9]) == ["warn", "warn", "none", "warn", "warn", "stop"]


def test_warn_once_per_crossing() -> None:
    cb = KLMonitorCallback("kl/exact_rejected", warn_above=0.1)
    assert _run(cb, [0.05, 0.2, 0.3, 0.05, 0.4]) == ["none", "warn", "none", "none", "warn"]


def test_non_finite_values_are_skipped_never_a_reason_to_stop() -> None:
    """A NaN or infinite KL is a broken diagnostic (e.g. an overflow), not a measurement: no action, no count."""
    cb = KLMonitorCallback(warn_above=1.0, stop_above=2.0, patience=2)
    assert _run(cb, [3.0, math.nan, math.inf, 3.0]) == ["warn", "skip", "skip", "stop"]  # the count survives them
    assert cb.breaches == 2
    assert cb.decide(math.nan, step=3).message == "kl/exact is nan at step 3; non-finite values are skipped (warned once)."


def test_non_finite_logged_value_is_warned_once_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`on_log` goes through `decide` for a non-finite value too: one warning, the breach count kept."""
    args, state, control = _protocol(tmp_path)
    cb = KLMonitorCallback("kl/exact", stop_above=0.5, patience=2)
    with caplog.at_level(logging.WARNING):
        cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.9})
        cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": math.nan})
        cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": math.inf})
    assert not control.should_training_stop and cb.breaches == 1 and cb.non_finite_noted
    assert [r.getMessage() for r in caplog.records] == [
        "KLMonitorCallback: kl/exact = 0.9 > stop_above = 0.5 at step 5 (1 of 2 consecutive logs before stopping).",
        "KLMonitorCallback: kl/exact is nan at step 5; non-finite values are skipped (warned once).",
    ]
    cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.9})
    assert control.should_training_stop  # the second breach in a row: the non-finite logs did not reset it


def test_auto_watches_the_sequence_kl_when_the_run_evaluates(tmp_path: Path) -> None:
    from trl_conservative import ConservativeDPOConfig

    def config(**kw: Any) -> Any:
        return ConservativeDPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)

    cb = KLMonitorCallback(stop_above=0.5)
    assert cb.requested == "auto" and cb.metric == "kl/exact"  # until training starts
    state, control = TrainerState(), TrainerControl()
    cb.on_train_begin(config(eval_strategy="steps", eval_steps=5), state, control)
    assert cb.metric == "eval_kl/sequence"
    cb = KLMonitorCallback(stop_above=0.5)
    cb.on_train_begin(config(), state, control)
    assert cb.metric == "kl/exact"
    # eval_on_start alone evaluates too (the data loader then asks for a held-out split): the same rule here.
    cb = KLMonitorCallback(stop_above=0.5)
    cb.on_train_begin(config(eval_on_start=True), state, control)
    assert cb.metric == "eval_kl/sequence"
    cb = KLMonitorCallback(stop_above=0.5)
    cb.on_train_begin(config(eval_strategy="steps", eval_steps=5, kl_sequence_prompts=0), state, control)
    assert cb.metric == "kl/exact"


def test_warn_and_stop_together() -> None:
    cb = KLMonitorCallback(warn_above=0.1, stop_above=1.0)
    assert _run(cb, [0.2, 0.5, 2.0]) == ["warn", "none", "stop"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(), "neither warn_above nor stop_above"),
        (dict(stop_above=float("inf")), "stop_above must be a finite number or None, got inf"),
        (dict(warn_above="0.1"), "warn_above must be a finite number or None, got '0.1'"),
        (dict(stop_above=1.0, patience=0), "patience must be an integer >= 1, got 0"),
        (dict(stop_above=1.0, metric=""), "metric must be a log key"),
        (dict(stop_above=1.0, strict="yes"), "strict must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    metric = kwargs.pop("metric", "kl/exact")
    with pytest.raises(ConfigError, match=message):
        KLMonitorCallback(metric, **kwargs)


# --- the callback protocol, without a Trainer ----------------------------------------------------------------
def _protocol(tmp_path: Path) -> tuple[TrainingArguments, TrainerState, TrainerControl]:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    return args, TrainerState(global_step=5), TrainerControl()


def test_on_log_stops_saves_and_records_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args, state, control = _protocol(tmp_path)
    cb = KLMonitorCallback(stop_above=0.5)
    cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.1})
    assert not control.should_training_stop and not control.should_save
    with caplog.at_level(logging.WARNING):
        cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.8})
    assert control.should_training_stop and control.should_save
    assert cb.reason is not None and "kl/exact = 0.8 > stop_above = 0.5 at step 5" in cb.reason
    assert state.log_history[-1] == {STOPPED_KEY: cb.reason, "step": 5}
    assert cb.state()["attributes"]["reason"] == cb.reason and cb.stopped_at == 5
    assert [r.getMessage() for r in caplog.records] == [f"KLMonitorCallback: {cb.reason}"]


def test_only_the_main_process_prints(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    args, state, control = _protocol(tmp_path)
    state.is_world_process_zero = False
    cb = KLMonitorCallback(stop_above=0.5)
    with caplog.at_level(logging.WARNING):
        cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.8})
    assert control.should_training_stop  # every rank stops ...
    assert not caplog.records  # ... but only rank 0 prints


def test_logs_without_the_metric_are_skipped_unless_strict(tmp_path: Path) -> None:
    args, state, control = _protocol(tmp_path)
    lenient = KLMonitorCallback(stop_above=0.5)
    lenient.on_log(args, state, control, logs={"loss": 0.7, "rewards/margins": 1.0})
    assert not control.should_training_stop

    strict = KLMonitorCallback("kl/exct", stop_above=0.5, strict=True)
    # The end-of-training summary is not a training-step log: no error.
    strict.on_log(args, state, control, logs={"train_loss": 0.7, "train_runtime": 1.0})
    with pytest.raises(ConfigError) as err:
        strict.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.1, "kl/exact_rejected": 0.0})
    assert "'kl/exct' is not in the log at step 5" in str(err.value)
    assert "Metrics logged: kl/exact, kl/exact_rejected, loss." in str(err.value)


def test_strict_tolerates_gaps_once_the_metric_was_seen(tmp_path: Path) -> None:
    """kl/exact is logged every kl_exact_steps: later logs without it are fine."""
    args, state, control = _protocol(tmp_path)
    cb = KLMonitorCallback(stop_above=0.5, strict=True)
    cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.1})
    cb.on_log(args, state, control, logs={"loss": 0.7, "logratio/chosen": 0.1})
    assert cb.seen and not control.should_training_stop


def test_eval_metric_watches_eval_logs(tmp_path: Path) -> None:
    args, state, control = _protocol(tmp_path)
    cb = KLMonitorCallback("eval_kl/exact", stop_above=0.5, strict=True)
    cb.on_log(args, state, control, logs={"loss": 0.7, "kl/exact": 0.9})  # a training log: not its kind
    assert not control.should_training_stop
    with pytest.raises(ConfigError, match="Metrics logged: eval_loss"):
        cb.on_log(args, state, control, logs={"eval_loss": 0.7})
    cb.on_log(args, state, control, logs={"eval_loss": 0.7, "eval_kl/exact": 0.9})
    assert control.should_training_stop


def test_state_round_trips() -> None:
    cb = KLMonitorCallback("kl/exact_rejected", warn_above=0.1, stop_above=0.5, patience=4, strict=True)
    _run(cb, [0.2, 0.6, 0.7])
    restored = KLMonitorCallback.from_state(json.loads(json.dumps(cb.state())))
    assert isinstance(restored, KLMonitorCallback)
    assert restored.state() == cb.state()
    assert (restored.breaches, restored.above_warn) == (2, True)


# --- with real trainers --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_stock_dpo_trainer_stops_and_saves(tiny_model_dir: Any, tiny_dataset: Any, make_config: Any) -> None:
    from trl import DPOConfig, DPOTrainer

    # At step 1 policy == reference, so the margin is 0 > -1: stop at once. save_strategy="no" is overridden.
    cb = KLMonitorCallback("rewards/margins", stop_above=-1.0)
    trainer = DPOTrainer(
        str(tiny_model_dir),
        args=make_config(DPOConfig, max_steps=5),
        train_dataset=tiny_dataset,
        callbacks=[cb],
    )
    trainer.train()
    assert trainer.state.global_step == 1
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-1"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["KLMonitorCallback"]["attributes"]["reason"] == cb.reason
    assert {STOPPED_KEY: cb.reason, "step": 1} in saved["log_history"]
    assert "rewards/margins = 0 > stop_above = -1 at step 1" in (cb.reason or "")


@pytest.mark.slow
def test_kl_stop_state_survives_resume(tiny_model_dir: Any, tiny_dataset: Any, make_config: Any) -> None:
    from trl_conservative import ConservativeDPOTrainer

    def train(max_steps: int, resume: bool) -> Any:
        # kl/exact is 0 at step 1 (policy == reference) and > 0 from step 2 on: breaches at steps 2, 3, ...
        args = make_config(
            max_steps=max_steps,
            learning_rate=1e-2,
            kl_exact_steps=1,
            save_strategy="steps",
            save_steps=3,
            restore_callback_states_from_checkpoint=True,
        )
        cb = KLMonitorCallback(stop_above=0.0, patience=3)
        trainer = ConservativeDPOTrainer(
            str(tiny_model_dir), args=args, train_dataset=tiny_dataset, callbacks=[cb]
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    first = train(max_steps=3, resume=False)  # breaches at steps 2 and 3, saved in checkpoint-3
    assert first.state.global_step == 3
    monitor = next(c for c in first.callback_handler.callbacks if isinstance(c, KLMonitorCallback))
    assert monitor.breaches == 2 and monitor.reason is None
    resumed = train(max_steps=8, resume=True)
    # With the restored count, the third breach (step 4) stops; a fresh callback would stop at step 6.
    assert resumed.state.global_step == 4
    monitor = next(c for c in resumed.callback_handler.callbacks if isinstance(c, KLMonitorCallback))
    assert monitor.stopped_at == 4 and "for 3 consecutive logs" in (monitor.reason or "")
    assert any(STOPPED_KEY in h for h in resumed.state.log_history)
