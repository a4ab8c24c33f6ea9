"""Pure statistics of the label-noise study: paired differences, the power calculation, model selection, and the
precision/recall of a suspected-flip score. No torch; unit-tested in tests/test_benchmarks_smoke.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Paired:
    """Mean paired difference (A - B) of 0/1 outcomes on the same units, with a 95% normal CI."""

    mean: float
    half_width: float
    n: int
    discordant: float  # share of units where A and B differ

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.mean - self.half_width:+.3f}, {self.mean + self.half_width:+.3f}]"


def paired_difference(a: Sequence[int], b: Sequence[int]) -> Paired:
    """A and B scored on the same units (test items x seeds). Var(d) = p_discordant - mean^2 per unit."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty outcome lists, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    discordant = sum(1 for d in diffs if d) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(1, n - 1)
    return Paired(mean=mean, half_width=Z95 * math.sqrt(var / n), n=n, discordant=discordant)


def units_needed(discordant: float, mean: float = 0.0, half_width: float = 0.02) -> int:
    """Paired units (items x seeds) for a 95% CI half-width: n = (z / hw)^2 (p_disc - mean^2)."""
    return math.ceil((Z95 / half_width) ** 2 * max(discordant - mean**2, 0.0))


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% t half-width over a few per-seed values (the seed-level check on the pooled CI)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(
        n, 2.2
    )
    return mean, t * sd / math.sqrt(n)


def best_index(values: Sequence[float]) -> int:
    """Index of the highest value; ties go to the first (the smaller beta / the earlier epoch)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass(frozen=True)
class Detection:
    """How well "most suspect first" finds the truly flipped pairs."""

    precision_at_k: float  # among the k most suspect
    recall_at_k: float
    k: int
    precision_negative: float  # among pairs with score < 0 ("the model disagrees with the label")
    recall_negative: float
    auc: float  # probability a flipped pair is ranked above a clean one


def detection(scores: Sequence[float], flipped: Sequence[int], k: int) -> Detection:
    """`scores`: per pair, lower = more suspect (e.g. the margin beta*h on the label as given)."""
    flip = set(flipped)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    top = order[:k]
    hits = sum(1 for i in top if i in flip)
    negative = [i for i in range(len(scores)) if scores[i] < 0]
    neg_hits = sum(1 for i in negative if i in flip)
    return Detection(
        precision_at_k=hits / k if k else math.nan,
        recall_at_k=hits / len(flip) if flip else math.nan,
        k=k,
        precision_negative=neg_hits / len(negative) if negative else math.nan,
        recall_negative=neg_hits / len(flip) if flip else math.nan,
        auc=_auc([-scores[i] for i in range(len(scores))], [i in flip for i in range(len(scores))]),
    )


def _auc(values: Sequence[float], positive: Sequence[bool]) -> float:
    """Mann-Whitney AUC with ties counted half."""
    ranked = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and values[ranked[j + 1]] == values[ranked[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[ranked[m]] = (i + j) / 2 + 1
        i = j + 1
    n_pos = sum(positive)
    n_neg = len(values) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    rank_sum = sum(r for r, p in zip(ranks, positive, strict=True) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
