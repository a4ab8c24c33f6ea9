"""What the reliability features assume about the installed transformers and TRL, read from their source.

Fails loudly when an upgrade changes one of these, instead of the NaN guard, the interrupt checkpoint, the resume
or the "nothing untrusted is unpickled" promise silently breaking.
"""

from __future__ import annotations

import inspect
import re

from transformers import Trainer
from transformers.trainer_callback import CallbackHandler
from trl.trainer.dpo_trainer import DPOTrainer


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
    run_epoch = _source(Trainer._run_epoch)
    on_step_end = run_epoch.index("self.callback_handler.on_step_end(")
    assert on_step_end < run_epoch.index("self._maybe_log_save_evaluate(", on_step_end)
    assert "self.control.should_training_stop" in run_epoch
    assert "control.should_training_stop = False" in _source(CallbackHandler.on_train_begin)


def test_resume_restores_callback_state_through_load_callback_state() -> None:
    source = _source(Trainer._init_training_state)
    assert source.index("TrainerState.load_from_json(") < source.index("self._load_callback_state()")


def test_trl_keeps_its_token_count_on_the_trainer() -> None:
    """`TrainCounters` checkpoints this attribute, which TRL does not."""
    assert "self._total_train_tokens +=" in _source(DPOTrainer._compute_loss)


def test_resume_loads_checkpoint_pickles_with_weights_only() -> None:
    """Optimizer, scheduler, scaler and RNG files are read with `torch.load(weights_only=True)`, never plain."""
    for method in (Trainer._load_rng_state, Trainer._load_optimizer_and_scheduler, Trainer._load_scaler):
        source = _source(method)
        calls = source.count("torch.load(")
        assert calls > 0 and source.count("weights_only=True") >= calls, method.__name__
