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
"""

from __future__ import annotations

import json
import math
import time
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
    "find_suspected_flips",
    "kept_after_truncation",
    "listed_positions",
    "pair_scores",
    "preview",
    "rank_suspects",
    "read_suspected_flips",
    "report_suspected_flips",
    "row_positions",
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


def row_positions(dataset: Any) -> list[int]:
    """For each row of `dataset`, its position in the table it was selected from.

    `datasets` keeps `select`, `filter`, `shuffle` and `train_test_split` as an indices mapping over the table the
    split was loaded as, so a split the runner filtered or held out from still knows where each row came from.
    """
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return list(range(len(dataset)))
    return [int(i) for i in indices.column(0).to_pylist()]




def kept_after_truncation(dataset: Any, trainer: Any) -> list[int]:
    """Rows of `dataset` (the split handed to the trainer) that TRL kept: it drops, with `keep_start` truncation,
    the rows whose prompt alone fills `max_length` (see `validate.check_truncation`)."""
    n_trained = len(trainer.train_dataset)
    if n_trained == len(dataset):
        return list(range(n_trained))
    from trl_conservative.run.validate import prompt_lengths

    max_length = trainer.args.max_length
    lengths = prompt_lengths(dataset, trainer.processing_class)
    kept = [i for i, n in enumerate(lengths) if max_length is None or n < max_length]
    if len(kept) != n_trained:
        raise ValueError(
            f"cannot map the {n_trained} trained rows back to the {len(dataset)} given rows ({len(kept)} kept by the "
            "prompt-length rule)."
        )
    return kept




def pair_scores(trainer: Any, *, batch_size: int | None = None) -> tuple[list[float], list[float | None]]:
    """(score, beta*h) for every row of `trainer.train_dataset` (TRL's tokenized split), in order; no grad."""
    from torch.utils.data import DataLoader

    dataset = trainer.train_dataset
    keys = list(trainer.PAIR_COLUMNS)  # TRL's tokenized pair, as this TRL line names its columns
    precomputed = bool(getattr(trainer, "precompute_ref_logps", False)) and "ref_chosen_logps" in (
        dataset.column_names or []
    )
    if precomputed:
        keys += ["ref_chosen_logps", "ref_rejected_logps"]
    rows = dataset.select_columns(keys)
    loader = DataLoader(
        rows,
        batch_size=batch_size or int(trainer.args.per_device_eval_batch_size),
        collate_fn=trainer.data_collator,
        shuffle=False,
    )
    from trl_conservative.trainer.trl_compat import is_peft_model

    model = trainer.model
    reference_free = trainer.ref_model is None and not precomputed and not is_peft_model(model)
    beta = float(trainer.args.beta)
    device = trainer.accelerator.device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    margins: list[float | None] = []
    try:
        for batch in loader:
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            chosen, rejected = trainer.pair_logps(model, batch)
            scores += [float(x) for x in (chosen.float() - rejected.float()).cpu()]
            if reference_free:
                margins += [None] * len(chosen)
                continue
            if precomputed:
                ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = trainer.pair_logps(model, batch, reference=True)
            h = (chosen.float() - ref_chosen.float()) - (rejected.float() - ref_rejected.float())
            margins += [beta * float(x) for x in h.cpu()]
    finally:
        model.train(was_training)
    return scores, margins








def _left_out(trainer: Any) -> tuple[set[int], set[int]]:
    """Rows of the trainer's tokenized training split that are repeated, or identical after truncation."""
    from trl_conservative.flips.scores import duplicate_rows

    columns = list(trainer.PAIR_COLUMNS)
    table = trainer.train_dataset.select_columns(columns)
    max_length = getattr(trainer.args, "max_length", None)
    mode = str(getattr(trainer.args, "truncation_mode", "keep_start"))
    return duplicate_rows(
        ((row[columns[0]], row[columns[1]], row[columns[2]]) for row in table), max_length, mode
    )


def find_suspected_flips(
    trainer: Any,
    given: Any,
    *,
    top: int = DEFAULT_TOP,
    after_training: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[LabelNoise, list[SuspectedFlip]]:
    """The label-noise estimate and the suspected flips of `given` (the training split handed to the trainer),
    with `index` mapped back through every filter to the user's row position."""
    from trl_conservative.flips.estimate import estimate_flip_share, flip_design

    pairs = len(trainer.train_dataset)
    book = getattr(trainer, "pair_scores", None)
    recorded = {s.row: s for s in book.scores()} if book is not None else {}
    repeated, identical = _left_out(trainer)
    if repeated or identical:
        log(
            f"Label noise: {len(repeated)} training pairs occur more than once and {len(identical)} have chosen "
            "and rejected identical once cut to max_length; their scores say nothing reliable about their labels, "
            "so they are left out of the estimate and the suspected-flip list."
        )
    rows = [r for r in sorted(recorded) if r not in repeated and r not in identical]
    scored = [recorded[r] for r in rows]
    with_reference = bool(scored) and all(p.reference_margin is not None for p in scored)
    estimate = estimate_flip_share(
        flip_design(
            [p.policy_margin for p in scored],
            [p.reference_margin for p in scored] if with_reference else None,
            [p.progress for p in scored],
        )
    )
    posterior = dict(zip(rows, estimate.posterior, strict=True)) if estimate is not None else {}
    beta = float(trainer.args.beta)
    if after_training:
        scores, margins = pair_scores(trainer)
        candidates = [r for r in range(pairs) if r not in repeated and r not in identical and scores[r] < 0]
        order = sorted(candidates, key=lambda r: scores[r])[:top]
        listed = [(r, scores[r], margins[r], None) for r in order]
    else:
        positions = listed_positions(estimate, [recorded[r].policy_margin for r in rows], top=top)
        order = [rows[i] for i in positions]
        listed = [
            (r, recorded[r].policy_margin, recorded[r].implicit_margin(beta), recorded[r].step) for r in order
        ]
    kept = kept_after_truncation(given, trainer)
    positions = row_positions(given)
    flips = []
    for rank, (r, score, margin, step) in enumerate(listed, start=1):
        row = given[kept[r]]
        probability = posterior.get(r)
        flips.append(
            SuspectedFlip(
                rank=rank,
                index=positions[kept[r]],
                flip_probability=None if probability is None else round(probability, 4),
                score=round(score, 6),
                margin=None if margin is None else round(margin, 6),
                step=step,
                prompt=preview(row.get("prompt", "")),
                chosen=preview(row.get("chosen")),
                rejected=preview(row.get("rejected")),
            )
        )
    note = None
    if estimate is None:
        note = (
            f"only {len(rows)} pairs were scored while training (the estimate needs 20)"
            if recorded or book is not None
            else "the training split was not scored (a streamed data set)"
        )
    noise = LabelNoise(
        share=None if estimate is None else estimate.share,
        low=None if estimate is None else estimate.low,
        high=None if estimate is None else estimate.high,
        scored=0 if estimate is None else estimate.n,
        pairs=pairs,
        repeated=len(repeated),
        identical=len(identical),
        listed=len(flips),
        ranked_by="after_training" if after_training else "training",
        note=note,
    )
    return noise, flips


def listed_positions(estimate: Any, policy_margins: Sequence[float], *, top: int) -> list[int]:
    """Which scored pairs (positions in the estimate's input) the list holds, most suspect first.

    Pairs more likely flipped than not when the verdict is "flipped" or "negligible", by the fitted disagreement;
    when it is "undetermined", the pairs whose policy margin is negative, most negative first (weak evidence, and
    the report says so); none on clean data.
    """
    verdict = _verdict(estimate)
    if verdict in ("flipped", "negligible"):
        chosen = [i for i, p in enumerate(estimate.posterior) if p > 0.5]
        return sorted(chosen, key=lambda i: (-estimate.disagreement[i], policy_margins[i]))[:top]
    if verdict == "undetermined":
        # The fit could not orient itself: rank by the policy's own margin, the steadier order when the policy
        # separates the pairs only weakly (benchmarks/RESULTS.md, "Suspected flips", real model).
        chosen = [i for i, m in enumerate(policy_margins) if m < 0]
        return sorted(chosen, key=lambda i: policy_margins[i])[:top]
    return []


def _verdict(estimate: Any) -> str:
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


def report_suspected_flips(
    trainer: Any,
    given: Any,
    output_dir: str | Path,
    *,
    top: int,
    after_training: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[LabelNoise | None, list[SuspectedFlip] | None, float | None]:
    """The runner's step: estimate, rank and write `suspected_flips.jsonl` atomically; returns (estimate, flips,
    seconds).

    A diagnostic never fails a finished run: any error is logged in one line and the step is skipped. The extra
    pass (`after_training`) runs in single-process runs only.
    """
    from trl_conservative.reliability import atomic

    if top <= 0:
        return None, None, None
    if not hasattr(given, "__len__") or not hasattr(trainer.train_dataset, "select_columns"):
        log("Label noise not estimated: it needs a map-style (not streamed) training split.")
        return None, None, None
    if after_training and int(getattr(trainer.accelerator, "num_processes", 1)) > 1:
        log("suspected_flips_pass skipped: the extra pass runs in single-process runs only; listing from training.")
        after_training = False
    started = time.monotonic()
    try:
        noise, flips = find_suspected_flips(trainer, given, top=top, after_training=after_training, log=log)
        write_suspected_flips(flips, output_dir, writer=atomic.write_text)
    except Exception as exc:  # a diagnostic: report it, keep the trained run
        log(f"Suspected-flip list skipped: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return None, None, None
    return noise, flips, time.monotonic() - started
