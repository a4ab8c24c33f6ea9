"""Each training pair's scores, taken from the forwards training already runs: no extra pass.

When a pair is first trained on, TRL computes the policy's and the reference's summed completion log-probs of its
chosen and rejected answers before the update that uses them. `PairScores` keeps, per pair (its row in the
trainer's tokenized training split), what those forwards said then:

- ``policy_margin = log pi(y_w|x) - log pi(y_l|x)``: out of sample (the policy has learned from other pairs only);
- ``reference_margin = log pi_ref(y_w|x) - log pi_ref(y_l|x)`` (None without a reference);
- ``progress``: the share of training done when it was scored (0 at the first step, 1 at the last).

``beta * h``, the implicit-reward margin at that step, is ``beta * (policy_margin - reference_margin)``. Later
visits of a pair (a second epoch) are in sample and are not recorded. Pure Python: the trainer feeds it floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PairScore", "PairScores", "duplicate_rows"]


@dataclass(frozen=True)
class PairScore:
    """What training's forwards said about one pair when it was first trained on."""

    row: int  # the pair's row in the trainer's tokenized training split
    step: int  # the optimizer step that trained it (1-based)
    progress: float  # step / max_steps
    policy_margin: float
    reference_margin: float | None

    def implicit_margin(self, beta: float) -> float | None:
        """beta * h: the implicit-reward margin when the pair was trained (None without a reference)."""
        if self.reference_margin is None:
            return None
        return beta * (self.policy_margin - self.reference_margin)


class PairScores:
    """The first-visit scores of the training pairs, by row; `state()`/`load()` carry them through a checkpoint."""

    def __init__(self) -> None:
        self._by_row: dict[int, PairScore] = {}

    def __len__(self) -> int:
        return len(self._by_row)

    def record(
        self,
        rows: Sequence[int],
        policy_margins: Sequence[float],
        reference_margins: Sequence[float] | None,
        *,
        step: int,
        max_steps: int,
    ) -> None:
        """Keep each row's first visit; a row seen again (a later epoch, accelerate's padding) is skipped."""
        if len(rows) != len(policy_margins) or (
            reference_margins is not None and len(reference_margins) != len(rows)
        ):
            raise ValueError(
                f"got {len(rows)} rows, {len(policy_margins)} policy margins and "
                f"{None if reference_margins is None else len(reference_margins)} reference margins; one each."
            )
        progress = min(step / max_steps, 1.0) if max_steps > 0 else 0.0
        for i, row in enumerate(rows):
            if row < 0 or row in self._by_row:
                continue
            ref = None if reference_margins is None else float(reference_margins[i])
            self._by_row[int(row)] = PairScore(
                row=int(row),
                step=step,
                progress=progress,
                policy_margin=float(policy_margins[i]),
                reference_margin=ref if ref is None or math.isfinite(ref) else None,
            )

    def scores(self) -> list[PairScore]:
        """Every recorded pair, by row."""
        return [self._by_row[row] for row in sorted(self._by_row)]

    def state(self) -> list[list[Any]]:
        """A JSON-ready copy (one list per pair)."""
        return [[s.row, s.step, s.progress, s.policy_margin, s.reference_margin] for s in self.scores()]

    def load(self, state: Iterable[Sequence[Any]]) -> None:
        """Restore what `state()` returned (e.g. from a checkpoint), keeping any visit already recorded."""
        for row, step, progress, policy, reference in state:
            self._by_row.setdefault(
                int(row),
                PairScore(
                    row=int(row),
                    step=int(step),
                    progress=float(progress),
                    policy_margin=float(policy),
                    reference_margin=None if reference is None else float(reference),
                ),
            )


def duplicate_rows(
    pairs: Iterable[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    max_length: int | None,
    truncation_mode: str = "keep_start",
) -> tuple[set[int], set[int]]:
    """Rows whose score says nothing reliable about their own label: (every copy of a pair that occurs more than
    once, pairs whose chosen and rejected sequences are identical once cut to `max_length`).

    `pairs` yields (prompt, chosen, rejected) token ids per row. A repeated pair is trained on more than once, so
    a later copy's score is no longer out of sample; an identical-after-truncation pair always has margin 0.
    """
    rows_of: dict[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], list[int]] = {}
    identical: set[int] = set()
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        rows_of.setdefault((tuple(prompt), tuple(chosen), tuple(rejected)), []).append(i)
        full_chosen, full_rejected = [*prompt, *chosen], [*prompt, *rejected]
        if max_length is not None:
            cut = slice(-max_length, None) if truncation_mode == "keep_end" else slice(None, max_length)
            full_chosen, full_rejected = full_chosen[cut], full_rejected[cut]
        if full_chosen == full_rejected:
            identical.add(i)
    repeated = {row for rows in rows_of.values() if len(rows) > 1 for row in rows}
    return repeated, identical
