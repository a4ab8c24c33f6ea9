"""The NaN guard: a non-finite loss, KL metric or weight stops training, and nothing non-finite is saved."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import TrainerCallback

from trl_conservative import ConfigError, LossOutput, NonFiniteError, TrainingHalted, hookimpl
from trl_conservative.registry import registered_plugins
from trl_conservative.reliability.nan_guard import (
    guard_enabled,
    non_finite_message,
    non_finite_parameters,
    non_finite_value,
)

pytestmark = pytest.mark.core

# --- pure parts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 1.0], None),
        ([0.5, math.inf], math.inf),
        ([-math.inf, 1.0], -math.inf),
        ([math.inf, math.nan], "nan"),
    ],
)
def test_non_finite_value_prefers_nan(values: list[float], expected: Any) -> None:
    got = non_finite_value(torch.tensor(values))
    if expected == "nan":
        assert got is not None and math.isnan(got)
    else:
        assert got == expected


def test_non_finite_parameters_names_trainable_ones_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert non_finite_parameters(model.named_parameters()) == []
    with torch.no_grad():
        model[1].bias[0] = math.inf
        model[0].weight[0, 0] = math.nan
    assert non_finite_parameters(model.named_parameters()) == ["0.weight", "1.bias"]
    model[0].weight.requires_grad_(
        False
    )  # frozen (e.g. a LoRA base weight): training cannot have made it NaN
    assert non_finite_parameters(model.named_parameters()) == ["1.bias"]
    assert non_finite_parameters(model.named_parameters(), limit=0) == []


def test_message_names_metric_step_checkpoint_and_fix(tmp_path: Path) -> None:
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        save_file({}, (tmp_path / f"checkpoint-{step}" / "model.safetensors"))  # a valid (empty) weights file: truncated ones mark a cut-off save
    (tmp_path / "checkpoint-12").mkdir()  # a cut-off save: not "good"
    text = non_finite_message("loss is nan", step=13, phase="train", output_dir=str(tmp_path))
    assert "loss is nan at step 13" in text
    assert f"last good checkpoint is {tmp_path / 'checkpoint-10'}" in text
    assert "nan_guard=False" in text and "\n" not in text
    assert "in evaluation after step 4" in non_finite_message(
        "x", step=4, phase="evaluation", output_dir=None
    )
    assert "No checkpoint was saved" in non_finite_message("x", step=4, phase="train", output_dir=None)


def test_guard_setting_must_be_bool() -> None:
    class Args:
        nan_guard = "yes"

    assert guard_enabled(object(), "nan_guard") is True  # a plain DPOConfig: on
    with pytest.raises(ConfigError, match="nan_guard must be True or False, got 'yes'"):
        guard_enabled(Args(), "nan_guard")


# --- in training ------------------------------------------------------------------------------------------


class _NanAtCall:
    """DPO sigmoid loss that returns NaN (or +inf) on its `at`-th call: a plugin loss gone wrong mid-run."""

    name = "nan_at_test"

    def __init__(self, at: int, value: float = math.nan) -> None:
        self.at, self.value, self.calls = at, value, 0

    def __call__(self, inputs: Any) -> LossOutput:
        self.calls += 1
        h = inputs.chosen_logratios - inputs.rejected_logratios
        losses = -F.logsigmoid(inputs.beta * h)
        if self.calls == self.at:
            losses = losses + self.value
        return LossOutput(
            losses=losses,
            chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
            rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
        )


def _plugin(loss: Any) -> Any:
    class Plugin:
        @hookimpl
        def register_losses(self, register: Any) -> None:
            register(loss)

    return Plugin()


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_halts_before_the_step_and_keeps_the_last_checkpoint(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, value: float
) -> None:
    from safetensors.torch import load_file

    from trl_conservative import ConservativeDPOTrainer

    class Snapshot(TrainerCallback):
        digest: dict[str, str] = {}

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.digest = _digest(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    snapshot = Snapshot()
    with registered_plugins(("nan_at", _plugin(_NanAtCall(at=3, value=value)))):
        args = make_config(
            loss_type="nan_at_test", max_steps=6, logging_steps=5, save_strategy="steps", save_steps=2
        )
        trainer = ConservativeDPOTrainer(
            str(tiny_model_dir), args=args, train_dataset=tiny_dataset, callbacks=[snapshot]
        )
        with pytest.raises(NonFiniteError) as caught:
            trainer.train()
    error = caught.value
    out = Path(args.output_dir)
    assert isinstance(error, TrainingHalted)
    assert (error.metric, error.step) == ("loss", 3)
    assert math.isnan(error.value) if math.isnan(value) else error.value == math.inf
    assert f"loss is {value} at step 3" in str(error)
    assert error.checkpoint == str(out / "checkpoint-2")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert _digest(out / "checkpoint-2") == snapshot.digest  # untouched after its save
    assert trainer.state.global_step == 2  # no optimizer step was made with the NaN loss
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param.detach(), saved[name]), name  # the weights in memory are the good ones


@pytest.mark.slow
def test_non_finite_diagnostic_is_logged_warned_once_and_never_halts(
    tiny_model_dir: Any,
    tiny_dataset: Any,
    make_config: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A diagnostic that overflows (as exp(-l) did in float16) is logged as it is; training and evaluation go on."""
    import logging

    import trl_conservative.trainer.kl_logging as trainer_module
    from trl_conservative import ConservativeDPOTrainer

    real = trainer_module.kl_metrics

    def overflowing(names: Any, table: Any) -> dict[str, float]:
        metrics = real(names, table)
        metrics["logratio/rejected"] = -math.inf
        return metrics

    monkeypatch.setattr(trainer_module, "kl_metrics", overflowing)
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir),
        args=make_config(max_steps=4, eval_strategy="steps", eval_steps=2, kl_sequence_prompts=0),
        train_dataset=tiny_dataset,
        eval_dataset=tiny_dataset.select(range(4)),
    )
    assert trainer.nan_guard  # on by default: it watches the loss and the weights, not diagnostics
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert trainer.state.global_step == 4
    history = trainer.state.log_history
    assert [h["logratio/rejected"] for h in history if "logratio/rejected" in h] == [-math.inf] * 4
    assert [h["eval_logratio/rejected"] for h in history if "eval_logratio/rejected" in h] == [-math.inf] * 2
    notes = [
        r.getMessage() for r in caplog.records if "Diagnostic metric logratio/rejected" in r.getMessage()
    ]
    assert len(notes) == 1 and "training goes on" in notes[0]


@pytest.mark.slow
def test_non_finite_weights_are_never_saved(tiny_model_dir: Any, tiny_dataset: Any, make_config: Any) -> None:
    """A finite loss can still leave NaN weights (an overflowing gradient): the save is refused, not written."""
    from trl_conservative import ConservativeDPOTrainer

    class Corrupt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters())[0, 0] = math.inf

    args = make_config(max_steps=4, save_strategy="steps", save_steps=1)
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=args, train_dataset=tiny_dataset, callbacks=[Corrupt()]
    )
    with pytest.raises(
        NonFiniteError, match=r"trained weights are NaN or infinite \(model\.embed_tokens\.weight\)"
    ):
        trainer.train()
    out = Path(args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    final = out / "final"
    with pytest.raises(NonFiniteError, match="when saving after step 2"):
        trainer.save_model(str(final))  # e.g. a script's save after catching the error
    assert not final.exists()


@pytest.mark.slow
def test_nan_guard_off_keeps_transformers_behaviour(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    with registered_plugins(("nan_at", _plugin(_NanAtCall(at=2)))):
        args = make_config(loss_type="nan_at_test", max_steps=3, nan_guard=False)
        trainer = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
        trainer.train()  # no error: transformers filters the NaN from the logged loss and goes on
    assert trainer.state.global_step == 3
