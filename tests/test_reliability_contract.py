"""What the reliability features assume about the installed transformers and TRL, read from their source.

Fails loudly when an upgrade changes one of these, instead of the NaN guard, the interrupt checkpoint, the resume
or the "nothing untrusted is unpickled" promise silently breaking.
"""

from __future__ import annotations

import inspect
import re

import pytest
from transformers import Trainer
from transformers.trainer_callback import CallbackHandler
from trl.trainer.dpo_trainer import DPOTrainer

from trl_conservative.trainer.trl_compat import TRL_STACK


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


def test_compute_loss_runs_before_backward_in_training_step() -> None:
    """The NaN guard raises from `compute_loss`, so no backward pass or optimizer step sees the loss."""
    source = _source(Trainer.training_step)
    assert 0 <= source.index("self.compute_loss(") < source.index("self.accelerator.backward(")


def test_checkpoint_writes_weights_through_save_model_first_and_trainer_state_last() -> None:
    """`save_model` refuses non-finite weights before the folder exists; `trainer_state.json` marks completeness."""
    source = _source(Trainer._save_checkpoint)
    save_model = source.index("self.save_model(output_dir, _internal_call=True)")
    assert save_model < source.index("self._save_optimizer_and_scheduler(")
    assert source.index("self._save_rng_state(") < source.index(
        "save_to_json(os.path.join(output_dir, TRAINER_STATE_NAME))"
    )
    assert "os.makedirs" not in source[:save_model]


def test_should_save_and_should_training_stop_drive_the_loop() -> None:
    """The interrupt callback only sets `control`; the Trainer saves and stops on every process."""
    assert re.search(
        r"if self\.control\.should_save:\s+self\._save_checkpoint\(",
        _source(Trainer._maybe_log_save_evaluate),
    )
    # transformers 5 runs each epoch in `_run_epoch`; 4.x inside `_inner_training_loop`.
    run_epoch = _source(getattr(Trainer, "_run_epoch", Trainer._inner_training_loop))
    on_step_end = run_epoch.index("self.callback_handler.on_step_end(")
    assert on_step_end < run_epoch.index("self._maybe_log_save_evaluate(", on_step_end)
    assert "self.control.should_training_stop" in run_epoch
    assert "control.should_training_stop = False" in _source(CallbackHandler.on_train_begin)


def test_resume_restores_callback_state_through_load_callback_state() -> None:
    source = _source(getattr(Trainer, "_init_training_state", Trainer._inner_training_loop))
    assert source.index("TrainerState.load_from_json(") < source.index("self._load_callback_state()")


@pytest.mark.skipif(TRL_STACK != "fused_head", reason="TRL 0.2x counts no training tokens")
def test_trl_keeps_its_token_count_on_the_trainer() -> None:
    """`TrainCounters` checkpoints this attribute, which TRL does not."""
    assert "self._total_train_tokens +=" in _source(DPOTrainer._compute_loss)


def test_resume_loads_checkpoint_pickles_with_weights_only() -> None:
    """Optimizer, scheduler, scaler and RNG files are read with `torch.load(weights_only=True)`, never plain."""
    import torch
    from packaging.version import Version

    torch_default_is_safe = Version(torch.__version__.split("+")[0]) >= Version("2.6")  # weights_only=True
    methods = [Trainer._load_rng_state, Trainer._load_optimizer_and_scheduler]
    methods += [Trainer._load_scaler] if hasattr(Trainer, "_load_scaler") else []  # transformers 5
    for method in methods:
        source = _source(method)
        calls = source.count("torch.load(")
        assert calls > 0 and "weights_only=False" not in source, method.__name__
        if source.count("weights_only=True") < calls:
            # transformers 4.x reads the RNG file with torch's default inside `safe_globals()`: weights_only=True
            # from torch 2.6 on, with numpy's array types allow-listed.
            assert torch_default_is_safe and "with safe_globals():" in source, method.__name__


def test_the_weights_loader_finishing_a_run_uses() -> None:
    """`trl_compat.load_trained_weights` calls transformers' private `Trainer._load_from_checkpoint(folder)`."""
    import inspect

    parameters = list(inspect.signature(Trainer._load_from_checkpoint).parameters)
    assert parameters[:2] == ["self", "resume_from_checkpoint"], parameters
    source = _source(Trainer._load_from_checkpoint)
    assert "adapter_model" in source or "ADAPTER" in source  # it loads PEFT adapters too
