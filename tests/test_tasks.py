"""The arithmetic preference task: shipped files reproducible, answers verifiable, label flips exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from trl_conservative.demo import tasks
from trl_conservative.demo.tasks import ArithmeticTask, flip_labels, is_correct, near_misses, read_jsonl


def test_regenerating_gives_the_shipped_files(tmp_path: Path) -> None:
    paths = tasks.write_dataset(tmp_path)
    for path in paths.values():
        assert path.read_bytes() == (tasks.DATA_DIR / path.name).read_bytes(), path.name


def test_shipped_pairs_are_verifiable_and_held_out_prompts_are_unseen() -> None:
    train = read_jsonl(tasks.DATA_DIR / tasks.TRAIN_FILE)
    test = read_jsonl(tasks.DATA_DIR / tasks.TEST_FILE)
    sft = read_jsonl(tasks.DATA_DIR / tasks.SFT_FILE)
    task = ArithmeticTask()
    n_prompts = (task.max_operand + 1) ** 2
    assert len(test) == round(n_prompts * task.test_fraction) * task.pairs_per_prompt
    assert len(train) == (n_prompts - round(n_prompts * task.test_fraction)) * task.pairs_per_prompt
    for row in train + test:
        a, b = map(int, row["prompt"][:-1].split("+"))
        assert row["chosen"] == str(a + b)
        assert row["rejected"] != row["chosen"] and not is_correct(row["prompt"], row["rejected"])
    held_out = {r["prompt"] for r in test}
    assert held_out.isdisjoint({r["prompt"] for r in train})
    assert held_out.isdisjoint({r["prompt"] for r in sft})
    assert {r["prompt"] for r in sft} == {r["prompt"] for r in train}


def test_is_correct_and_near_misses() -> None:
    assert is_correct("12+7=", "19") and is_correct("12+7=", " 19 ")
    assert not is_correct("12+7=", "91") and not is_correct("12+7=", "nineteen")
    assert near_misses(19) == [17, 18, 20, 21, 91]
    assert near_misses(1) == [0, 2, 3]  # no negative answers, no reversal below 10
    assert near_misses(11) == [9, 10, 12, 13]  # "11" reversed is itself: not a wrong answer


def test_flip_labels_swaps_exactly_rho_of_the_rows() -> None:
    rows = ArithmeticTask(max_operand=4, pairs_per_prompt=1).build()["train"]
    flipped, idx = flip_labels(rows, 0.25, seed=3)
    assert len(idx) == round(0.25 * len(rows)) and idx == sorted(set(idx))
    for i, (old, new) in enumerate(zip(rows, flipped, strict=True)):
        if i in idx:
            assert (new["chosen"], new["rejected"]) == (old["rejected"], old["chosen"])
        else:
            assert new == old
    assert flip_labels(rows, 0.25, seed=3) == (flipped, idx)  # seeded
    assert flip_labels(rows, 0.0)[1] == [] and len(flip_labels(rows, 1.0)[1]) == len(rows)
    with pytest.raises(ValueError, match="rho"):
        flip_labels(rows, 1.5)
