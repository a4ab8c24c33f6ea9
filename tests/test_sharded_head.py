"""The exact KL projects with the whole LM head when the model is sharded (`trl_conservative.kl.sharded_head`).

Unit tests fake each kind of shard (a ZeRO-3 placeholder, a DTensor, an FSDP1 flat-parameter view) so every
branch runs without DeepSpeed or a GPU. The multi-process tests train 2 CPU processes (gloo) with the head
really sharded, FSDP2 and DeepSpeed ZeRO-3, and check `kl/exact` against one unsharded process.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from process_workers import TORCHRUN_2, perturbed_copy, run_worker

from trl_conservative.kl import exact_token_kl_chunked, sharded_head
from trl_conservative.kl.sharded_head import full_heads

WORKER = Path(__file__).with_name("sharded_head_worker.py")
V, H = 11, 5


def _head() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(V, H, generator=g), torch.randn(V, generator=g)


# --- no sharding --------------------------------------------------------------------------------------------
def test_plain_tensors_pass_through_untouched() -> None:
    weight, bias = _head()
    with full_heads([(weight, bias), (weight, None)], models=(torch.nn.Linear(2, 2),)) as whole:
        assert whole[0][0] is weight and whole[0][1] is bias
        assert whole[1][0] is weight and whole[1][1] is None
        assert not torch.is_grad_enabled()


# --- DeepSpeed ZeRO-3 ---------------------------------------------------------------------------------------
class _Status(enum.Enum):  # the names DeepSpeed's ZeroParamStatus uses
    AVAILABLE = 1
    NOT_AVAILABLE = 2


def _zero3_param(full: torch.Tensor, ds_id: int) -> torch.nn.Parameter:
    """What ZeRO-3 leaves in the module outside the forward: an empty placeholder with the `ds_*` attributes."""
    param = torch.nn.Parameter(torch.empty(0))
    param.ds_id = ds_id  # type: ignore[attr-defined]
    param.ds_numel = full.numel()  # type: ignore[attr-defined]
    param.ds_shape = full.shape  # type: ignore[attr-defined]
    param.ds_status = _Status.NOT_AVAILABLE  # type: ignore[attr-defined]
    param.full_for_test = full  # type: ignore[attr-defined]
    return param


@pytest.fixture
def fake_deepspeed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A `deepspeed` whose `zero.GatheredParameters` fills the placeholders; returns its call log."""
    calls: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def gathered_parameters(params: list[Any], modifier_rank: int | None = 0) -> Iterator[None]:
        calls.append({"ids": [p.ds_id for p in params], "modifier_rank": modifier_rank})
        for p in params:
            p.data = p.full_for_test.clone()
            p.ds_status = _Status.AVAILABLE
        try:
            yield
        finally:
            for p in params:
                p.data = torch.empty(0)
                p.ds_status = _Status.NOT_AVAILABLE

    fake = types.SimpleNamespace(zero=types.SimpleNamespace(GatheredParameters=gathered_parameters))
    monkeypatch.setattr(sharded_head, "_deepspeed", lambda: fake)  # in place of `import deepspeed`
    return calls


def test_zero3_placeholders_are_gathered_once_for_reading(fake_deepspeed: list[dict[str, Any]]) -> None:
    weight, bias = _head()
    ref_weight = weight + 0.5
    w, b, rw = _zero3_param(weight, 1), _zero3_param(bias, 2), _zero3_param(ref_weight, 3)
    with full_heads([(w, b), (rw, None), (w, b)]) as whole:  # PEFT: a head listed twice
        (pw, pb), (qw, qb), (sw, _) = whole
        assert (
            torch.equal(pw, weight) and torch.equal(pb, bias) and torch.equal(qw, ref_weight) and qb is None
        )
        assert sw is pw
    # One gather of each parameter, read-only (modifier_rank=None: no rank's edits are broadcast back).
    assert fake_deepspeed == [{"ids": [1, 2, 3], "modifier_rank": None}]
    assert w.numel() == 0 and w.ds_status is _Status.NOT_AVAILABLE  # type: ignore[attr-defined]


def test_zero3_parameter_already_available_is_not_gathered_again(
    fake_deepspeed: list[dict[str, Any]],
) -> None:
    weight, _ = _head()
    w = _zero3_param(weight, 7)
    w.data, w.ds_status = weight, _Status.AVAILABLE  # type: ignore[attr-defined]  # e.g. tied to embed_tokens
    with full_heads([(w, None)]) as whole:
        assert whole[0][0] is w
    assert fake_deepspeed == []


def test_trainer_projects_with_the_gathered_zero3_head(fake_deepspeed: list[dict[str, Any]]) -> None:
    """`ConservativeDPOTrainer._exact_kl_rows` with ZeRO-3 placeholders captured by the hooks: same KL as whole."""
    from trl_conservative.trainer.taps import HiddenCapture
    from trl_conservative.trainer.trainer import ConservativeDPOTrainer

    weight, bias = _head()
    ref_weight = weight + 0.1 * torch.randn(V, H, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    policy_hidden, ref_hidden = torch.randn(4, 7, H, generator=g), torch.randn(4, 7, H, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
    policy = HiddenCapture(policy_hidden, _zero3_param(weight, 1), _zero3_param(bias, 2))
    reference = HiddenCapture(ref_hidden, _zero3_param(ref_weight, 3), None)
    trainer = types.SimpleNamespace(
        precompute_ref_logps=False,
        _kl_transforms=(lambda z: z, lambda z: z),
        kl=types.SimpleNamespace(chunk_size=3),
        model_wrapped=None,
        model=None,
        ref_model=None,
    )
    rows = ConservativeDPOTrainer._exact_kl_rows(trainer, policy, reference, mask)  # type: ignore[arg-type]
    expected = exact_token_kl_chunked(
        policy_hidden[:, :-1],
        ref_hidden[:, :-1],
        mask,
        policy_weight=weight,
        ref_weight=ref_weight,
        policy_bias=bias,
    )
    torch.testing.assert_close(rows, expected)
    assert bool((rows > 0).all()) and len(fake_deepspeed) == 1


# --- FSDP2 (DTensor) ----------------------------------------------------------------------------------------
class _FakeDTensor(torch.Tensor):
    """Stands in for a DTensor shard: `full_tensor()` returns the whole tensor and counts the all-gathers."""

    gathers = 0
    whole: torch.Tensor

    def full_tensor(self) -> torch.Tensor:
        type(self).gathers += 1
        return self.whole


def test_dtensor_is_gathered_with_full_tensor_once() -> None:
    weight, _ = _head()
    shard = weight[: V // 2].clone().as_subclass(_FakeDTensor)
    shard.whole = weight
    _FakeDTensor.gathers = 0
    with full_heads([(shard, None), (shard, None)]) as whole:
        assert whole[0][0] is weight and whole[1][0] is weight
    assert _FakeDTensor.gathers == 1


def test_freed_fsdp2_head_is_unsharded_for_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook saw FSDP2's unsharded parameter and its unit resharded after the forward: unshard it again."""
    weight, _ = _head()
    captured = weight.clone()
    captured.untyped_storage().resize_(0)  # what FSDP2's reshard leaves in the tensor the hook kept
    calls: list[str] = []

    class FakeFSDPModule(torch.nn.Module):
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.name = name
            self.weight = torch.nn.Parameter(
                torch.zeros(shape)
            )  # a DTensor in FSDP2: global shape, local piece

        def unshard(self) -> None:
            calls.append(f"unshard {self.name}")
            if self.name == "head":
                captured.untyped_storage().resize_(weight.numel() * weight.element_size())
                captured.copy_(weight)

        def reshard(self) -> None:
            calls.append(f"reshard {self.name}")
            if self.name == "head":
                captured.untyped_storage().resize_(0)

    model = torch.nn.Sequential(
        FakeFSDPModule("embed", (V, H)), FakeFSDPModule("norm", (H,)), FakeFSDPModule("head", (V, H))
    )
    monkeypatch.setattr(sharded_head, "_fsdp2_class", lambda: FakeFSDPModule)
    with full_heads([(captured, None)], models=(model,)) as whole:
        assert whole[0][0] is captured and torch.equal(captured, weight)
    # The head (last) is tried first and suffices: the embeddings of the same shape stay sharded.
    assert calls == ["unshard head", "reshard head"]
    assert captured.untyped_storage().nbytes() == 0


def test_freed_fsdp1_view_is_summoned_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP1 with `use_orig_params=False`: the hook kept a view of the unit's unsharded flat parameter, freed
    when the unit resharded. Summoning that unit re-allocates the same storage; a unit without it is let go."""
    import torch.distributed.fsdp  # noqa: F401

    weight, _ = _head()
    flat = torch.cat([torch.randn(3), weight.flatten()])  # the unit's unsharded flat parameter: [norm, head]
    view = flat[3:].view(V, H)  # what the module attribute (and the hook) holds
    flat.untyped_storage().resize_(0)
    events: list[str] = []

    class FakeFSDP(torch.nn.Module):
        def __init__(self, name: str, module: torch.nn.Module) -> None:
            super().__init__()
            self.name, self.wrapped = name, module

        @staticmethod
        @contextlib.contextmanager
        def summon_full_params(unit: Any, **kwargs: Any) -> Iterator[None]:
            events.append(f"summon {unit.name} {sorted(kwargs.items())}")
            if unit.name == "tail":
                flat.untyped_storage().resize_((3 + V * H) * 4)
                flat[3:].copy_(weight.flatten())
            yield
            events.append(f"release {unit.name}")
            if unit.name == "tail":
                flat.untyped_storage().resize_(0)

        @staticmethod
        def fsdp_modules(module: torch.nn.Module) -> list[Any]:
            return [m for m in module.modules() if isinstance(m, FakeFSDP)]

    head = torch.nn.Module()
    head.weight = view  # FSDP1 sets plain tensor attributes, not parameters  # type: ignore[assignment]
    other = torch.nn.Embedding(
        V, H
    )  # same shape as the head, its unit's storage intact; last, so tried first
    model = torch.nn.Sequential(FakeFSDP("tail", head), FakeFSDP("other", other))
    monkeypatch.setattr(sharded_head, "_fsdp1_class", lambda: FakeFSDP)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with full_heads([(view, None)], models=(model,)) as whole:
        assert torch.equal(whole[0][0], weight)
    kwargs = "[('recurse', False), ('writeback', False)]"
    assert events == [f"summon other {kwargs}", "release other", f"summon tail {kwargs}", "release tail"]


def test_freed_head_nobody_brings_back_is_a_clear_error() -> None:
    captured = torch.randn(V, H)
    captured.untyped_storage().resize_(0)
    with (
        pytest.raises(RuntimeError, match="freed"),
        full_heads([(captured, None)], models=(torch.nn.Linear(H, V),)),
    ):
        pass


# --- FSDP1 --------------------------------------------------------------------------------------------------
def test_fsdp1_unit_owning_the_head_is_summoned_without_recursion(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.fsdp  # noqa: F401  (the module is imported wherever FSDP1 wrapped a model)

    weight, _ = _head()
    head = torch.nn.Linear(H, V, bias=False)
    head.weight.data = weight[:3].flatten().clone()  # this rank's piece of the flat parameter, flattened
    inner = torch.nn.Sequential(head)
    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), inner)
    summoned: list[tuple[Any, dict[str, Any]]] = []

    class FakeFSDP:
        @staticmethod
        def fsdp_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
            return [outer, inner] if module is outer else []  # pre-order, as FSDP's own

        @staticmethod
        @contextlib.contextmanager
        def summon_full_params(unit: Any, **kwargs: Any) -> Iterator[None]:
            summoned.append((unit, kwargs))
            head.weight.data = weight
            yield
            head.weight.data = weight[:3].flatten().clone()

    monkeypatch.setattr(sharded_head, "_fsdp1_class", lambda: FakeFSDP)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with full_heads([(head.weight, None)], models=(outer, None)) as whole:
        assert torch.equal(whole[0][0], weight)
    assert summoned == [(inner, {"recurse": False, "writeback": False})]


# --- 2 CPU processes ----------------------------------------------------------------------------------------
def _train(mode: str, procs: int, lr: float, policy: Path, reference: Path, tmp: Path) -> dict[str, Any]:
    """Run the worker (alone, or under torchrun with 2 processes): 4 pairs per step either way."""
    out = tmp / f"{mode}-{procs}-{lr}" / "metrics.json"
    out.parent.mkdir()
    args = [str(WORKER), mode, str(policy), str(reference), str(out), str(4 // procs), str(lr)]
    assert procs in (1, 2)
    run_worker([*([sys.executable] if procs == 1 else TORCHRUN_2), *args], cwd=tmp)
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["world_size"] == procs
    assert [step["step"] for step in result["train"]] == [1, 2]
    return result


def _assert_same_kl(sharded: dict[str, Any], whole: dict[str, Any], steps: int = 2) -> None:
    for step_sharded, step_whole in list(zip(sharded["train"], whole["train"], strict=True))[:steps]:
        assert step_whole["kl/exact"] > 1e-3  # the policy differs from the reference
        assert step_sharded["kl/exact"] >= 0
        assert step_sharded["kl/exact"] == pytest.approx(step_whole["kl/exact"], abs=1e-5), step_whole["step"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("sharded-head")
    perturbed_copy(tiny_model_dir, tmp / "policy")
    return tmp


@pytest.fixture(scope="module")
def unsharded_training(work: Path, tiny_model_dir: Path) -> dict[str, Any]:
    """One process, no sharding, the FSDP2 runs' hand-written loop, lr > 0."""
    return _train("manual", 1, 1e-2, work / "policy", tiny_model_dir, work)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("layout", "seen"),
    [("fsdp2", "Parameter"), ("fsdp2_reshard", "Parameter freed"), ("fsdp2_head_alone", "DTensor")],
)
def test_fsdp2_exact_kl_matches_one_unsharded_process(
    layout: str, seen: str, work: Path, tiny_model_dir: Path, unsharded_training: dict[str, Any]
) -> None:
    """FSDP2 (`fully_shard`, 2 CPU processes), each rank holding half of every parameter between forwards.

    `seen` is what the hook handed to the gather (see the worker's `shard_fsdp2`): the whole unsharded head
    (accelerate's layout), that tensor freed by a reshard after the forward, or the DTensor shard. The policy
    trains (lr > 0), so the second step's KL is right only if the updated shards are gathered. With the head a
    unit of its own only the first step is compared: TRL's fused head reads that weight without calling the
    module, so FSDP2 never reduce-scatters its gradient and the ranks' updates differ from one process's (at
    lr = 0 both steps match).
    """
    whole = unsharded_training
    sharded = _train(layout, 2, 1e-2, work / "policy", tiny_model_dir, work)
    assert sharded["head_type"] == "DTensor" and sharded["head_local_numel"] < whole["head_local_numel"]
    assert sharded["heads_gathered"] == [seen]
    _assert_same_kl(sharded, whole, steps=1 if layout == "fsdp2_head_alone" else 2)
    assert whole["train"][0]["kl/exact"] != pytest.approx(whole["train"][1]["kl/exact"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install deepspeed)"
)
def test_zero3_exact_kl_matches_one_unsharded_process(work: Path, tiny_model_dir: Path) -> None:
    """DeepSpeed ZeRO-3 on its CPU accelerator (2 processes, gloo) through `trainer.train()`.

    Outside the forward each rank's LM head is a 0-element placeholder: before the gather the projection
    failed with "size mismatch, got input (7), mat (7x32), vec (0)". The learning rate is 0, so both runs
    keep the same weights (as in `test_kl_multiprocess.py`); the FSDP2 test covers gathering updated shards.
    """
    whole = _train("trainer", 1, 0.0, work / "policy", tiny_model_dir, work)
    sharded = _train("zero3", 2, 0.0, work / "policy", tiny_model_dir, work)
    assert sharded["distributed_type"] == "DistributedType.DEEPSPEED" and sharded["head_local_numel"] == 0
    # The heads reach the gather as empty placeholders (seen here: the reference's on every step, the policy's on
    # the first); a head ZeRO-3 still holds gathered (status AVAILABLE) is used as it is.
    assert "Parameter empty" in sharded["heads_gathered"]
    _assert_same_kl(sharded, whole)
