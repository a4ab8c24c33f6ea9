"""Label noise after a run: how many training pairs look flipped (with a 95% interval), and which ones.

Free by default: every pair is scored by the forwards training already runs (`trl_conservative.flips.scores`): the
policy's log-likelihood margin ``score = log pi(y_w|x) - log pi(y_l|x)`` when the pair is first trained on, before
the update that uses it (out of sample), and the implicit-reward margin ``beta * h`` then. A mirror-mixture fit of
those scores (`trl_conservative.flips.estimate`) estimates the share of flipped labels with a 95% interval and each
pair's probability of being flipped. The list holds the pairs more likely flipped than not, most likely first, at
most `suspected_flips` of them; on data that read as clean it is empty; when the scores cannot tell clean from
noisy (the interval reaches from 0 to 5% or more: a short run, a small learning rate) it holds the pairs the
policy disagrees with most, and the report says that this is weak evidence. Pairs that occur more than once, or whose
chosen and rejected answers are identical once cut to `max_length`, are left out of both (a warning counts them).
`benchmarks/RESULTS.md` ("Suspected flips") compares the scores and measures the interval against planted flips.

With `suspected_flips_pass: true` an extra no-grad pass over the training split after training scores every pair
under the trained policy (`pair_scores`); the list is then ranked by that score (most negative first), at the cost
RESULTS.md measures; the estimate still comes from the training-time scores.

`trl-conservative run` writes the list to ``suspected_flips.jsonl`` in the output folder, one JSON object per line,
most suspect first: ``{"rank", "index", "flip_probability", "score", "margin", "step", "prompt", "chosen",
"rejected"}``, where ``index`` is the row's position in the training split as the user gave it (before any
`drop_bad_rows` filtering, `test_split_size` hold-out or TRL's dropping of over-long prompts), and
prompt/chosen/rejected are short one-line previews (for chat messages, the text of the last message). The estimate
goes into ``run_summary.json`` (`label_noise`), the report and the model card.

This module holds what is reported (`SuspectedFlip`, `LabelNoise`, the file); `run/label_noise.py` computes them
from a trained trainer, and `trainer/pair_scoring.py` runs the extra pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TOP",
    "NEGLIGIBLE_SHARE",
    "UNDETERMINED_SHARE",
    "PREVIEW_CHARS",
    "SUSPECTED_FLIPS_FILE",
    "LabelNoise",
    "SuspectedFlip",
    "listed_positions",
    "preview",
    "rank_suspects",
    "read_suspected_flips",
    "verdict_of",
    "write_suspected_flips",
]

SUSPECTED_FLIPS_FILE = "suspected_flips.jsonl"
DEFAULT_TOP = 20
PREVIEW_CHARS = 60
NEGLIGIBLE_SHARE = 0.02  # an interval ending below 2% reads as clean (at most 1 pair in 50 looks flipped)
UNDETERMINED_SHARE = 0.05  # an interval from 0 reaching this far: the run could not tell clean from noisy


@dataclass(frozen=True)
class SuspectedFlip:
    """One training pair that looks mislabeled (listed most likely first)."""

    rank: int
    index: int  # position in the training split as the user gave it
    flip_probability: float | None  # P(flipped | its training-time score), from the label-noise fit
    score: float  # log pi(y_w|x) - log pi(y_l|x): when first trained on, or after training with the extra pass
    margin: float | None  # the implicit-reward margin beta*h at the same moment; None without a reference
    step: int | None  # the optimizer step that first trained the pair (None: scored after training only)
    prompt: str
    chosen: str
    rejected: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelNoise:
    """The run's label-noise estimate, as `run_summary.json` keeps it (`label_noise`)."""

    share: float | None  # estimated share of flipped pairs among the scored ones (None: not estimated)
    low: float | None  # its 95% interval
    high: float | None
    scored: int  # pairs scored when first trained on and used by the estimate
    pairs: int  # pairs in the trained split
    repeated: int = 0  # pairs left out: they occur more than once
    identical: int = 0  # pairs left out: chosen and rejected identical once cut to max_length
    listed: int = 0  # pairs in suspected_flips.jsonl
    ranked_by: str = "training"  # "training" (the scores when first trained on) or "after_training" (extra pass)
    note: str | None = None  # why there is no estimate

    @property
    def verdict(self) -> str:
        """What the estimate says, in one word (the report, the card and the list all follow it):

        - "flipped": the interval excludes 0 and reaches `NEGLIGIBLE_SHARE`: some labels look flipped;
        - "negligible": the interval ends below `NEGLIGIBLE_SHARE` (a few pairs the policy confidently gets wrong,
          as clean data also hold);
        - "clean": the interval starts at 0 and ends below `UNDETERMINED_SHARE`;
        - "undetermined": the interval starts at 0 and reaches `UNDETERMINED_SHARE` or more: the policy did not
          separate the pairs clearly enough to tell (a short run, a small learning rate);
        - "none": no estimate (see `note`).
        """
        if self.share is None or self.low is None or self.high is None:
            return "none"
        if self.high < NEGLIGIBLE_SHARE:
            return "negligible" if self.low > 0 else "clean"
        if self.low > 0:
            return "flipped"
        return "clean" if self.high < UNDETERMINED_SHARE else "undetermined"

    @property
    def count(self) -> int | None:
        return None if self.share is None else round(self.share * self.scored)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> LabelNoise | None:
        """A `LabelNoise` from `run_summary.json`, or None when the field is absent or not a well-formed record."""
        if not isinstance(data, dict):
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None


def rank_suspects(scores: Sequence[float], *, top: int) -> list[int]:
    """Positions of the `top` lowest finite scores, lowest first (ties keep the data order)."""
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top!r}.")
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    return sorted(finite, key=lambda i: scores[i])[:top]


def preview(value: Any, width: int = PREVIEW_CHARS) -> str:
    """One line of at most `width` characters: text as is; for chat messages, the content of the last message
    (a completion's answer, a prompt's question), prefixed "(+N turns)" when earlier turns (not counting a system
    prompt) are left out."""
    if isinstance(value, list):
        turns = [m for m in value if isinstance(m, dict)]
        if turns:
            text = _content(turns[-1].get("content", ""))
            earlier = sum(m.get("role") != "system" for m in turns[:-1])  # a system prompt is not a turn
            if earlier:
                text = f"(+{earlier} turn{'s' if earlier > 1 else ''}) {text}"
        else:
            text = " | ".join(str(m) for m in value)
    else:
        text = "" if value is None else str(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _content(content: Any) -> str:
    """A message's text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def listed_positions(estimate: Any, policy_margins: Sequence[float], *, top: int) -> list[int]:
    """Which scored pairs (positions in the estimate's input) the list holds, most suspect first.

    Pairs more likely flipped than not when the verdict is "flipped" or "negligible", by the fitted disagreement;
    when it is "undetermined", the pairs whose policy margin is negative, most negative first (weak evidence, and
    the report says so); none on clean data.
    """
    verdict = verdict_of(estimate)
    if verdict in ("flipped", "negligible"):
        chosen = [i for i, p in enumerate(estimate.posterior) if p > 0.5]
        return sorted(chosen, key=lambda i: (-estimate.disagreement[i], policy_margins[i]))[:top]
    if verdict == "undetermined":
        # The fit could not orient itself: rank by the policy's own margin, the steadier order when the policy
        # separates the pairs only weakly (benchmarks/RESULTS.md, "Suspected flips", real model).
        chosen = [i for i, m in enumerate(policy_margins) if m < 0]
        return sorted(chosen, key=lambda i: policy_margins[i])[:top]
    return []


def verdict_of(estimate: Any) -> str:
    """`LabelNoise.verdict` of a `FlipShareEstimate` (or None: "none")."""
    if estimate is None:
        return "none"
    return LabelNoise(share=estimate.share, low=estimate.low, high=estimate.high, scored=estimate.n, pairs=0).verdict


def write_suspected_flips(
    flips: Sequence[SuspectedFlip],
    output_dir: str | Path,
    *,
    writer: Callable[[Path, str], Any] | None = None,
) -> Path:
    """Write `suspected_flips.jsonl` (most suspect first); `writer(path, text)` replaces a plain write."""
    path = Path(output_dir) / SUSPECTED_FLIPS_FILE
    text = "".join(json.dumps(f.to_json(), ensure_ascii=False) + "\n" for f in flips)
    if writer is not None:
        writer(path, text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_suspected_flips(output_dir: str | Path) -> list[SuspectedFlip] | None:
    """The saved list, or None when the run wrote none (pass off, an older run, a plain Trainer folder)."""
    path = Path(output_dir) / SUSPECTED_FLIPS_FILE
    if not path.is_file():
        return None
    names = [f.name for f in fields(SuspectedFlip)]
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            out.append(SuspectedFlip(**{k: data.get(k) for k in names}))
    return out
