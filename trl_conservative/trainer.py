"""`ConservativeDPOTrainer`: TRL's `DPOTrainer` with registry losses. The one module that touches TRL internals.

TRL 1.16 computes the DPO loss in the private `DPOTrainer._compute_loss`. We keep that method as it is (fused
LM head, reference handling, PEFT, metrics, accelerate) and only:
  1. hand TRL the `loss_type` entries it computes natively (e.g. `hinge`), with their weights;
  2. tap the policy's and the reference's forward outputs while TRL runs (forward hooks), so no forward is
     repeated and no `[2B, L, V]` logits tensor is built;
  3. add our registry losses, computed from the tapped per-token log-probs, to TRL's loss.
`tests/test_trl_contract.py` fails loudly when the installed TRL no longer has the shape relied on here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils import logging
from trl import DPOTrainer

from .config import LossPlan, resolve_losses
from .losses.contract import LossInputs
from .losses.sigmoid import DPO_CITATION
from .model_card import card_data_from_trainer, render_model_card

logger = logging.get_logger(__name__)

TAG = "trl-conservative"


@functools.cache
def trl_native_losses() -> frozenset[str]:
    """The loss names TRL's own `_compute_loss` implements, read from its source (never a hand-kept list)."""
    source = inspect.getsource(DPOTrainer._compute_loss)
    return frozenset(re.findall(r'loss_type == "(\w+)"', source))


@dataclass
class ForwardTap:
    """Outputs of the model calls made while TRL computes one loss, in call order."""

    policy: list[Any] = field(default_factory=list)
    reference: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def tap_forwards(policy: torch.nn.Module, reference: torch.nn.Module | None) -> Iterator[ForwardTap]:
    """Record what `policy` and `reference` return while the block runs (forward hooks, removed on exit)."""
    tap = ForwardTap()
    handles = [policy.register_forward_hook(lambda _m, _a, out: tap.policy.append(out))]
    if reference is not None:
        handles.append(reference.register_forward_hook(lambda _m, _a, out: tap.reference.append(out)))
    try:
        yield tap
    finally:
        for handle in handles:
            handle.remove()


class ConservativeDPOTrainer(DPOTrainer):
    """Drop-in [`~trl.DPOTrainer`] whose `loss_type` entries may name any registered loss.

    Same constructor and config as `trl.DPOTrainer` (a plain `DPOConfig` works; [`ConservativeDPOConfig`]
    adds `loss_params`). Built-in `sigmoid`, `cdpo` and `ipo` and plugin losses are computed from the
    per-token log-probs TRL's fused LM head already produced; any other TRL loss name (hinge, robust, ...)
    runs on TRL's own code. `sigmoid` with `label_smoothing > 0` is cDPO, as it was in TRL <= 0.28.
    """

    _tag_names = ["trl", "dpo", TAG]

    def __init__(self, model: Any, ref_model: Any = None, args: Any = None, *pargs: Any, **kwargs: Any) -> None:
        # Validate the loss settings before TRL loads any weights.
        self.loss_plan: LossPlan = resolve_losses(args) if args is not None else _default_plan()
        super().__init__(model, ref_model, args, *pargs, **kwargs)
        if args is None:
            self.loss_plan = resolve_losses(self.args)
        # TRL's `_compute_loss` loops over these: give it only the terms it computes natively.
        self.loss_types = [e.name for e in self.loss_plan.native]
        self.loss_weights = [e.weight for e in self.loss_plan.native]
        if self.args.label_smoothing > 0 and any(e.name == "sigmoid" for e in self.loss_plan.custom):
            logger.warning(
                f"loss_type='sigmoid' with label_smoothing={self.args.label_smoothing} trains conservative DPO "
                "(cDPO, Mitchell 2023), as TRL <= 0.28 did; TRL >= 0.29 silently ignores label_smoothing here. "
                "Use loss_type='cdpo' to say so explicitly."
            )
        self._paper = {**self._paper, "citation": "\n\n".join([DPO_CITATION, *self._loss_citations()])}

    def _loss_citations(self) -> list[str]:
        return [c for c in dict.fromkeys(self.loss_plan.citations()) if c != DPO_CITATION]

    # --- the model card -----------------------------------------------------------------------------------
    def create_model_card(  # type: ignore[override]  # TRL's signature, not transformers'
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
    ) -> None:
        """Write `output_dir/README.md` on the main process: TRL's card plus loss, settings, metrics and KL.

        TRL calls this before every checkpoint and `push_to_hub` after saving; `save_model` calls it too. Its
        quick start loads the hub id when the model was pushed, else the folder the model was last saved to.
        """
        if dataset_name is not None:
            self._card_dataset_name = dataset_name
        self._write_model_card(str(self.args.output_dir), model_name=model_name, tags=tags)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, then write the card into the saved folder (and into `output_dir`)."""
        super().save_model(output_dir, _internal_call)
        saved = os.path.abspath(str(output_dir if output_dir is not None else self.args.output_dir))
        self._card_model_dir = saved
        self._write_model_card(saved)
        if saved != os.path.abspath(str(self.args.output_dir)):  # a checkpoint: output_dir's card shows it
            self._write_model_card(str(self.args.output_dir))

    def _write_model_card(
        self, folder: str, model_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        if not self.is_world_process_zero():
            return
        output_dir = os.path.abspath(str(self.args.output_dir))
        if model_name is None:  # as TRL's `_save_checkpoint` names it
            hub_id = self.args.hub_model_id
            model_name = hub_id.split("/")[-1] if hub_id else os.path.basename(output_dir)
        data = card_data_from_trainer(
            self,
            model_name=model_name,
            model_location=self.hub_model_id or str(getattr(self, "_card_model_dir", output_dir)),
            dataset_name=getattr(self, "_card_dataset_name", None),
            tags=[tags] if isinstance(tags, str) else (tags or ()),
        )
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(render_model_card(data))

    # --- the loss -----------------------------------------------------------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        if not self.loss_plan.custom:
            return super()._compute_loss(model, inputs, return_outputs)
        policy = self.accelerator.unwrap_model(model)
        with tap_forwards(policy, self.ref_model) as tap:
            result = super()._compute_loss(model, inputs, return_outputs)
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self._custom_loss(self._loss_inputs(inputs, tap))
        return (loss, outputs) if return_outputs else loss

    def _loss_inputs(self, inputs: dict[str, Any], tap: ForwardTap) -> LossInputs:
        completion_mask = inputs["completion_mask"]
        seq_len = completion_mask.size(1) - 1
        # The first policy call is TRL's policy forward (a later one may be the PEFT reference, adapter off).
        logps = tap.policy[0].log_probs[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_out = tap.reference[0] if tap.reference else tap.policy[1]
            ref_chosen_logps, ref_rejected_logps = ref_out.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        chosen_lengths, rejected_lengths = completion_mask.sum(dim=1).chunk(2, dim=0)
        return LossInputs(
            chosen_logps=chosen_logps,
            rejected_logps=rejected_logps,
            ref_chosen_logps=ref_chosen_logps,
            ref_rejected_logps=ref_rejected_logps,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            beta=float(self.beta),
            label_smoothing=float(self.label_smoothing),
        )

    def _custom_loss(self, base: LossInputs) -> torch.Tensor:
        total: torch.Tensor | float = 0.0
        for entry in self.loss_plan.custom:
            assert entry.info is not None
            inputs = base if not entry.params else _with_params(base, entry.params)
            output = entry.info.loss(inputs)
            total = total + output.losses.mean() * entry.weight
        assert isinstance(total, torch.Tensor)
        return total


def _with_params(base: LossInputs, params: Any) -> LossInputs:
    from dataclasses import replace

    return replace(base, params=params)


def _default_plan() -> LossPlan:
    from trl import DPOConfig

    return resolve_losses(DPOConfig(output_dir="unused", use_cpu=True, report_to="none"))
