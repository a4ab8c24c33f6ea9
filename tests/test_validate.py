"""Preference-row validation from Python: what is found, in which rows, and what is dropped."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from trl_conservative import ConfigError, DatasetError
from trl_conservative.demo.tiny import build_tokenizer
from trl_conservative.run.validate import (
    check_preference_rows,
    check_truncation,
    prompt_lengths,
    validate_preference_data,
)

GOOD = {"prompt": "1+2=", "chosen": "3", "rejected": "4"}
CHAT = {
    "prompt": [{"role": "user", "content": "1+2="}],
    "chosen": [{"role": "assistant", "content": "3"}],
    "rejected": [{"role": "assistant", "content": "4"}],
}


def test_clean_rows_text_chat_and_implicit_prompt_pass() -> None:
    for rows in ([GOOD, GOOD], [CHAT], [{"chosen": "1+2=3", "rejected": "1+2=4"}]):
        report = check_preference_rows(rows)
        assert report.problems == () and report.error() is None and report.complete


def test_each_problem_is_found_in_its_rows() -> None:
    rows = [
        GOOD,
        {**GOOD, "chosen": None},  # 1 missing
        {**GOOD, "rejected": "  "},  # 2 empty
        {**GOOD, "chosen": 7},  # 3 not text
        {**GOOD, "chosen": "4"},  # 4 identical
        {**CHAT, "prompt": "1+2="},  # 5 mixed text and chat
        {**CHAT, "chosen": [{"role": "assistant", "content": ""}]},  # 6 empty chat content
        {**GOOD, "prompt": ""},  # 7 empty prompt
    ]
    report = check_preference_rows(rows, columns=["prompt", "chosen", "rejected"])
    found = {(p.kind, p.column): p.rows for p in report.problems}
    assert found == {
        ("missing", "chosen"): (1,),
        ("not_text", "chosen"): (3,),
        ("empty", "chosen"): (6,),
        ("empty", "prompt"): (7,),
        ("empty", "rejected"): (2,),
        ("mixed", None): (5,),
        ("identical", None): (4,),
    }
    assert report.bad_rows == frozenset(range(1, 8))
    message = str(report.error())
    assert message.startswith("Dataset 'dataset' split 'train': 'chosen' is missing in row 1; also ")
    assert "drop_bad_rows=true to drop these 7 of 8 rows" in message and "\n" not in message


def test_missing_column_and_row_limit() -> None:
    with pytest.raises(DatasetError, match=r"has no 'rejected' column \(columns: prompt, chosen\)"):
        check_preference_rows([{"prompt": "a", "chosen": "b"}])
    many = [GOOD] * 5 + [{**GOOD, "chosen": ""}]
    report = check_preference_rows(iter(many), max_rows=5)  # a stream: only the first rows are read
    assert (report.rows_checked, report.complete, report.problems) == (5, False, ())
    assert issubclass(DatasetError, ConfigError)


def test_drop_bad_rows_keeps_the_good_ones(caplog: pytest.LogCaptureFixture) -> None:
    from datasets import Dataset

    data = Dataset.from_list(
        [GOOD, {**GOOD, "rejected": "3"}, {**GOOD, "prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    )
    with pytest.raises(DatasetError, match="'chosen' is identical to 'rejected' in row 1"):
        validate_preference_data(data)
    with caplog.at_level(logging.WARNING):
        kept = validate_preference_data(data, drop_bad_rows=True)
    assert kept["prompt"] == ["1+2=", "2+2="]
    assert "dropping 1 of 3 rows" in caplog.text
    with pytest.raises(DatasetError, match="every row is unusable"):
        validate_preference_data(Dataset.from_list([{**GOOD, "chosen": "4"}]), drop_bad_rows=True)


def test_prompt_lengths_match_trl_tokenization_and_truncation_check(caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = build_tokenizer()
    # Character-level tokenizer: one token per character (no BOS added for plain text); the chat template
    # renders "user: 1+2=\nassistant: ".
    assert prompt_lengths([GOOD, CHAT, {"chosen": "ab c", "rejected": "ab d"}], tokenizer) == [4, 22, 2]
    with pytest.raises(DatasetError, match=r"every prompt is at least max_length=4 tokens long \(shortest 4"):
        check_truncation([4, 5], max_length=4, truncation_mode="keep_start", name="d", split="train")
    with caplog.at_level(logging.WARNING):
        assert (
            check_truncation([3, 5], max_length=4, truncation_mode="keep_start", name="d", split="train") == 1
        )
    assert "1 of 2 rows" in caplog.text
    assert check_truncation([9, 9], max_length=4, truncation_mode="keep_end", name="d", split="train") == 0


def test_truncation_check_follows_the_installed_trl(caplog: pytest.LogCaptureFixture) -> None:
    from trl_conservative.trainer.trl_compat import TRL_STACK

    with caplog.at_level(logging.WARNING):
        kept = check_truncation([3, 5], max_length=4, truncation_mode="keep_start", name="d", split="train")
    assert kept == 1
    if TRL_STACK == "fused_head":
        assert "TRL drops them (no completion token would remain)" in caplog.text
    else:  # TRL 0.2x keeps the row, with nothing left to score
        assert "TRL 0.2x trains on them with no completion token" in caplog.text
    # TRL 0.2x's max_prompt_length keeps each prompt's last tokens first: a prompt cut to 3 < 4 keeps a completion.
    capped = dict(max_length=4, truncation_mode="keep_start", name="d", split="train", max_prompt_length=3)
    assert check_truncation([9, 9], **capped) == 0  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="max_length=4"):
        check_truncation([9, 9], **{**capped, "max_prompt_length": 4})  # type: ignore[arg-type]


def test_all_truncated_dataset_fails_like_trl_would_train_nothing(tiny_model_dir: Any) -> None:
    from datasets import Dataset

    tokenizer = build_tokenizer()
    rows = Dataset.from_list([{"prompt": "x" * 40, "chosen": "a", "rejected": "b"}] * 3)
    with pytest.raises(DatasetError, match="max_length=32"):
        validate_preference_data(rows, tokenizer=tokenizer, max_length=32)
    assert validate_preference_data(rows, tokenizer=tokenizer, max_length=64) is rows
