"""Fails loudly when the installed TRL no longer has the shape trl_conservative/trainer/ relies on (the door: `trl_compat.py`).

Two TRL lines are supported, each with its own override point: the tests of the installed line run, the other
line's are skipped (CI runs this file on both). If this fails after a TRL upgrade, read the new
`DPOTrainer._compute_loss` (TRL 1.16) or `DPOTrainer.get_batch_loss_metrics` / `dpo_loss` (TRL 0.2x) first.
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
    NEWEST_DPO_LOSS_STACK,
    OLDEST_TESTED_TRL,
    SEED_STACK_TRL,
    STACKS,
    SUPPORTED_TRL,
    TRANSFORMERS_FOR,
    TRL_STACK,
    stack_of,
    trl_native_losses,
    unsupported_trl_message,
)

pytestmark = pytest.mark.core

ROOT = Path(__file__).parents[1]
fused_head = pytest.mark.skipif(TRL_STACK != "fused_head", reason="TRL 1.16's override point (not installed)")
dpo_loss = pytest.mark.skipif(
    TRL_STACK != "dpo_loss", reason="TRL 0.23-0.28's override point (not installed)"
)
SOURCE = inspect.getsource(getattr(DPOTrainer, "_compute_loss" if TRL_STACK == "fused_head" else "dpo_loss"))


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


def _floor(spec: str) -> Version:
    return Version(next(s.version for s in SpecifierSet(spec) if s.operator == ">="))


def test_ci_tests_the_oldest_and_newest_release_of_each_supported_line() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert Version(OLDEST_TESTED_TRL) == _floor(STACKS["fused_head"])
    assert Version(SEED_STACK_TRL) == _floor(STACKS["dpo_loss"]) == _floor(SUPPORTED_TRL)
    for trl_pin, stack in ((OLDEST_TESTED_TRL, "fused_head"), (SEED_STACK_TRL, "dpo_loss")):
        transformers_pin = _floor(TRANSFORMERS_FOR[stack])
        assert f'"trl=={trl_pin}" "transformers=={transformers_pin}' in ci, (trl_pin, transformers_pin)
    assert _floor(TRANSFORMERS_FOR["dpo_loss"]) == _floor(str(_requirement("transformers").specifier))
    # ... and the newest of the dpo_loss line (the fused-head line's newest is what the main venv installs).
    trl_pin, transformers_pin = NEWEST_DPO_LOSS_STACK
    assert trl_pin in SpecifierSet(STACKS["dpo_loss"]) and transformers_pin in SpecifierSet(
        TRANSFORMERS_FOR["dpo_loss"]
    )
    assert f'"trl=={trl_pin}" "transformers=={transformers_pin}"' in ci


@pytest.mark.parametrize(
    ("version", "stack"),
    [
        ("0.23.0", "dpo_loss"),
        ("0.24.0", "dpo_loss"),
        ("0.28.0", "dpo_loss"),
        ("0.28.1.dev0", "dpo_loss"),
        ("1.16.0", "fused_head"),
        ("1.16.3", "fused_head"),
        ("1.16.1.dev0", "fused_head"),
    ],
)
def test_supported_versions_pass(version: str, stack: str) -> None:
    assert unsupported_trl_message(version) is None
    assert stack_of(version) == stack
    assert Version(version) in SpecifierSet(SUPPORTED_TRL, prereleases=True)


@pytest.mark.parametrize("version", ["0.22.2", "0.29.0", "1.0.0", "1.14.2", "1.15.0", "1.17.0", "2.0.0.dev0"])
def test_pyproject_range_excludes_what_the_import_refuses(version: str) -> None:
    assert Version(version) not in SpecifierSet(SUPPORTED_TRL, prereleases=True)
    assert stack_of(version) is None


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


@pytest.mark.parametrize("version", ["0.22.2", "0.29.0", "1.15.0", "1.17.0", "2.0.0.dev0"])
def test_unsupported_trl_fails_the_import_with_one_line(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trl, "__version__", version)
    with _fresh_trainer_modules(), pytest.raises(UnsupportedTRLError) as caught:
        importlib.import_module("trl_conservative.trainer.trainer")
    message = str(caught.value)
    assert message == (
        f"TRL {version} is installed, but trl-conservative supports TRL 0.23-0.28 or 1.16 only "
        '(>=0.23,<0.29 or >=1.16,<1.17). Fix: pip install "trl>=1.16,<1.17" (or "trl>=0.23,<0.29" to stay on '
        "TRL 0.2x)."
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

    monkeypatch.setattr(trl, "__version__", "0.29.0")
    for name in [k for k in sys.modules if k.startswith("trl_conservative.run.")]:
        monkeypatch.delitem(sys.modules, name)
    with _fresh_trainer_modules():
        rc = main(command)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == USER_ERROR
    assert err == [f"trl-conservative: error: {unsupported_trl_message('0.29.0')}"]


def test_a_transformers_release_the_line_is_not_tested_with_fails_the_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.40.0")
    with _fresh_trainer_modules(), pytest.raises(UnsupportedTRLError) as caught:
        importlib.import_module("trl_conservative.trainer.trainer")
    needed = TRANSFORMERS_FOR[TRL_STACK]
    wanted = needed if "<" in needed else f"{needed},<6"
    assert str(caught.value) == (
        f"TRL {trl.__version__} is installed with transformers 4.40.0, but trl-conservative needs "
        f'transformers{needed} beside it. Fix: pip install "transformers{wanted}".'
    )


# --- TRL 1.16: `_compute_loss` and the fused LM head ------------------------------------------------------------
@fused_head
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


@fused_head
def test_loss_loop_reads_loss_types_and_weights_and_starts_at_zero() -> None:
    assert "loss = 0.0" in SOURCE
    assert "zip(self.loss_types, self.loss_weights, strict=True)" in SOURCE
    assert "loss += per_sequence_loss.mean() * loss_weight" in SOURCE
    assert "return (loss, outputs) if return_outputs else loss" in SOURCE


@fused_head
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
    # `pair_logps(reference=True)` and the precompute path call TRL's reference helper with the model first.
    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters)[:3] == [
        "self",
        "model",
        "inputs",
    ]


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


@fused_head
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


# --- TRL 0.23-0.28: `get_batch_loss_metrics` calls `dpo_loss` once per loss_type --------------------------------
def _source(name: str) -> str:
    return inspect.getsource(getattr(DPOTrainer, name))


@dpo_loss
def test_dpo_loss_is_the_override_point() -> None:
    assert list(inspect.signature(DPOTrainer.dpo_loss).parameters) == [
        "self",
        "chosen_logps",
        "rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
        "loss_type",
        "model_output",
    ]
    assert "return losses, chosen_rewards, rejected_rewards" in SOURCE
    assert not hasattr(DPOTrainer, "_compute_loss")


@dpo_loss
def test_batch_loop_calls_dpo_loss_per_loss_type_with_its_weight() -> None:
    loop = _source("get_batch_loss_metrics")
    assert "model_output = self.concatenated_forward(model, batch)" in loop
    assert 'if "ref_chosen_logps" in batch and "ref_rejected_logps" in batch:' in loop
    assert "ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(batch)" in loop
    assert "for idx, loss_type in enumerate(self.loss_type):" in loop
    assert "weight = self.loss_weights[idx] if self.loss_weights else 1.0" in loop
    assert "losses = losses + _losses * weight" in loop
    assert 'metrics[f"{prefix}rewards/margins"]' in loop
    assert "return losses.mean(), metrics" in loop
    assert 'self.get_batch_loss_metrics(model, inputs, train_eval="train")' in _source("compute_loss")
    assert 'self.get_batch_loss_metrics(model, inputs, train_eval="eval")' in _source("prediction_step")
    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters) == ["self", "batch"]


@dpo_loss
def test_sequence_scores_are_sums_unless_a_loss_is_named_ipo() -> None:
    """Registry losses are handed to TRL under a prefixed name, so this averaging never fires for them."""
    forward = _source("concatenated_forward")
    assert 'if "ipo" in self.loss_type:' in forward
    assert "all_logps = all_logps / loss_mask.sum(-1)" in forward
    # The completion lengths (`surviving_lengths`) follow TRL's own flush and truncation.
    assert "(torch.zeros_like(prompt_attention_mask), completion_attention_mask)" in forward
    assert 'if self.truncation_mode == "keep_start":' in forward
    assert 'elif self.truncation_mode == "keep_end":' in forward
    assert "if self.max_length is not None and self.max_length < attention_mask.size(1):" in forward
    assert 'model_kwargs["output_hidden_states"] = True' in forward
    # `pair_logps` (the suspected-flip pass) reads the sums from TRL's forward.
    assert 'output["chosen_logps"] = all_logps[:num_examples]' in forward
    assert 'output["rejected_logps"] = all_logps[num_examples:]' in forward


@dpo_loss
def test_metrics_are_stored_per_mode_and_averaged_at_log() -> None:
    assert "self._stored_metrics[train_eval][key].append(value)" in _source("store_metrics")
    log = _source("log")
    assert 'train_eval = "train" if "loss" in logs else "eval"' in log
    assert "del self._stored_metrics[train_eval]" in log
    assert 'prefix = "eval_" if train_eval == "eval" else ""' in _source("get_batch_loss_metrics")
    assert isinstance(DPOTrainer._tag_names, list) and {"trl", "dpo"} <= set(DPOTrainer._tag_names)


@dpo_loss
def test_tokenized_columns_and_trainer_attributes() -> None:
    assert '"prompt_input_ids": prompt_input_ids' in _source("tokenize_row")
    init = _source("__init__")
    for attribute in (
        "self.precompute_ref_log_probs = args.precompute_ref_log_probs",
        "self.reference_free = args.reference_free",
        "self.truncation_mode = args.truncation_mode",
        "self.max_length = args.max_length",
        "self._stored_metrics = defaultdict(lambda: defaultdict(list))",
        "elif self.is_peft_model or args.precompute_ref_log_probs:",
    ):
        assert attribute in init, attribute
