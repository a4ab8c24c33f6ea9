"""Fails loudly when the installed TRL no longer has the shape trl_conservative/trainer/ relies on (the door: `trl_compat.py`).

If this fails after a TRL upgrade, read the new `DPOTrainer._compute_loss` before changing anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trl
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from trl import DPOConfig, DPOTrainer

from trl_conservative.errors import TrlConservativeError, UnsupportedTRLError
from trl_conservative.trainer.trl_compat import (
    OLDEST_TESTED_TRL,
    SUPPORTED_TRL,
    trl_native_losses,
    unsupported_trl_message,
)

pytestmark = pytest.mark.core

SOURCE = inspect.getsource(DPOTrainer._compute_loss)
ROOT = Path(__file__).parents[1]


def test_installed_trl_is_in_the_supported_range() -> None:
    assert Version(trl.__version__) in SpecifierSet(SUPPORTED_TRL, prereleases=True), (
        f"tested on TRL {SUPPORTED_TRL} (trl_compat.SUPPORTED_TRL), found {trl.__version__}"
    )


def _requirement(name: str) -> Requirement:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == name)


def test_pyproject_declares_the_supported_range() -> None:
    assert _requirement("trl").specifier == SpecifierSet(SUPPORTED_TRL)


def test_ci_tests_the_oldest_supported_trl() -> None:
    lower = [s.version for s in SpecifierSet(SUPPORTED_TRL) if s.operator == ">="]
    assert lower and Version(OLDEST_TESTED_TRL) == Version(lower[0])
    assert f"trl=={OLDEST_TESTED_TRL}" in (ROOT / ".ci" / "run").read_text()
    transformers_floor = [s.version for s in _requirement("transformers").specifier if s.operator == ">="]
    assert f"transformers=={transformers_floor[0]}.0" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("version", ["1.16.0", "1.16.3", "1.16.1.dev0"])
def test_supported_versions_pass(version: str) -> None:
    assert unsupported_trl_message(version) is None


@contextlib.contextmanager
def _fresh_trainer_modules() -> Iterator[None]:
    """Import the trainer subpackage's modules anew inside, then put the originals back."""
    saved = {k: v for k, v in sys.modules.items() if k.startswith("trl_conservative.trainer.")}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [k for k in sys.modules if k.startswith("trl_conservative.trainer.")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.mark.parametrize("version", ["0.23.0", "1.15.0", "1.17.0", "2.0.0.dev0"])
def test_unsupported_trl_fails_the_import_with_one_line(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trl, "__version__", version)
    with _fresh_trainer_modules(), pytest.raises(UnsupportedTRLError) as caught:
        importlib.import_module("trl_conservative.trainer.trainer")
    message = str(caught.value)
    assert message == (
        f"TRL {version} is installed, but trl-conservative supports TRL {SUPPORTED_TRL} only. "
        f'Fix: pip install "trl{SUPPORTED_TRL}" (support for TRL 0.23-0.28 is planned).'
    )
    assert "\n" not in message
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, TrlConservativeError)
    with _fresh_trainer_modules(), pytest.raises(UnsupportedTRLError, match=f"TRL {version} is installed"):
        from trl_conservative import ConservativeDPOTrainer  # noqa: F401
    with _fresh_trainer_modules(), pytest.raises(UnsupportedTRLError):
        importlib.import_module("trl_conservative.trainer.config")


@pytest.mark.parametrize("command", [["losses"], ["run", "--config", "missing.yaml"]])
def test_cli_says_unsupported_trl_in_one_line_and_exits_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trl_conservative.cli import USER_ERROR, main

    monkeypatch.setattr(trl, "__version__", "0.23.0")
    for name in [k for k in sys.modules if k.startswith("trl_conservative.run.")]:
        monkeypatch.delitem(sys.modules, name)
    with _fresh_trainer_modules():
        rc = main(command)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == USER_ERROR
    assert err == [f"trl-conservative: error: {unsupported_trl_message('0.23.0')}"]


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
