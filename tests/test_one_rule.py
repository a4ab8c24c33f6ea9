"""Rules the package keeps in one place (issue 21 item 2): each is pinned here where its former copies disagreed."""

from __future__ import annotations

import enum
import importlib.metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trl_conservative.training_args import evaluates, plain


class _Strategy(enum.Enum):
    NO = "no"
    STEPS = "steps"


@pytest.mark.parametrize(
    ("strategy", "on_start", "expected"),
    [
        ("no", False, False),
        (_Strategy.NO, False, False),
        ("no", True, True),  # eval_on_start alone: the case the KL monitor's own copy got wrong
        (_Strategy.NO, True, True),
        ("steps", False, True),
        (_Strategy.STEPS, False, True),
        ("epoch", True, True),
    ],
)
def test_evaluates(strategy: Any, on_start: bool, expected: bool) -> None:
    assert evaluates(SimpleNamespace(eval_strategy=strategy, eval_on_start=on_start)) is expected
    assert plain(strategy) == getattr(strategy, "value", strategy)


def test_evaluates_is_the_rule_of_the_loader_the_settings_check_and_the_monitor() -> None:
    import trl_conservative.kl.monitor as monitor
    import trl_conservative.run.data as data
    import trl_conservative.run.settings_check as settings_check
    import trl_conservative.trainer.kl_availability as kl_availability

    for module in (monitor, data, settings_check, kl_availability):
        assert module.evaluates is evaluates, module.__name__  # type: ignore[attr-defined]
    args = SimpleNamespace(eval_strategy=_Strategy.NO, eval_on_start=True, kl_sequence_prompts=4)
    assert monitor.auto_metric(args) == "eval_kl/sequence"


def test_plain_leaves_non_enums_alone() -> None:
    marker = object()
    assert plain(marker) is marker and plain(None) is None and plain("cosine") == "cosine"


def test_is_peft_model_and_trains_peft() -> None:
    from peft import LoraConfig, get_peft_model

    from trl_conservative.demo.tiny import build_model
    from trl_conservative.trainer.trl_compat import is_peft_model, trains_peft

    model = build_model(32, seed=0)
    peft_model = get_peft_model(build_model(32, seed=0), LoraConfig(r=2, target_modules=["q_proj"]))
    assert [is_peft_model(m) for m in (None, "some/model", model, peft_model)] == [False, False, False, True]
    assert not trains_peft({"model": "some/model"}) and not trains_peft({"model": model})
    assert trains_peft({"model": "some/model", "peft_config": LoraConfig(r=2)})
    assert trains_peft({"model": peft_model, "peft_config": None})


def test_model_bytes_counts_only_a_peft_models_trainable_adapter() -> None:
    """The end-of-run disk check uses the same PEFT test as the trainer (it used `hasattr(model, "peft_config")`)."""
    from peft import LoraConfig, get_peft_model

    from trl_conservative.demo.tiny import build_model
    from trl_conservative.reliability.end_of_run import model_bytes

    files = 1 << 20  # config, tokenizer, card
    model = build_model(32, seed=0)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert model_bytes(SimpleNamespace(model=model)) == weights + files
    peft_model = get_peft_model(build_model(32, seed=0), LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = sum(p.numel() * p.element_size() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < adapter < weights / 10
    assert model_bytes(SimpleNamespace(model=peft_model)) == adapter + files


def _entry_point(name: str, dist: str | None) -> Any:
    ep = importlib.metadata.EntryPoint(name=name, value="pkg.mod", group="trl_conservative")
    return SimpleNamespace(name=ep.name, dist=SimpleNamespace(name=dist) if dist else None)


@pytest.mark.parametrize(
    ("blocked", "name", "dist", "expected"),
    [
        ("rdpo", "rdpo", "trl-conservative-rdpo", True),
        ("trl-conservative-rdpo", "rdpo", "trl-conservative-rdpo", True),
        ("Trl_Conservative.RDPO", "rdpo", "trl-conservative-rdpo", True),  # a distribution in any spelling
        ("RDPO", "rdpo", "trl-conservative-rdpo", False),  # an entry-point name is matched exactly
        ("rdpo", "simpo", None, False),
        ("simpo", "simpo", None, True),
    ],
)
def test_block_list_matching(blocked: str, name: str, dist: str | None, expected: bool) -> None:
    """One rule for what TRL_CONSERVATIVE_DISABLE_PLUGINS blocks: the loader and the settings check share it."""
    from trl_conservative.registry.loading import blocks

    assert blocks(blocked, _entry_point(name, dist)) is expected


def test_token_kl_is_one_formula() -> None:
    """kl/exact and the sampled sequence KL use `token_kl_from_logits`: KL(p || q), clamped at 0."""
    import torch

    import trl_conservative.kl.sampling as sampling
    from trl_conservative.kl.measures import token_kl_from_logits

    assert sampling.token_kl_from_logits is token_kl_from_logits  # type: ignore[attr-defined]
    gen = torch.Generator().manual_seed(0)
    z_p, z_q = torch.randn(5, 11, generator=gen), torch.randn(5, 11, generator=gen)
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(z_q, -1), torch.log_softmax(z_p, -1), log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(token_kl_from_logits(z_p.clone(), z_q.clone()), expected)
    same = token_kl_from_logits(z_p.clone(), z_p.clone())
    assert (same >= 0).all() and float(same.max()) < 1e-6


def test_utf8_error_text_is_the_same_in_run_and_report(tmp_path: Path) -> None:
    """`run` (a config or data file) and `report` (a damaged run file) name a bad byte in the same words."""
    from trl_conservative import ConfigError
    from trl_conservative.file_checks import utf8_problem
    from trl_conservative.report.summary import _Damaged, _utf8
    from trl_conservative.run.files import read_text

    raw = "ok\né\n".encode() + b"ab\xfe"
    where = "byte 0xfe at offset 8 (line 3, column 3)"
    assert utf8_problem(raw) == where
    with pytest.raises(_Damaged, match=f"^is not UTF-8 text: {where.replace('(', '.').replace(')', '.')}$"):
        _utf8(raw)
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=f"is not UTF-8 text: {where.replace('(', '.').replace(')', '.')}"):
        read_text(path)
    assert _utf8(b"\xef\xbb\xbf{}") == "{}"  # a byte order mark is no damage


def test_toy_rows_are_the_arithmetic_tasks_rows() -> None:
    from trl_conservative.demo.tasks import ArithmeticTask, is_correct, preference_row
    from trl_conservative.demo.tiny import tiny_preference_rows

    rows = tiny_preference_rows(32, seed=3)
    assert rows[0] == preference_row(*map(int, rows[0]["prompt"].rstrip("=").split("+")), int(rows[0]["rejected"]))
    assert all(is_correct(r["prompt"], r["chosen"]) and not is_correct(r["prompt"], r["rejected"]) for r in rows)
    shipped = ArithmeticTask().build()["train"]
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in shipped + rows)


def test_pair_columns_are_set_once_per_trl_line() -> None:
    from trl_conservative.trainer.dpo_loss_adapter import DpoLossAdapter
    from trl_conservative.trainer.fused_head import FusedHeadAdapter
    from trl_conservative.trainer.kl_logging import KLLoggingTrainer

    assert "PAIR_COLUMNS" not in vars(KLLoggingTrainer) and "PROMPT_COLUMN" not in vars(KLLoggingTrainer)
    assert FusedHeadAdapter.PAIR_COLUMNS == ("prompt_ids", "chosen_ids", "rejected_ids")
    assert DpoLossAdapter.PAIR_COLUMNS == ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
    for adapter in (FusedHeadAdapter, DpoLossAdapter):
        assert adapter.PROMPT_COLUMN == adapter.PAIR_COLUMNS[0]


def test_loss_weights_in_effect() -> None:
    """One weight per loss, else 1.0 each: the plan before training and the report of a finished run agree."""
    from trl_conservative.training_args import weights_in_effect

    assert weights_in_effect(None, ["sigmoid", "ipo"]) == [1.0, 1.0]
    assert weights_in_effect([2, 0.5], ["sigmoid", "ipo"]) == [2.0, 0.5]
    assert weights_in_effect([2.0], ["sigmoid", "ipo"]) == [1.0, 1.0]  # a record that does not fit


def test_a_number_is_never_a_bool() -> None:
    """One test of 'a numeric value' (settings check, trainer validation, loss plan, model card, report alarms)."""
    from trl_conservative.training_args import is_number

    assert [is_number(v) for v in (0, 1.5, -3, float("nan"), True, False, "1", None)] == [
        True, True, True, True, False, False, False, False,
    ]  # fmt: skip
