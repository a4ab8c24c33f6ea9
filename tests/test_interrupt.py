"""SIGINT/SIGTERM during training: a checkpoint at the next step boundary, a clear error, handlers restored."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trl_conservative import TrainingHalted, TrainingInterrupted
from trl_conservative.reliability.interrupt import InterruptCallback


def _handlers() -> tuple[Any, Any]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_handlers_are_installed_for_the_block_and_restored_after(capsys: pytest.CaptureFixture[str]) -> None:
    before = _handlers()
    callback = InterruptCallback()
    with callback.installed(main_process=True):
        assert _handlers() == (callback._handle, callback._handle)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: just a request
        assert callback.signal_number == signal.SIGINT
    assert _handlers() == before
    assert "received SIGINT: saving a checkpoint at the end of this step" in capsys.readouterr().err


def test_second_signal_goes_to_the_previous_handler_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    callback = InterruptCallback()
    with pytest.raises(KeyboardInterrupt), callback.installed(main_process=False):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # Python's default handler: KeyboardInterrupt
    assert capsys.readouterr().err == ""  # not the main process: nothing printed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before, seen = _handlers(), []

    def body() -> None:
        with InterruptCallback().installed():
            seen.append(_handlers())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before]


def test_stop_decision_saves_then_stops_and_error_names_the_checkpoint(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback = InterruptCallback()
    callback.on_train_begin(args, state, control)
    state.global_step = 4
    callback.on_step_end(args, state, control)
    assert not (control.should_save or control.should_training_stop)  # no signal yet
    callback.signal_number = signal.SIGTERM
    callback.on_step_end(args, state, control)
    assert control.should_save and control.should_training_stop and callback.stopped_at == 4
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    save_file({}, (checkpoint / "model.safetensors"))  # a valid (empty) weights file: truncated ones mark a cut-off save
    callback.on_save(args, state, control)
    error = callback.error(max_steps=10)
    assert isinstance(error, TrainingInterrupted) and isinstance(error, TrainingHalted)
    assert (error.exit_status, error.step, error.checkpoint) == (143, 4, str(checkpoint))
    assert str(error) == (
        f"Training interrupted by SIGTERM at step 4 of 10: saved checkpoint {checkpoint}. "
        f"Resume with trainer.train(resume_from_checkpoint={str(checkpoint)!r})."
    )


class _SignalAt(TrainerCallback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step + 1 == self.step:  # arrives in the middle of this step
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_that_resumes_to_the_uninterrupted_result(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any, tmp_path: Path, signum: int, status: int
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    before = _handlers()
    args = make_config(
        max_steps=5, output_dir=str(tmp_path / "run")
    )  # save_strategy="no": only the signal saves
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=args, train_dataset=tiny_dataset, callbacks=[_SignalAt(3, signum)]
    )
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.train()
    assert _handlers() == before
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert (caught.value.exit_status, caught.value.step, caught.value.checkpoint) == (
        status,
        3,
        str(checkpoint),
    )
    assert trainer.state.global_step == 3
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3"]

    resumed = ConservativeDPOTrainer(str(tiny_model_dir), args=args, train_dataset=tiny_dataset)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    full = ConservativeDPOTrainer(
        str(tiny_model_dir),
        args=make_config(max_steps=5, output_dir=str(tmp_path / "full")),
        train_dataset=tiny_dataset,
    )
    full.train()
    reference = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, reference[name], rtol=0, atol=1e-6, msg=name)
    losses = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert losses == [h["loss"] for h in full.state.log_history if "loss" in h]


@pytest.mark.slow
def test_save_on_interrupt_off_leaves_signals_to_python(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    from trl_conservative import ConservativeDPOTrainer

    args = make_config(max_steps=3, save_on_interrupt=False)
    trainer = ConservativeDPOTrainer(
        str(tiny_model_dir), args=args, train_dataset=tiny_dataset, callbacks=[_SignalAt(2, signal.SIGINT)]
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not list(Path(args.output_dir).glob("checkpoint-*"))
