"""Which exceptions of the libraries a run drives are its settings refused, and the line for running out of memory.

transformers, TRL, PEFT and torch refuse a value by raising from their own code (a `ValueError` mostly): the calls of
`trl-conservative run` that hand them the user's settings (building the configs, building the trainer, the setup at
the start of `train()`) turn such an exception into a one-line `ConfigError` (exit status 2), each at that call. An
exception raised in this package is never turned into one: our refusals are `ConfigError`s from the start, so
anything else of ours is a bug and keeps its traceback. Out of memory is neither a setting refused nor a bug: one
line naming the settings that lower it, exit status 1 (`cli.py`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["OUT_OF_MEMORY_STATUS", "out_of_memory_line", "raised_here", "refused_by_library"]

OUT_OF_MEMORY_STATUS = 1
_PACKAGE = __name__.split(".")[0]


def raised_here(exc: BaseException) -> bool:
    """Whether `exc` was raised by this package's code (the innermost frame of its traceback is ours)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == _PACKAGE or module.startswith(f"{_PACKAGE}.")


def refused_by_library(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether `exc` is one of `kinds`, raised outside this package, and not out of memory."""
    return isinstance(exc, kinds) and not raised_here(exc) and not is_out_of_memory(exc)


def is_out_of_memory(exc: BaseException) -> bool:
    import sys

    torch = sys.modules.get("torch")  # nothing ran out of device memory where torch was never imported
    if torch is None:
        return False
    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError  # torch < 2.5: cuda only
    return isinstance(exc, kind)


def out_of_memory_line(exc: BaseException, training: Any) -> str | None:
    """One line for torch's out-of-memory error, naming the settings that lower memory; None for anything else."""
    if not is_out_of_memory(exc):
        return None
    sentences = " ".join(str(exc).split()).split(". ")
    detail = ". ".join(sentences[:2]).rstrip(".")[:200]  # "CUDA out of memory. Tried to allocate 2.00 GiB"
    # transformers 5 calls it activation_checkpointing (the old name still works but warns); 4.x gradient_checkpointing
    name = (
        "activation_checkpointing"
        if hasattr(training, "activation_checkpointing")
        else "gradient_checkpointing"
    )
    checkpointing = (
        f"{name} is already on"
        if getattr(training, name, False)
        else f"or set {name}: true (recomputes activations)"
    )
    return (
        f"out of memory ({detail or type(exc).__name__}). Lower per_device_train_batch_size (now "
        f"{training.per_device_train_batch_size}; raise gradient_accumulation_steps to keep the batch) or "
        f"per_device_eval_batch_size (now {training.per_device_eval_batch_size}), lower max_length (now "
        f"{training.max_length}), {checkpointing}."
    )
