"""The whole LM head of a sharded model, for a projection made outside the model's own forward.

The exact token KL projects final hidden states with the LM head weight its forward hook captured. Once the
forward is over, a sharded model no longer holds that weight whole:

- DeepSpeed ZeRO-3: the parameter is a 0-element placeholder (`ds_numel` holds its real size) until it is
  gathered with `deepspeed.zero.GatheredParameters` (what TRL's fused head does, inside the forward).
- FSDP2 (`fully_shard`): the parameter is a `DTensor` shard; `full_tensor()` all-gathers it (as TRL does). A hook
  that ran inside the forward may instead hold the unsharded parameter FSDP2 swapped in: it stays whole when the
  head's unit keeps its parameters after the forward (accelerate's layout), and is freed (storage of size 0) when
  that unit reshards after the forward; then the unit is unsharded again (`FSDPModule.unshard()`) for the block.
- FSDP1 (`FullyShardedDataParallel`): with `use_orig_params=True` the hook holds the original `Parameter`, which
  outside the forward is a view of this rank's piece of a flat parameter (possibly empty);
  `FSDP.summon_full_params` on the unit that owns it makes it whole. With `use_orig_params=False` (accelerate's
  FSDP1 default) the hook holds a plain view of the unsharded flat parameter: whole while its unit keeps it
  (the root does, between forward and backward), freed once the unit reshards; then the unit is summoned.

Every branch is a collective: all ranks must enter `full_heads` together, which holds when every rank
computes the KL on the same steps (the trainer decides that from the global step alone). A plain tensor
passes through untouched, at the cost of a few attribute checks.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["Head", "full_heads"]

T = TypeVar("T")

Head = tuple[torch.Tensor, torch.Tensor | None]
"""An LM head as `(weight, bias)`; `bias` is None for the usual bias-free head."""


@contextlib.contextmanager
def full_heads(heads: Sequence[Head], models: Iterable[Any] = ()) -> Iterator[list[Head]]:
    """Yield `heads` with every weight and bias whole, for reading only (gathered on every rank).

    `models` are the (wrapped) models the heads belong to, searched for the FSDP unit that owns a head; they
    may be left empty without FSDP. The same tensor listed twice (PEFT: the policy and its reference share the
    head) is gathered once. The yielded tensors are valid only inside the block.
    """
    models = [m for m in models if isinstance(m, torch.nn.Module)]
    tensors = [t for head in heads for t in head if t is not None]
    zero3 = _unique(t for t in tensors if _is_zero3_partitioned(t))
    units = _fsdp1_units(tensors, models)
    with contextlib.ExitStack() as stack:
        if zero3:
            stack.enter_context(_deepspeed().zero.GatheredParameters(zero3, modifier_rank=None))
        for unit in units:
            stack.enter_context(_fsdp1_class().summon_full_params(unit, recurse=False, writeback=False))
        freed = [t for t in tensors if _storage_freed(t)]
        if freed:
            _revive(freed, models, stack)
        gathered: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            yield [(_whole(weight, gathered), _whole_optional(bias, gathered)) for weight, bias in heads]


def _whole(tensor: torch.Tensor, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)  # a DTensor: FSDP2 (or tensor parallelism)
    if full_tensor is None:
        return tensor
    if id(tensor) not in cache:
        whole = full_tensor()
        assert isinstance(whole, torch.Tensor)
        cache[id(tensor)] = whole
    return cache[id(tensor)]


def _whole_optional(tensor: torch.Tensor | None, cache: dict[int, torch.Tensor]) -> torch.Tensor | None:
    return None if tensor is None else _whole(tensor, cache)


def _unique(items: Iterable[T]) -> list[T]:
    """Each item once, by identity, in first-seen order (ZeRO-3 mishandles a parameter listed twice in one gather;
    an FSDP unit owning several wanted parameters is summoned once)."""
    return list({id(item): item for item in items}.values())


def _is_zero3_partitioned(tensor: torch.Tensor) -> bool:
    """A ZeRO-3 parameter not gathered right now (a tied or persisted one may already be `AVAILABLE`)."""
    if not hasattr(tensor, "ds_id"):
        return False
    status = getattr(tensor, "ds_status", None)
    return getattr(status, "name", None) != "AVAILABLE"


def _storage_freed(tensor: torch.Tensor) -> bool:
    """A plain tensor with elements but no storage left: an FSDP2 unsharded parameter after its unit resharded."""
    if hasattr(tensor, "full_tensor") or hasattr(tensor, "ds_id") or tensor.numel() == 0:
        return False
    try:
        return tensor.untyped_storage().nbytes() == 0
    except (RuntimeError, NotImplementedError):  # a tensor subclass without a plain storage
        return False


def _revive(
    freed: Sequence[torch.Tensor], models: Sequence[torch.nn.Module], stack: contextlib.ExitStack
) -> None:
    """Unshard the FSDP units that bring `freed` back, until `stack` closes.

    FSDP2 keeps one unsharded parameter per parameter, and FSDP1 one unsharded flat parameter per unit, and both
    re-allocate that same storage on each unshard: the tensor the hook saw becomes whole again. The candidates are
    the units owning a module whose `weight` or `bias` has a freed tensor's shape, tried from the last (the LM
    head comes after the input embeddings, which may share its shape) until every freed tensor is back; a unit
    that brings nothing back is resharded at once. Every rank makes the same choices, so the collectives match.
    """

    def still_freed() -> int:
        return sum(_storage_freed(t) for t in freed)

    for unit in reversed(_units_holding_shapes({tuple(t.shape) for t in freed}, models)):
        before = still_freed()
        if before == 0:
            break
        unit_stack = contextlib.ExitStack()
        unit_stack.enter_context(_unsharded(unit))
        if still_freed() < before:
            stack.enter_context(unit_stack)  # resharded when the caller's block ends
        else:
            unit_stack.close()  # this unit holds none of them
    if still_freed():
        raise RuntimeError(
            "The LM head captured during the forward was freed (its FSDP unit resharded after the forward) and no "
            "FSDP unit of these models brings it back: the exact KL cannot project with it."
        )


def _units_holding_shapes(shapes: set[tuple[int, ...]], models: Sequence[torch.nn.Module]) -> list[Any]:
    """FSDP1 and FSDP2 units (each once, in module order) owning a module whose weight or bias has one of `shapes`."""
    kinds = _fsdp_kinds()
    units: dict[int, Any] = {}

    def visit(module: torch.nn.Module, owner: Any) -> None:
        if isinstance(module, kinds):
            owner = module
        if owner is not None:
            held = [
                getattr(module, name, None) for name in ("weight", "bias")
            ]  # FSDP1 views are plain attributes
            if any(isinstance(t, torch.Tensor) and tuple(t.shape) in shapes for t in held):
                units.setdefault(id(owner), owner)
        for child in module.children():
            visit(child, owner)

    for model in models:
        visit(model, None)
    return list(units.values())


@contextlib.contextmanager
def _unsharded(unit: Any) -> Iterator[None]:
    fsdp1 = _fsdp1_class()
    if isinstance(unit, fsdp1):
        with fsdp1.summon_full_params(unit, recurse=False, writeback=False):
            yield
        return
    unit.unshard()  # FSDP2: not recursive
    try:
        yield
    finally:
        unit.reshard()


def _fsdp_kinds() -> tuple[type, ...]:
    return (_fsdp2_class(), _fsdp1_class())


def _fsdp2_class() -> Any:
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def _deepspeed() -> Any:
    import deepspeed  # only reached for a parameter DeepSpeed itself created

    return deepspeed


def _fsdp1_class() -> Any:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel


def _fsdp1_units(tensors: Sequence[torch.Tensor], models: Iterable[Any]) -> list[Any]:
    """The innermost FSDP1 unit owning each of `tensors` (matched by identity), each unit once.

    FSDP1 keeps the original `Parameter` objects with `use_orig_params=True` (accelerate's default), so a
    captured weight is found among its unit's parameters. With `use_orig_params=False` the module attribute is a
    plain view that no unit lists: it is not found, and is used as captured (the root unit, which holds the
    LM head under the usual wrapping, keeps it whole between the forward and the backward).
    """
    if not tensors or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return []
    if "torch.distributed.fsdp" not in sys.modules:  # nothing wrapped with FSDP in this process
        return []
    fsdp = _fsdp1_class()
    wanted = {id(t) for t in tensors}
    owners: dict[int, Any] = {}
    for model in models:
        if model is None or not isinstance(model, torch.nn.Module):
            continue
        # Outer units come first, so an inner unit's claim overrides its ancestors'.
        for unit in fsdp.fsdp_modules(model):
            for param in unit.parameters():
                if id(param) in wanted:
                    owners[id(param)] = unit
    return _unique(owners.values())
