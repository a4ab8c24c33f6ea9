"""The conformance kit for a loss: `check_loss` (every check, one error listing all that failed) and
`conformance_checks` (the same checks one by one, to parametrize a pytest test over).

    from trl_conservative.testing import KnownPoint, check_loss

    check_loss(MyLoss(), known_points=[KnownPoint.from_margin(0.0, loss=math.log(2))])

Nothing here imports pytest; torch is imported on use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from trl_conservative.errors import PluginError
from trl_conservative.losses.contract import (
    Loss,
    LossInputs,
    LossOutput,
    check_loss_declaration,
    loss_needs_reference,
    loss_params,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "ConformanceCheck",
    "KnownPoint",
    "LossConformanceError",
    "check_loss",
    "conformance_checks",
    "make_inputs",
]


_TENSOR_FIELDS = (
    "chosen_logps",
    "rejected_logps",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "chosen_lengths",
    "rejected_lengths",
)


class LossConformanceError(AssertionError):
    """A loss broke the loss contract; the message lists every failed check."""


@dataclass(frozen=True, kw_only=True)
class KnownPoint:
    """One pair at which the loss's value is known in closed form, checked in float64.

    Args:
        loss: the expected per-pair loss.
        chosen_logps: the policy's summed log-prob of the chosen completion.
        rejected_logps: the same for the rejected completion.
        ref_chosen_logps: the reference's summed log-prob of the chosen completion.
        ref_rejected_logps: the same for the rejected completion.
        chosen_length: the chosen completion's length in tokens.
        rejected_length: the rejected completion's length in tokens.
        beta: as in `LossInputs`.
        label_smoothing: as in `LossInputs`.
        params: loss options, over the declared defaults.
        chosen_reward: the expected chosen reward, checked when given.
        rejected_reward: the expected rejected reward, checked when given.
        tol: absolute tolerance.
    """

    loss: float
    chosen_logps: float = 0.0
    rejected_logps: float = 0.0
    ref_chosen_logps: float = 0.0
    ref_rejected_logps: float = 0.0
    chosen_length: int = 1
    rejected_length: int = 1
    beta: float = 0.1
    label_smoothing: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    tol: float = 1e-6

    @classmethod
    def from_margin(cls, h: float, *, loss: float, **kwargs: Any) -> KnownPoint:
        """The point with log-ratio margin h = r(y_w) - r(y_l): chosen log-ratio h, rejected log-ratio 0."""
        return cls(loss=loss, chosen_logps=h, **kwargs)


@dataclass(frozen=True)
class ConformanceCheck:
    """One named check; `run()` raises `AssertionError` (or the loss's own exception) when it fails."""

    name: str
    run: Callable[[], None]

    def __str__(self) -> str:
        return self.name


def make_inputs(
    loss: Loss | None = None,
    batch_size: int = 5,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
    params: Mapping[str, Any] | None = None,
    requires_grad: bool = True,
    scale: float = 1.0,
) -> LossInputs:
    """Random but realistic `LossInputs`: negative summed log-probs, lengths 1..20, the reference near the policy.

    `params` are laid over the defaults `loss` declares, as the trainer does. The policy log-probs are leaf
    tensors that require grad (unless `requires_grad=False`); the reference log-probs and lengths do not.
    `scale` multiplies the policy-reference gap, to move pairs into the saturated parts of a loss.
    """
    import torch

    dtype = dtype or torch.float64
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 21, (2, batch_size), generator=gen)
    ref = -lengths.to(dtype) * (0.5 + 2 * torch.rand(2, batch_size, generator=gen, dtype=dtype))
    policy = ref + scale * torch.randn(2, batch_size, generator=gen, dtype=dtype)
    chosen, rejected = (t.to(device).requires_grad_(requires_grad) for t in policy.detach().clone())
    return LossInputs(
        chosen_logps=chosen,
        rejected_logps=rejected,
        ref_chosen_logps=ref[0].to(device),
        ref_rejected_logps=ref[1].to(device),
        chosen_lengths=lengths[0].to(device),
        rejected_lengths=lengths[1].to(device),
        beta=beta,
        label_smoothing=label_smoothing,
        params=_params_for(loss, params),
    )


def _params_for(loss: Loss | None, overrides: Mapping[str, Any] | None) -> Mapping[str, Any]:
    values = {p.name: p.default for p in loss_params(loss)} if loss is not None else {}
    declared = {p.name: p for p in loss_params(loss)} if loss is not None else {}
    for key, value in (overrides or {}).items():
        if key not in declared:
            raise KeyError(f"{key!r} is not a declared parameter of the loss; declared: {sorted(declared)}")
        values[key] = declared[key].coerce(value)
    return MappingProxyType(values)


def _call(loss: Loss, inputs: LossInputs) -> LossOutput:
    out = loss(inputs)
    assert isinstance(out, LossOutput), f"the loss returned {type(out).__name__}, not a LossOutput"
    return out


def _fields(out: LossOutput) -> dict[str, torch.Tensor]:
    return {
        "losses": out.losses,
        "chosen_rewards": out.chosen_rewards,
        "rejected_rewards": out.rejected_rewards,
    }


def _stress_inputs(loss: Loss, dtype: torch.dtype) -> list[LossInputs]:
    """Pairs at the edges: long sequences, huge margins of both signs, a completion truncated to 0 tokens."""
    import torch

    def build(
        c: list[float],
        r: list[float],
        rc: list[float],
        rr: list[float],
        lc: list[int],
        lr: list[int],
        beta: float,
    ) -> LossInputs:
        return LossInputs(
            chosen_logps=torch.tensor(c, dtype=dtype, requires_grad=True),
            rejected_logps=torch.tensor(r, dtype=dtype, requires_grad=True),
            ref_chosen_logps=torch.tensor(rc, dtype=dtype),
            ref_rejected_logps=torch.tensor(rr, dtype=dtype),
            chosen_lengths=torch.tensor(lc),
            rejected_lengths=torch.tensor(lr),
            beta=beta,
            label_smoothing=0.1,
            params=_params_for(loss, None),
        )

    c = [-1e-4, -3000.0, -5.0, 0.0, -2500.0]
    r = [-3000.0, -1e-4, 0.0, -5.0, -2600.0]
    rc = [-2000.0, -10.0, -5.0, 0.0, -2400.0]
    rr = [-10.0, -2000.0, 0.0, -5.0, -2400.0]
    lc = [1, 4000, 3, 0, 3000]
    lr = [4000, 1, 0, 3, 3000]
    return [build(c, r, rc, rr, lc, lr, beta) for beta in (0.1, 10.0)]


def conformance_checks(
    loss: Loss,
    *,
    known_points: Iterable[KnownPoint] = (),
    skip: Iterable[str] = (),
    dtypes: Sequence[torch.dtype] | None = None,
    devices: Sequence[str] | None = None,
) -> list[ConformanceCheck]:
    """The checks `check_loss` runs, one `ConformanceCheck` each (parametrize a pytest test over them).

    Args:
        loss: the loss object, as your plugin registers it.
        known_points: pairs where the loss is known in closed form; at least one is required (e.g. h = 0).
        skip: names of checks to leave out, for a loss that deliberately breaks one (say why in your test).
        dtypes: the float dtypes to check (default float32 and float64).
        devices: the devices to check (default CPU, plus CUDA when available).
    """
    import torch

    dtypes = tuple(dtypes or (torch.float32, torch.float64))
    devices = tuple(devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]))
    points = tuple(known_points)
    skipped = set(skip)

    def declaration() -> None:
        try:
            check_loss_declaration(loss, f"loss {getattr(loss, 'name', loss)!r}")
        except PluginError as exc:
            raise AssertionError(str(exc)) from None
        citation = getattr(loss, "citation", None)
        assert citation is None or isinstance(citation, str), (
            f"citation must be a str or None, got {citation!r}"
        )

    def shapes() -> None:
        for batch_size in (1, 5):
            out = _call(loss, make_inputs(loss, batch_size))
            for key, value in _fields(out).items():
                assert isinstance(value, torch.Tensor), f"{key} is {type(value).__name__}, not a tensor"
                assert value.shape == (batch_size,), (
                    f"{key} has shape {tuple(value.shape)}, expected ({batch_size},)"
                )

    def dtype_and_device() -> None:
        for device in devices:
            for dtype in dtypes:
                out = _call(loss, make_inputs(loss, dtype=dtype, device=device))
                for key, value in _fields(out).items():
                    assert value.dtype == dtype, f"{key} is {value.dtype} for {dtype} inputs"
                    assert value.device.type == torch.device(device).type, (
                        f"{key} is on {value.device}, not {device}"
                    )

    def finite() -> None:
        for dtype in dtypes:
            cases = [make_inputs(loss, dtype=dtype, scale=s, seed=i) for i, s in enumerate((0.1, 1.0, 30.0))]
            for i, inputs in enumerate(cases + _stress_inputs(loss, dtype)):
                out = _call(loss, inputs)
                for key, value in _fields(out).items():
                    assert torch.isfinite(value).all(), (
                        f"{key} not finite for {dtype} case {i}: {value.tolist()}"
                    )
                if not out.losses.requires_grad:
                    continue  # policy_gradients reports it
                (grad_c, grad_r) = torch.autograd.grad(
                    out.losses.sum(), [inputs.chosen_logps, inputs.rejected_logps], allow_unused=True
                )
                for side, grad in (("chosen", grad_c), ("rejected", grad_r)):
                    if grad is not None:
                        assert torch.isfinite(grad).all(), f"gradient to {side}_logps not finite, case {i}"

    def policy_gradients() -> None:
        inputs = make_inputs(loss, scale=0.05)
        out = _call(loss, inputs)
        assert out.losses.requires_grad, (
            "no gradient reaches chosen_logps or rejected_logps: the losses are detached from the policy "
            "(a .detach(), .item() or torch.no_grad() in the formula?)"
        )
        grads = torch.autograd.grad(
            out.losses.sum(), [inputs.chosen_logps, inputs.rejected_logps], allow_unused=True
        )
        for side, grad in zip(("chosen_logps", "rejected_logps"), grads, strict=True):
            assert grad is not None and bool(grad.abs().sum() > 0), (
                f"no gradient reaches {side}: the loss would not train the policy (is it detached?)"
            )
            assert torch.isfinite(grad).all(), f"gradient to {side} is not finite"

    def no_hidden_parameters() -> None:
        out = _call(loss, make_inputs(loss, requires_grad=False))
        assert not out.losses.requires_grad, (
            "the loss requires grad although no input does: it holds trainable state of its own "
            "(an nn.Parameter or a tensor with requires_grad), which the trainer's optimizer never updates"
        )

    def rewards_detached() -> None:
        out = _call(loss, make_inputs(loss))
        for key in ("chosen_rewards", "rejected_rewards"):
            value = getattr(out, key)
            assert not value.requires_grad, f"{key} carries gradient; return it .detach()-ed"

    def inputs_unchanged() -> None:
        inputs = make_inputs(loss)
        before = {name: getattr(inputs, name).detach().clone() for name in _TENSOR_FIELDS}
        _call(loss, inputs)
        for name, value in before.items():
            assert torch.equal(getattr(inputs, name), value), f"the loss modified inputs.{name} in place"

    def per_pair() -> None:
        inputs = make_inputs(loss, 6)
        out = _call(loss, inputs)
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        permuted = replace(
            inputs,
            **{name: getattr(inputs, name).detach()[perm] for name in _TENSOR_FIELDS},
        )
        out_perm = _call(loss, permuted)
        for key, value in _fields(out).items():
            assert torch.allclose(_fields(out_perm)[key], value.detach()[perm]), (
                f"{key} is not computed pair by pair: permuting the batch changed the values, not only their order"
            )
        for i in range(2):
            single = replace(
                inputs,
                **{name: getattr(inputs, name).detach()[i : i + 1] for name in _TENSOR_FIELDS},
            )
            alone = _call(loss, single).losses
            assert torch.allclose(alone, out.losses.detach()[i : i + 1]), (
                f"pair {i} alone gets loss {alone.tolist()}, in the batch {out.losses[i].item()}: "
                "the loss must be computed pair by pair"
            )

    def reference_free() -> None:
        inputs = make_inputs(loss)
        other = replace(
            inputs,
            ref_chosen_logps=inputs.ref_chosen_logps * 3 - 7,
            ref_rejected_logps=inputs.ref_rejected_logps * 0.5 + 11,
        )
        a, b = _call(loss, inputs), _call(loss, other)
        for key, value in _fields(a).items():
            assert torch.equal(value, _fields(b)[key]), (
                f"{key} depends on the reference log-probs, but the loss declares needs_reference=False: "
                "the trainer passes zeros there. Declare needs_reference=True, or stop reading them."
            )

    def one(value: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor([value], dtype=dtype)

    def known_values() -> None:
        assert points, (
            "no known points given: pass known_points=[KnownPoint(...)] with the loss's closed-form value at a "
            "few pairs (e.g. at h = 0), or skip='known_points' and say why"
        )
        for i, kp in enumerate(points):
            inputs = LossInputs(
                chosen_logps=one(kp.chosen_logps),
                rejected_logps=one(kp.rejected_logps),
                ref_chosen_logps=one(kp.ref_chosen_logps),
                ref_rejected_logps=one(kp.ref_rejected_logps),
                chosen_lengths=one(kp.chosen_length, torch.int64),
                rejected_lengths=one(kp.rejected_length, torch.int64),
                beta=kp.beta,
                label_smoothing=kp.label_smoothing,
                params=_params_for(loss, kp.params),
            )
            out = _call(loss, inputs)
            expected = {
                "losses": kp.loss,
                "chosen_rewards": kp.chosen_reward,
                "rejected_rewards": kp.rejected_reward,
            }
            for key, want in expected.items():
                if want is None:
                    continue
                got = float(_fields(out)[key].item())
                assert math.isclose(got, want, rel_tol=0.0, abs_tol=kp.tol), (
                    f"known point {i} ({kp}): {key} = {got!r}, expected {want!r} (tol {kp.tol})"
                )

    checks = [
        ConformanceCheck("declaration", declaration),
        ConformanceCheck("shapes", shapes),
        ConformanceCheck("dtype_and_device", dtype_and_device),
        ConformanceCheck("finite", finite),
        ConformanceCheck("policy_gradients", policy_gradients),
        ConformanceCheck("no_hidden_parameters", no_hidden_parameters),
        ConformanceCheck("rewards_detached", rewards_detached),
        ConformanceCheck("inputs_unchanged", inputs_unchanged),
        ConformanceCheck("per_pair", per_pair),
        ConformanceCheck("known_points", known_values),
    ]
    if not loss_needs_reference(loss):
        checks.append(ConformanceCheck("reference_free", reference_free))
    unknown = skipped - {c.name for c in checks}
    if unknown:
        raise ValueError(
            f"skip names unknown checks {sorted(unknown)}; the checks are {[c.name for c in checks]}"
        )
    return [c for c in checks if c.name not in skipped]


def check_loss(
    loss: Loss,
    *,
    known_points: Iterable[KnownPoint] = (),
    skip: Iterable[str] = (),
    dtypes: Sequence[torch.dtype] | None = None,
    devices: Sequence[str] | None = None,
) -> list[str]:
    """Run every conformance check on `loss`; return the names of those that ran, or raise listing the failures.

    Raises:
        LossConformanceError: one line per failed check, with what to fix.
    """
    checks = conformance_checks(loss, known_points=known_points, skip=skip, dtypes=dtypes, devices=devices)
    failures = []
    for check in checks:
        try:
            check.run()
        except Exception as exc:  # report every failed check at once, not only the first
            failures.append(f"- {check.name}: {type(exc).__name__}: {exc}")
    if failures:
        name = getattr(loss, "name", repr(loss))
        raise LossConformanceError(
            f"loss {name!r} fails {len(failures)} conformance check(s):\n" + "\n".join(failures)
        )
    return [c.name for c in checks]
