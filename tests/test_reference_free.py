"""Reference-free losses: no reference model is loaded or run, and `rewards/*` are the loss's own."""

from __future__ import annotations

import dataclasses
import logging
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from batches import completion_lengths, metric_series, sequence_logps

from trl_conservative import ConfigError, ConservativeDPOTrainer, LossInputs, LossOutput, hookimpl
from trl_conservative.registry import registered_plugins

pytestmark = [pytest.mark.slow, pytest.mark.core]


@dataclasses.dataclass(frozen=True)
class _AvgMarginLoss:
    """-log sigma(avg logp(y_w) - avg logp(y_l)), with constant rewards so the logged values are known."""

    name: str = "avg_margin"
    needs_reference: bool = False

    def __call__(self, inputs: LossInputs) -> LossOutput:
        avg_w = inputs.chosen_logps / inputs.chosen_lengths.clamp(min=1)
        avg_l = inputs.rejected_logps / inputs.rejected_lengths.clamp(min=1)
        const = torch.ones_like(avg_w).detach()
        return LossOutput(
            losses=-F.logsigmoid(avg_w - avg_l), chosen_rewards=7 * const, rejected_rewards=-3 * const
        )


_WITH_REF = dataclasses.replace(_AvgMarginLoss(), name="avg_margin_ref", needs_reference=True)


@hookimpl
def _register(register: Any) -> None:
    register(_AvgMarginLoss())
    register(_WITH_REF)


PLUGIN = ("avg-margin-test", types.SimpleNamespace(register_losses=_register))


def _trainer(model_dir: Any, dataset: Any, config: Any, **kwargs: Any) -> ConservativeDPOTrainer:
    return ConservativeDPOTrainer(model=str(model_dir), args=config, train_dataset=dataset, **kwargs)


def _count_model_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every `from_pretrained` of a model (whichever TRL line loads it, and however)."""
    from transformers import PreTrainedModel

    loads: list[str] = []
    real = PreTrainedModel.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, path: Any, *args: Any, **kw: Any) -> Any:
        loads.append(str(path))
        return real(cls, path, *args, **kw)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return loads


def test_no_reference_is_loaded_or_run_and_rewards_are_the_losses(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = _count_model_loads(monkeypatch)
    with registered_plugins(PLUGIN):
        args = make_config(loss_type="avg_margin", max_steps=2)
        trainer = _trainer(tiny_model_dir, tiny_dataset, args)
        assert loads == [str(tiny_model_dir)]  # the policy only
        assert trainer.no_reference and trainer.ref_model is None
        assert args.precompute_ref_log_probs is False and trainer.precompute_ref_logps is False
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.model.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch).item()
        logps_w, logps_l = sequence_logps(trainer.model, batch)
        lengths_w, lengths_l = completion_lengths(batch)
        avg_w, avg_l = logps_w / lengths_w, logps_l / lengths_l
        assert loss == pytest.approx((-F.logsigmoid(avg_w - avg_l)).mean().item(), abs=1e-5)
        trainer.model.train()
        metric_series(trainer, "eval").clear()
        calls: list[int] = []
        trainer.model.register_forward_hook(lambda *_: calls.append(1))
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert len(calls) == 2  # one policy forward per step, nothing else
    for log in logs:  # the loss's constant rewards, not TRL's beta * (logps - 0)
        assert log["rewards/chosen"] == pytest.approx(7.0)
        assert log["rewards/rejected"] == pytest.approx(-3.0)
        assert log["rewards/margins"] == pytest.approx(10.0)
        assert log["rewards/accuracies"] == pytest.approx(1.0)


def test_same_training_as_with_a_reference_that_the_loss_ignores(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    with registered_plugins(PLUGIN):
        free = _trainer(tiny_model_dir, tiny_dataset, make_config(loss_type="avg_margin"))
        free.train()
        with_ref = _trainer(tiny_model_dir, tiny_dataset, make_config(loss_type="avg_margin_ref"))
        assert with_ref.ref_model is not None and not with_ref.no_reference
        with_ref.train()

    def losses(t: Any) -> list[float]:
        return [h["loss"] for h in t.state.log_history if "loss" in h]

    assert len(losses(free)) == 3
    assert losses(free) == pytest.approx(losses(with_ref), abs=1e-6)


def test_a_passed_ref_model_is_released_with_a_warning(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from trl_conservative.demo.tiny import build_model, build_tokenizer

    ref = build_model(len(build_tokenizer()), seed=3)
    with registered_plugins(PLUGIN), caplog.at_level(logging.WARNING):
        trainer = _trainer(tiny_model_dir, tiny_dataset, make_config(loss_type="avg_margin"), ref_model=ref)
    assert trainer.ref_model is None
    assert "ref_model is not used" in caplog.text and "avg_margin" in caplog.text


def test_user_precompute_request_computes_nothing(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    with registered_plugins(PLUGIN):
        args = make_config(loss_type="avg_margin", precompute_ref_log_probs=True, max_steps=1)
        trainer = _trainer(tiny_model_dir, tiny_dataset, args)
        assert trainer.ref_model is None
        assert "ref_chosen_logps" not in trainer.train_dataset.column_names
        assert args.precompute_ref_log_probs is True  # the caller's setting is left as it was
        trainer.train()


def test_peft_runs_no_adapter_disabled_reference_forward(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with registered_plugins(PLUGIN):
        trainer = _trainer(
            tiny_model_dir,
            tiny_dataset,
            make_config(loss_type="avg_margin", max_steps=2),
            peft_config=peft_config,
        )
        calls: list[int] = []
        trainer.model.get_base_model().register_forward_hook(lambda *_: calls.append(1))
        trainer.train()
    assert len(calls) == 2


def test_evaluation_logs_the_losses_rewards(tiny_model_dir: Any, tiny_dataset: Any, make_config: Any) -> None:
    with registered_plugins(PLUGIN):
        trainer = _trainer(
            tiny_model_dir, tiny_dataset, make_config(loss_type="avg_margin"), eval_dataset=tiny_dataset
        )
        metrics = trainer.evaluate()
    assert metrics["eval_rewards/chosen"] == pytest.approx(7.0)
    assert metrics["eval_rewards/margins"] == pytest.approx(10.0)


def test_mixed_with_a_reference_loss_keeps_the_reference(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    with registered_plugins(PLUGIN):
        trainer = _trainer(tiny_model_dir, tiny_dataset, make_config(loss_type=["avg_margin", "sigmoid"]))
    assert not trainer.no_reference and trainer.ref_model is not None


def test_sync_ref_model_is_rejected_before_loading(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    with registered_plugins(PLUGIN):
        with pytest.raises(ConfigError, match=r"sync_ref_model=True.*avg_margin.*sync_ref_model=False"):
            _trainer(tiny_model_dir, tiny_dataset, make_config(loss_type="avg_margin", sync_ref_model=True))
