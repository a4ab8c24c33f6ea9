"""The warnings a user cannot act on are silenced around the trainer's calls, and nothing else is."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import transformers
from packaging.version import Version

from trl_conservative.trainer.quiet import known_warnings_silenced

pytestmark = pytest.mark.core

# What transformers 5 and torch print, attributed to the module that prints them (`warnings.warn_explicit` is what
# `warnings.warn` does once it has found the caller's frame).
GRADIENT_CHECKPOINTING = [
    (
        "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
        "instead.",
        "transformers.modeling_utils",
    ),
    (
        "`gradient_checkpointing_disable` is deprecated and will be removed in v6. Use "
        "`activation_checkpointing_disable` instead.",
        "transformers.modeling_utils",
    ),
    (
        "`gradient_checkpointing_enable` is deprecated and will be removed in v6. Use "
        "`activation_checkpointing_enable` instead.",
        "transformers.modeling_utils",
    ),
    (
        "`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` instead.",
        "transformers.training_args",
    ),
]
PIN_MEMORY = "'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used."


def _warn_from(module: str, message: str, category: type[Warning]) -> None:
    warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)


@contextmanager
def _recorded() -> Iterator[list[warnings.WarningMessage]]:
    # pyproject's filterwarnings ignores FutureWarning and UserWarning: show every warning again, and record it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught]


def _raise_all() -> None:
    for message, module in GRADIENT_CHECKPOINTING:
        _warn_from(module, message, FutureWarning)
    _warn_from("torch.utils.data.dataloader", PIN_MEMORY, UserWarning)


def test_the_known_warnings_are_silenced_inside_the_block_only() -> None:
    with _recorded() as caught:
        with known_warnings_silenced():
            _raise_all()
        assert caught == []
        _raise_all()  # after the block: the filters are gone
    assert len(caught) == len(GRADIENT_CHECKPOINTING) + 1


@pytest.mark.parametrize(
    "raise_it",
    [
        pytest.param(
            lambda: warnings.warn("an unrelated warning", UserWarning, stacklevel=1), id="unrelated"
        ),
        pytest.param(
            lambda: _warn_from("transformers.modeling_utils", "another deprecation", FutureWarning),
            id="same-module-other-message",
        ),
        pytest.param(
            lambda: warnings.warn(GRADIENT_CHECKPOINTING[0][0], FutureWarning, stacklevel=1),
            id="same-message-other-module",
        ),
        pytest.param(
            lambda: _warn_from(
                "transformers.modeling_utils", GRADIENT_CHECKPOINTING[0][0], DeprecationWarning
            ),
            id="same-message-other-category",
        ),
        pytest.param(
            lambda: _warn_from("torch.utils.data.dataloader", "pin_memory_device is deprecated", UserWarning),
            id="dataloader-other-message",
        ),
    ],
)
def test_any_other_warning_still_shows(raise_it: Callable[[], None]) -> None:
    with _recorded() as caught, known_warnings_silenced():
        _raise_all()
        raise_it()
    assert len(caught) == 1, _messages(caught)


@pytest.mark.slow
@pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.0"),
    reason="transformers 4 has no activation_checkpointing rename",
)
def test_a_run_on_a_machine_without_accelerator_prints_neither(
    tiny_model_dir: Any, tiny_dataset: Any, make_config: Any
) -> None:
    """TRL's own calls raise them (stock `DPOTrainer`); ours prints neither, and an unrelated warning raised inside
    the same calls (a callback's) still shows."""
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trl_conservative import ConservativeDPOTrainer

    class Warns(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            warnings.warn("a callback's own warning", UserWarning, stacklevel=1)

    def run(trainer_class: Any, config_class: Any) -> list[str]:
        # No use_cpu: on a machine without an accelerator transformers keeps dataloader_pin_memory=True.
        settings = {
            "use_cpu": False,
            "activation_checkpointing": True,
            "max_steps": 1,
            "eval_strategy": "steps",
        }
        args = make_config(config_class, eval_steps=1, **settings)
        with _recorded() as caught:
            trainer = trainer_class(
                str(tiny_model_dir),
                args=args,
                train_dataset=tiny_dataset,
                eval_dataset=tiny_dataset.select(range(4)),
                callbacks=[Warns()],
            )
            trainer.train()
            trainer.evaluate()
        return _messages(caught)

    def known(messages: list[str]) -> set[str]:
        return {m for m in messages if "gradient_checkpointing" in m or "'pin_memory'" in m}

    import torch

    stock = run(DPOTrainer, DPOConfig)
    ours = run(ConservativeDPOTrainer, None)  # None: ConservativeDPOConfig
    expected = {m for m, module in GRADIENT_CHECKPOINTING if module == "transformers.modeling_utils"}
    if not torch.accelerator.is_available():
        expected.add(PIN_MEMORY)
    assert known(stock) == expected  # what TRL's own calls print, which this test reproduces
    assert known(ours) == set(), known(ours)
    assert "a callback's own warning" in ours
