"""The runner's label-noise step: estimate the flipped share from the scores training recorded, list the suspected
flips of the training split the user gave, and write `suspected_flips.jsonl` (what they are: `report/suspected_flips.py`).

Each listed pair's `index` is mapped back through every filter the run applied (`row_positions`: `drop_bad_rows`,
the `test_split_size` hold-out; `kept_after_truncation`: TRL's dropping of over-long prompts) to the row's position
in the data as the user gave it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trl_conservative.flips.estimate import estimate_label_noise
from trl_conservative.flips.scores import duplicate_rows
from trl_conservative.reliability import atomic
from trl_conservative.report.suspected_flips import (
    DEFAULT_TOP,
    LabelNoise,
    SuspectedFlip,
    listed_positions,
    preview,
    verdict_of,
    write_suspected_flips,
)
from trl_conservative.trainer.pair_scoring import pair_scores

from .validate import prompt_lengths

__all__ = ["find_suspected_flips", "kept_after_truncation", "report_suspected_flips", "row_positions"]


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
    max_length = trainer.args.max_length
    lengths = prompt_lengths(dataset, trainer.processing_class)
    kept = [i for i, n in enumerate(lengths) if max_length is None or n < max_length]
    if len(kept) != n_trained:
        raise ValueError(
            f"cannot map the {n_trained} trained rows back to the {len(dataset)} given rows ({len(kept)} kept by the "
            "prompt-length rule)."
        )
    return kept


def _left_out(trainer: Any) -> tuple[set[int], set[int]]:
    """Rows of the trainer's tokenized training split that are repeated, or identical after truncation."""
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
    estimate = estimate_label_noise(
        [p.policy_margin for p in scored],
        [p.reference_margin for p in scored] if with_reference else None,
        [p.progress for p in scored],
    )
    # Each pair's chance of being flipped is stated only where the run claims flips (or a negligible few): under an
    # interval from 0 ("undetermined") it would be a probability under a fit the run does not stand behind.
    claims = verdict_of(estimate) in ("flipped", "negligible")
    posterior = dict(zip(rows, estimate.posterior, strict=True)) if estimate is not None and claims else {}
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
