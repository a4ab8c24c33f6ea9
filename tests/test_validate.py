"""Preference-row validation from Python: what is found, in which rows, and what is dropped."""

from __future__ import annotations

import json
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
        {**GOOD, "chosen": " "},  # 6 empty (chat rows beside these text rows would make a mixed split)
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


# --- issue 20 family 5: chat rows -------------------------------------------------------------------------------
def _turn(role: Any, content: Any = "x", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def _chat(i: int = 0, **changes: Any) -> dict[str, Any]:
    row = {"prompt": [_turn("user", f"{i}+1=")], "chosen": [_turn("assistant", str(i + 1))],
           "rejected": [_turn("assistant", str(i + 2))]}  # fmt: skip
    row.update(changes)
    return row


def _found(rows: list[dict[str, Any]], **kwargs: Any) -> dict[tuple[str, str | None], tuple[int, ...]]:
    return {(p.kind, p.column): p.rows for p in check_preference_rows(rows, **kwargs).problems}


@pytest.mark.parametrize("role", ["user", "system", "tool", "developer"])
@pytest.mark.parametrize("column", ["chosen", "rejected", "completion"])
def test_a_completion_holding_a_turn_that_is_not_the_assistants_is_named_with_row_column_and_turn(
    column: str, role: str
) -> None:
    from trl_conservative.trainer.trl_compat import TRL_STACK

    rows = [_chat(i, completion=[_turn("assistant", "a")]) for i in range(5)]
    rows[3][column] = [_turn("assistant", "fine"), _turn(role, "not an answer")]
    report = check_preference_rows(rows)
    trl_0 = {("trl0_keys", "completion"): ()} if TRL_STACK != "fused_head" else {}  # and TRL 0.2x fails on the column
    assert _found(rows) == {("role", column): (3,), **trl_0}
    message = str(report.error())
    assert f"'{column}' has a '{role}' turn (turn 1) in row 3, where only the answer's assistant turns belong" in message
    assert "system, user and tool turns belong in the prompt" in message and "\n" not in message
    if trl_0:
        assert "also the 'completion' column beside chat rows fails TRL 0." in message and "drop_bad_rows" not in message
    else:
        assert "drop these 1 of 5 rows" in message


def test_the_prompt_may_hold_every_known_role_and_a_tool_call() -> None:
    prompt = [_turn("system", "be brief"), _turn("developer", "json"), _turn("user", "weather?"),
              _turn("assistant", None, tool_calls=[{"type": "function", "function": {"name": "w", "arguments": {}}}]),
              _turn("tool", "sunny"), _turn("ipython", "ok"), _turn("user", "so?")]  # fmt: skip
    parts = [_turn("assistant", [{"type": "text", "text": "Sunny."}])]
    rows = [_chat(prompt=prompt), _chat(1, prompt=prompt, chosen=parts)]
    assert check_preference_rows(rows).problems == ()


@pytest.mark.parametrize(
    "message, kind",
    [
        (_turn("robot"), "unknown_role"),
        (_turn("human"), "unknown_role"),  # ShareGPT's from/value roles
        (_turn("gpt"), "unknown_role"),
        (_turn(""), "unknown_role"),
        (_turn(None), "bad_message"),
        (_turn(5), "bad_message"),
        ({"content": "no role"}, "bad_message"),
        (_turn("assistant", 5), "bad_message"),
        (_turn("assistant", None), "bad_message"),  # no content and no tool call
        (_turn("assistant", [{"text": "a part without a type"}]), "bad_message"),
        (_turn("assistant", {"text": "x"}), "bad_message"),
    ],
)
@pytest.mark.parametrize("column", ["prompt", "chosen"])
def test_messages_need_a_known_role_and_text_content(message: dict[str, Any], kind: str, column: str) -> None:
    rows = [_chat(i) for i in range(3)]
    rows[2][column] = [_turn("user" if column == "prompt" else "assistant", "ok"), message]
    assert _found(rows) == {(kind, column): (2,)}
    text = str(check_preference_rows(rows).error())
    if kind == "unknown_role":
        assert f"'{column}' has a turn with the unknown role {message['role']!r} (turn 1) in row 2" in text
        assert "one of the roles system, developer, user, assistant, tool, ipython" in text
    else:
        assert f"'{column}' has a message that is not a {{'role', 'content'}} mapping with text content (turn 1: " in text


def test_a_list_that_is_not_messages_is_not_chat() -> None:
    rows = [_chat(), _chat(1, chosen=[_turn("assistant"), "loose text"]), _chat(2, chosen=[])]
    assert _found(rows) == {("not_text", "chosen"): (1,), ("empty", "chosen"): (2,)}


def test_implicit_prompt_chat_rows_work_as_trl_extracts_them() -> None:
    shared = [_turn("system", "terse"), _turn("user", "1+1=")]
    good = {"chosen": shared + [_turn("assistant", "2")], "rejected": shared + [_turn("assistant", "3")]}
    longer = {"chosen": shared + [_turn("assistant", "2")],
              "rejected": shared + [_turn("assistant", "2"), _turn("assistant", "no, 3")]}  # fmt: skip
    assert check_preference_rows([good, longer]).problems == ()
    rows = [
        good,
        {"chosen": [_turn("user", "1+1=")], "rejected": [_turn("user", "1+1="), _turn("assistant", "2")]},  # 1
        {"chosen": [_turn("user", "a"), _turn("assistant", "b")], "rejected": [_turn("user", "c"), _turn("assistant", "d")]},
        {"chosen": shared + [_turn("assistant", "2")], "rejected": shared + [_turn("user", "3")]},  # 3
        {"chosen": shared + [_turn("assistant", "2")], "rejected": shared + [_turn("assistant", "2")]},  # 4
    ]  # fmt: skip
    assert _found(rows) == {
        ("no_answer", "chosen"): (1,),
        ("no_prompt", None): (2,),
        ("role", "rejected"): (3,),
        ("identical", None): (4,),
    }
    message = str(check_preference_rows(rows).error())
    assert message.startswith(
        "Dataset 'dataset' split 'train': 'chosen' and 'rejected' share no opening turn in row 2, so the prompt TRL "
        "takes from them (their shared opening turns) is empty; also 'chosen' holds no answer after the opening turns"
        " it shares with the other in row 1; 'rejected' has a 'user' turn (turn 2) in row 3"
    )


def test_implicit_row_with_a_user_only_chosen_no_longer_reaches_trl(tiny_model_dir: Any) -> None:
    """It was a traceback: TRL extracted an empty prompt ("Cannot apply chat template to an empty conversation")."""
    from datasets import Dataset

    rows = [{"chosen": [_turn("user", f"{i}+1=")], "rejected": [_turn("user", f"{i}+1="), _turn("assistant", "x")]}
            for i in range(4)]  # fmt: skip
    with pytest.raises(DatasetError, match="'chosen' holds no answer after the opening turns it shares"):
        validate_preference_data(Dataset.from_list(rows), tokenizer=build_tokenizer(), max_length=64)


def test_prompt_ending_on_a_system_or_tool_turn_follows_the_installed_trl() -> None:
    from trl_conservative.trainer.trl_compat import TRL_STACK

    rows = [_chat(i, prompt=[_turn("user", "q"), _turn("assistant", "call"), _turn("tool", "42")]) for i in range(2)]
    rows.append({"chosen": [_turn("user", "q"), _turn("system", "hint"), _turn("assistant", "a")],
                 "rejected": [_turn("user", "q"), _turn("system", "hint"), _turn("assistant", "b")]})  # fmt: skip
    if TRL_STACK == "fused_head":  # TRL 1.16 renders any prompt with the generation prompt after it
        assert check_preference_rows(rows[:2]).problems == () and check_preference_rows(rows[2:]).problems == ()
        return
    assert _found(rows[:2]) == {("prompt_end", "prompt"): (0, 1)}
    assert "'prompt' ends on a 'tool' turn (turn 2) in rows 0, 1, which TRL 0." in str(
        check_preference_rows(rows[:2]).error()
    )
    assert "the prompt 'chosen' and 'rejected' open with ends on a 'system' turn (turn 1) in row 0" in str(
        check_preference_rows(rows[2:]).error()
    )


def test_a_completion_column_is_checked_like_chosen_and_where_trl_0_fails_on_it_refused() -> None:
    from trl_conservative.trainer.trl_compat import TRL_STACK

    text = [{**GOOD, "completion": None}, {**GOOD, "prompt": "2+2=", "completion": "4"}]
    assert check_preference_rows(text).problems == ()  # a text row may leave it empty
    assert _found([{**GOOD, "completion": [_turn("assistant", "3")]}]) == {("mixed", None): (0,)}
    chat = [_chat(completion=[_turn("assistant", "1")])]
    if TRL_STACK == "fused_head":
        assert check_preference_rows(chat).problems == ()
        assert _found([_chat(completion=None)]) == {("missing", "completion"): (0,)}
        return
    for column in ("completion", "messages", "label"):
        with pytest.raises(DatasetError, match=f"the '{column}' column beside chat rows fails TRL 0.*Invalid keys"):
            validate_preference_data([_chat(**{column: [_turn("assistant", "1")]})], drop_bad_rows=True)


def _load_jsonl(tmp_path: Any, rows: list[dict[str, Any]]) -> Any:
    import json

    from datasets import load_dataset

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_dataset("json", data_files=str(path))["train"]


def test_a_split_mixing_text_and_chat_rows_is_named_as_mixed(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    text = [{"prompt": f"{i}+20=", "chosen": str(i + 20), "rejected": "x"} for i in range(6)]
    rows = text[:2] + [_chat(2)] + text[2:] + [_chat(7)]  # chat rows 2 and 7
    data = _load_jsonl(tmp_path, rows)  # datasets reads the columns as JSON: "20" comes back as the number 20
    with pytest.raises(DatasetError) as caught:
        validate_preference_data(data)
    message = str(caught.value)
    assert "the split mixes plain-text rows and chat-message rows (text in rows 0, 1, 3 and 3 more; chat messages in "\
           "rows 2, 7)" in message  # fmt: skip
    assert "got int" not in message and "give every row of a split one format" in message
    assert "drop_bad_rows=true to drop these 2 of 8 rows" in message
    with caplog.at_level(logging.WARNING):
        kept = validate_preference_data(data, drop_bad_rows=True)
    assert "dropping 2 of 8 rows" in caplog.text
    assert kept.to_list() == text  # the text as the file holds it: "20", not 20
    tied = _load_jsonl(tmp_path, text[:2] + [_chat(2), _chat(3)])
    with pytest.raises(DatasetError, match="drop_bad_rows cannot choose between them, as many rows hold text as chat"):
        validate_preference_data(tied, drop_bad_rows=True)
    chat_majority = _load_jsonl(tmp_path, [_chat(i) for i in range(5)] + text[:1])
    assert validate_preference_data(chat_majority, drop_bad_rows=True).to_list() == [_chat(i) for i in range(5)]


def test_text_that_datasets_read_as_numbers_counts_as_text(tmp_path: Any) -> None:
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "0.5*3=", "chosen": "1.50", "rejected": 2},
            {"prompt": "ok?", "chosen": "true", "rejected": "no"}]  # fmt: skip
    data = _load_jsonl(tmp_path, rows)  # 'rejected' mixes text and a number: read as JSON
    kept = validate_preference_data(data)
    assert kept.to_list() == [{**rows[0]}, {**rows[1], "rejected": "2"}, rows[2]]
    assert check_preference_rows([{**GOOD, "chosen": 7}]).problems[0].kind == "not_text"  # a plain list: not text


def test_chat_content_datasets_read_as_numbers_is_named(tmp_path: Any) -> None:
    parts = [_turn("assistant", [{"type": "text", "text": "4"}])]
    data = _load_jsonl(tmp_path, [_chat(0), _chat(1, chosen=parts)])  # content: text, then a list: read as JSON
    with pytest.raises(DatasetError) as caught:
        validate_preference_data(data)
    assert "'chosen' has a message whose text reads as int 1 (turn 0) in row 0, since datasets read its content as"\
           " JSON" in str(caught.value)  # fmt: skip
    assert "give the messages of a column one form of content" in str(caught.value)


def test_drop_bad_rows_drops_chat_rows_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    from datasets import Dataset

    rows = [_chat(i) for i in range(6)]
    rows[1]["chosen"] = [_turn("user", "q")]
    rows[4]["prompt"] = [_turn("robot", "q")]
    with caplog.at_level(logging.WARNING):
        kept = validate_preference_data(Dataset.from_list(rows), drop_bad_rows=True)
    assert "dropping 2 of 6 rows" in caplog.text
    assert [r["prompt"][0]["content"] for r in kept] == ["0+1=", "2+1=", "3+1=", "5+1="]


def test_row_numbers_are_the_rows_of_the_split_as_loaded_after_a_shuffle() -> None:
    from datasets import Dataset

    rows = [_chat(i) for i in range(10)]
    rows[7]["chosen"] = [_turn("tool", "x")]
    parts = Dataset.from_list(rows).train_test_split(test_size=0.3, seed=0)
    holder = next(p for p in (parts["train"], parts["test"]) if any(r["chosen"][0]["role"] == "tool" for r in p))
    with pytest.raises(DatasetError, match=r"'chosen' has a 'tool' turn \(turn 0\) in row 7,"):
        validate_preference_data(holder)


# --- issue 20 family 6: the other columns TRL reads -------------------------------------------------------------
TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("tools", "{not json", "'tools' is not a list of tool definitions (got str '{not json': not valid JSON: "),
        ("tools", TOOL, "'tools' is not a list of tool definitions (got dict"),
        ("tools", '{"name": "f"}', "(got str '{\"name\": \"f\"}': JSON holding dict)"),
        ("tools", ["f"], "'tools' is not a list of tool definitions (got list ['f'])"),
        ("chat_template_kwargs", "enable_thinking", "'chat_template_kwargs' is not a mapping of keyword: value (got "
                                                    "str 'enable_thinking')"),
        ("chat_template_kwargs", None, "(got null: TRL passes it to the chat template as keyword arguments)"),
        ("ref_chosen_logps", "abc", "'ref_chosen_logps' is not a log-probability (a finite number <= 0) (got str"),
        ("ref_rejected_logps", float("nan"), "'ref_rejected_logps' is not a log-probability"),
        ("ref_chosen_logps", float("-inf"), "(got float -inf)"),
        ("ref_chosen_logps", 2.5, "(got float 2.5: a log-probability is never positive)"),
        ("ref_chosen_logps", True, "(got bool True)"),
        ("ref_chosen_logps", None, "(got null)"),
        ("images", "cat.png", "'images' is not an image (got str 'cat.png': 'images' takes a list)"),
        ("images", [3], "'images' is not an image (got list [3])"),
        ("image", 3, "'image' is not an image (got int 3)"),
    ],
)  # fmt: skip
def test_a_bad_value_in_a_column_trl_reads_is_named_with_row_and_column(column: str, value: Any, expected: str) -> None:
    fine = {"tools": [TOOL], "chat_template_kwargs": {}, "ref_chosen_logps": -3.0, "ref_rejected_logps": -4,
            "images": ["cat.png"], "image": {"bytes": b"\x89PNG", "path": None}}  # fmt: skip
    pair = {"ref_chosen_logps", "ref_rejected_logps"}
    extra = {c: fine[c] for c in ({column} | (pair if column in pair else set()))}
    rows = [{**_chat(i), **extra} for i in range(4)]
    assert check_preference_rows(rows).problems == ()
    rows[2][column] = value
    report = check_preference_rows(rows)
    assert [(p.column, p.rows) for p in report.problems] == [(column, (2,))]
    message = str(report.error())
    assert expected in message and " in row 2" in message and "\n" not in message


def test_accepted_values_of_the_columns_trl_reads() -> None:
    rows = [
        {**GOOD, "tools": None, "chat_template_kwargs": {"enable_thinking": False}, "ref_chosen_logps": 0,
         "ref_rejected_logps": -1e3, "images": None, "image": None},
        {**GOOD, "tools": '[{"type": "function"}]', "chat_template_kwargs": {}, "ref_chosen_logps": -1.5,
         "ref_rejected_logps": -2, "images": [], "image": "dog.jpg"},
    ]  # fmt: skip
    assert check_preference_rows(rows).problems == ()


def test_one_reference_log_probability_column_without_the_other_is_refused() -> None:
    with pytest.raises(DatasetError, match="has a 'ref_chosen_logps' column but no 'ref_rejected_logps' column"):
        check_preference_rows([{**GOOD, "ref_chosen_logps": -1.0}])


def test_trl_0_says_it_ignores_the_per_row_template_columns(caplog: pytest.LogCaptureFixture) -> None:
    from datasets import Dataset

    from trl_conservative.trainer.trl_compat import TRL_STACK

    with caplog.at_level(logging.WARNING):
        validate_preference_data(Dataset.from_list([{**_chat(), "tools": [TOOL]}]))
    assert ("does not read the 'tools' column" in caplog.text) == (TRL_STACK != "fused_head")


def test_prompt_lengths_render_a_rows_tools_and_template_arguments_where_trl_does() -> None:
    from trl_conservative.trainer.trl_compat import TRL_STACK

    tokenizer = build_tokenizer()
    tokenizer.chat_template = (
        "{% if tools %}tools: {{ tools | length }}\n{% endif %}{% if brief %}brief\n{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    plain = prompt_lengths([CHAT], tokenizer)[0]
    rows = [{**CHAT, "tools": [TOOL], "chat_template_kwargs": {"brief": True}},
            {**CHAT, "tools": json.dumps([TOOL]), "chat_template_kwargs": {}}]  # fmt: skip
    extra = [len("tools: 1\nbrief\n"), len("tools: 1\n")] if TRL_STACK == "fused_head" else [0, 0]
    assert prompt_lengths(rows, tokenizer) == [plain + n for n in extra]


def test_text_given_back_from_json_keeps_each_rows_position_in_the_loaded_split(tmp_path: Any) -> None:
    """The suspected-flip list names rows by their position in the split as loaded (`row_positions`)."""
    from trl_conservative.run.label_noise import row_positions

    text = [{"prompt": f"{i}*1=", "chosen": str(i), "rejected": "x"} for i in range(8)]
    data = _load_jsonl(tmp_path, text[:3] + [_chat(3)] + text[4:])  # row 3 chat: the columns are read as JSON
    part = data.train_test_split(test_size=0.25, seed=1)["train"]
    kept = validate_preference_data(part, drop_bad_rows=True)
    positions = [p for p in row_positions(part) if p != 3]
    assert row_positions(kept) == positions
    assert kept.to_list() == [text[p] for p in positions]  # "5", not 5
