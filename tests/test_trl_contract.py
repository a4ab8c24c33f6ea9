"""Fails loudly when the installed TRL no longer has the shape trl_conservative/trainer/ relies on (the door: `trl_compat.py`).

If this fails after a TRL upgrade, read the new `DPOTrainer._compute_loss` before changing anything else.
"""

from __future__ import annotations

import dataclasses
import inspect

import trl
from trl import DPOConfig, DPOTrainer

from trl_conservative.trainer.trl_compat import trl_native_losses

SOURCE = inspect.getsource(DPOTrainer._compute_loss)


def test_trl_version_is_the_one_we_build_on() -> None:
    assert trl.__version__.startswith("1.16."), f"built and tested on TRL 1.16.x, found {trl.__version__}"


def test_compute_loss_is_the_private_override_point() -> None:
    assert list(inspect.signature(DPOTrainer._compute_loss).parameters) == [
        "self",
        "model",
        "inputs",
        "return_outputs",
    ]
    assert "self._compute_loss(model, inputs, return_outputs)" in inspect.getsource(DPOTrainer.compute_loss)
    assert not hasattr(DPOTrainer, "dpo_loss"), (
        "dpo_loss is back: the TRL <= 0.28 override point exists again"
    )


def test_loss_loop_reads_loss_types_and_weights_and_starts_at_zero() -> None:
    assert "loss = 0.0" in SOURCE
    assert "zip(self.loss_types, self.loss_weights, strict=True)" in SOURCE
    assert "loss += per_sequence_loss.mean() * loss_weight" in SOURCE
    assert "return (loss, outputs) if return_outputs else loss" in SOURCE


def test_forwards_we_tap() -> None:
    # Policy: `model(...)`; reference: `self.ref_model(...)`, or `self.model(...)` under `use_adapter` with PEFT;
    # precomputed: read from the batch. All through the fused LM head, per-token log-probs in `.log_probs`.
    assert "outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)" in SOURCE
    assert "self.ref_model(**ref_model_kwargs, labels=labels, fused_lm_head=True)" in SOURCE
    assert "self.model(**ref_model_kwargs, labels=labels, fused_lm_head=True)" in SOURCE
    assert 'inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]' in SOURCE
    assert "if self.precompute_ref_logps:" in SOURCE
    assert "outputs.log_probs[:, -seq_len:]" in SOURCE
    assert "seq_len = shift_completion_mask.size(1)" in SOURCE


def test_native_loss_names_are_read_from_trl() -> None:
    names = trl_native_losses()
    assert {"sigmoid", "ipo", "hinge", "robust", "exo_pair"} <= names
    assert len(names) >= 10


def test_config_fields_we_read() -> None:
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    assert {
        "beta",
        "label_smoothing",
        "loss_type",
        "loss_weights",
        "ld_alpha",
        "f_divergence_type",
        "use_weighting",
        "precompute_ref_log_probs",
    } <= fields


def test_metrics_and_model_card_hooks() -> None:
    assert 'self._metrics[mode]["rewards/margins"]' in SOURCE
    assert isinstance(DPOTrainer._tag_names, list) and {"trl", "dpo"} <= set(DPOTrainer._tag_names)
    assert {"title", "id", "citation"} <= set(DPOTrainer._paper)


def test_trl_private_modules_are_imported_only_behind_the_door() -> None:
    """The ruff banned-api rule, checked here too: `trl.trainer` / `trl.scripts` only inside trl_conservative/trainer/."""
    import ast
    from pathlib import Path

    package = Path(__file__).parents[1] / "trl_conservative"
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "trainer" and path.parent.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [
                f"{path.relative_to(package)}: {n}"
                for n in names
                if n.startswith(("trl.trainer", "trl.scripts"))
            ]
    assert not offenders, offenders
