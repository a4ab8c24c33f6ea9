"""A small verifiable preference task: addition, where the right answer is known.

The embedded default run (`trl-conservative run` with no config) first teaches a tiny model the task by SFT, then
runs cDPO on the preference pairs shipped in `trl_conservative/data/` and measures held-out preference accuracy.
The benchmarks reuse `flip_labels` for label-noise experiments (train on flipped pairs, evaluate on the clean
held-out split).

Regenerate the shipped files with ``python -m trl_conservative.demo.tasks`` (a test checks they match).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DATA_DIR",
    "SFT_FILE",
    "TEST_FILE",
    "TRAIN_FILE",
    "ArithmeticTask",
    "Row",
    "flip_labels",
    "is_correct",
    "near_misses",
    "preference_row",
    "prompt_text",
    "read_jsonl",
    "write_dataset",
    "write_jsonl",
]

DATA_DIR = Path(__file__).parent / "data"
TRAIN_FILE = "arithmetic_train.jsonl"
TEST_FILE = "arithmetic_test.jsonl"
SFT_FILE = "arithmetic_sft.jsonl"

Row = dict[str, str]
V = TypeVar("V")  # a row's values: text (`Row`), or a list of chat messages


@dataclass(frozen=True, kw_only=True)
class ArithmeticTask:
    """Addition of two operands in `[0, max_operand]`: prompt ``"a+b="``, the right answer is ``str(a + b)``.

    Held-out prompts never appear in the SFT or preference training data, so accuracy on them measures learning
    that generalises rather than memorised pairs.
    """

    max_operand: int = 19
    test_fraction: float = 0.2
    pairs_per_prompt: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_operand < 2:
            raise ValueError(f"max_operand must be >= 2, got {self.max_operand!r}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction!r}.")
        if self.pairs_per_prompt < 1:
            raise ValueError(f"pairs_per_prompt must be >= 1, got {self.pairs_per_prompt!r}.")

    def prompts(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(train, test) operand pairs: a seeded shuffle of every pair, split by `test_fraction`."""
        pairs = [(a, b) for a in range(self.max_operand + 1) for b in range(self.max_operand + 1)]
        random.Random(self.seed).shuffle(pairs)
        n_test = max(1, round(len(pairs) * self.test_fraction))
        return pairs[n_test:], pairs[:n_test]

    def preference_rows(self, operands: Sequence[tuple[int, int]], *, seed: int) -> list[Row]:
        """`pairs_per_prompt` rows per prompt: chosen is the right sum, rejected a near miss."""
        rng = random.Random(seed)
        rows = []
        for a, b in operands:
            for wrong in rng.sample(near_misses(a + b), self.pairs_per_prompt):
                rows.append(preference_row(a, b, wrong))
        return rows

    def build(self) -> dict[str, list[Row]]:
        """The three shipped splits: `sft` (prompt/completion), `train` and `test` (prompt/chosen/rejected)."""
        train, test = self.prompts()
        return {
            "sft": [{"prompt": prompt_text(a, b), "completion": str(a + b)} for a, b in train],
            "train": self.preference_rows(train, seed=self.seed + 1),
            "test": self.preference_rows(test, seed=self.seed + 2),
        }


def prompt_text(a: int, b: int) -> str:
    return f"{a}+{b}="


def preference_row(a: int, b: int, wrong: int) -> Row:
    """The pair for ``"a+b="``: the right sum chosen, `wrong` rejected (the shipped data and the tests' toy rows)."""
    return {"prompt": prompt_text(a, b), "chosen": str(a + b), "rejected": str(wrong)}


def near_misses(total: int) -> list[int]:
    """Wrong answers a model plausibly gives: off by one or two, or tens and units swapped."""
    candidates = {total - 2, total - 1, total + 1, total + 2}
    if total >= 10:
        candidates.add(int(str(total)[::-1]))
    return sorted(c for c in candidates if c >= 0 and c != total)


def is_correct(prompt: str, answer: str) -> bool:
    """Verify an answer to an ``"a+b="`` prompt."""
    left, _, right = prompt.rstrip("=").partition("+")
    try:
        return int(answer.strip()) == int(left) + int(right)
    except ValueError:
        return False


def flip_labels(
    rows: Sequence[Mapping[str, V]], rho: float, *, seed: int = 0
) -> tuple[list[dict[str, V]], list[int]]:
    """Swap chosen and rejected in exactly `round(rho * len(rows))` rows picked at random (text or chat rows).

    Returns the new rows (the input is not modified) and the sorted indices of the flipped rows.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho (the fraction of flipped pairs) must lie in [0, 1], got {rho!r}.")
    n_flip = round(rho * len(rows))
    flipped = sorted(random.Random(seed).sample(range(len(rows)), n_flip))
    out = [dict(row) for row in rows]
    for i in flipped:
        out[i]["chosen"], out[i]["rejected"] = out[i]["rejected"], out[i]["chosen"]
    return out, flipped


def read_jsonl(path: str | Path) -> list[Row]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def write_dataset(directory: str | Path = DATA_DIR, task: ArithmeticTask | None = None) -> dict[str, Path]:
    """Write the task's splits as JSONL files into `directory`; returns split -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = {"sft": SFT_FILE, "train": TRAIN_FILE, "test": TEST_FILE}
    paths = {}
    for split, rows in (task or ArithmeticTask()).build().items():
        paths[split] = directory / names[split]
        write_jsonl(rows, paths[split])
    return paths


if __name__ == "__main__":
    for split, path in write_dataset().items():
        print(f"{split}: {path}")
