"""Training pairs that look mislabeled: the pairs the trained policy disagrees with most confidently.

After training, one extra no-grad forward pass over the training split scores each pair on the label as given by
the trained policy's own log-likelihood margin, ``score = log pi(y_w|x) - log pi(y_l|x)`` (completion tokens
summed, as TRL sums them). The most negative scores come first: the pairs whose "rejected" answer the policy,
having learned from the whole data set, finds far more likely than the "chosen" one. The score was chosen by the
label-noise study (`benchmarks/RESULTS.md`, section 3): with 20% of the arithmetic pairs flipped it ranks flipped
pairs above clean ones with AUC about 0.9, against about 0.75 for the implicit-reward margin ``beta * h``, which
only sees what training changed relative to the reference (and DPO partly fits the flipped pairs). The margin is
kept beside the score (`margin`; a reference forward, or the precomputed reference log-probs; null for a
reference-free loss). The sum is length-sensitive: when chosen and rejected differ much in length, read the list
with that in mind.

`trl-conservative run` writes the `suspected_flips` most suspect pairs (default 20; 0 turns the pass off) to
``suspected_flips.jsonl`` in the output folder, one JSON object per line, most suspect first:
``{"rank", "index", "score", "margin", "prompt", "chosen", "rejected"}``, where ``index`` is the row's position
in the training split as the user gave it (before any `drop_bad_rows` filtering, `test_split_size` hold-out or
TRL's dropping of over-long prompts), and prompt/chosen/rejected are short one-line previews. The report shows
them as "pairs that look mislabeled".

The pure functions (`rank_suspects`, `preview`, `row_positions`) need no model; `pair_scores` runs the pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TOP",
    "PREVIEW_CHARS",
    "SUSPECTED_FLIPS_FILE",
    "SuspectedFlip",
    "kept_after_truncation",
    "pair_scores",
    "preview",
    "rank_suspects",
    "read_suspected_flips",
    "report_suspected_flips",
    "row_positions",
    "suspected_flips",
    "write_suspected_flips",
]

SUSPECTED_FLIPS_FILE = "suspected_flips.jsonl"
DEFAULT_TOP = 20
PREVIEW_CHARS = 60


@dataclass(frozen=True)
class SuspectedFlip:
    """One training pair the policy disagrees with, on the label as given (lower `score` = more suspect)."""

    rank: int
    index: int  # position in the training split as the user gave it
    score: float  # log pi(y_w|x) - log pi(y_l|x) under the trained policy
    margin: float | None  # the implicit-reward margin beta*h; None without a reference
    prompt: str
    chosen: str
    rejected: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rank_suspects(scores: Sequence[float], *, top: int) -> list[int]:
    """Positions of the `top` lowest finite scores, lowest first (ties keep the data order)."""
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top!r}.")
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    return sorted(finite, key=lambda i: scores[i])[:top]


def preview(value: Any, width: int = PREVIEW_CHARS) -> str:
    """One line of at most `width` characters: text as is, chat messages as `role: content` joined by " | "."""
    if isinstance(value, list):
        text = " | ".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in value
        )
    else:
        text = "" if value is None else str(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
    model = trainer.model
    reference_free = trainer.ref_model is None and not precomputed and not _is_peft(model)
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


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def suspected_flips(trainer: Any, given: Any, *, top: int = DEFAULT_TOP) -> list[SuspectedFlip]:
    """The `top` most suspect pairs of `given`, the training split as handed to the trainer (before TRL's
    tokenization), with `index` mapped back through every filter to the user's row position."""
    if top <= 0:
        return []
    scores, margins = pair_scores(trainer)
    kept = kept_after_truncation(given, trainer)
    positions = row_positions(given)
    out = []
    for rank, i in enumerate(rank_suspects(scores, top=top), start=1):
        row = given[kept[i]]
        out.append(
            SuspectedFlip(
                rank=rank,
                index=positions[kept[i]],
                score=round(scores[i], 6),
                margin=_rounded(margins[i]),
                prompt=preview(row.get("prompt", "")),
                chosen=preview(row.get("chosen")),
                rejected=preview(row.get("rejected")),
            )
        )
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


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
    fields = set(SuspectedFlip.__dataclass_fields__)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            out.append(SuspectedFlip(**{k: v for k, v in data.items() if k in fields}))
    return out


def report_suspected_flips(
    trainer: Any, given: Any, output_dir: str | Path, *, top: int, log: Callable[[str], None] = print
) -> tuple[list[SuspectedFlip] | None, float | None]:
    """The runner's step: score, rank and write `suspected_flips.jsonl` atomically; returns (flips, seconds).

    A diagnostic never fails a finished run: any error is logged in one line and the list is skipped. Skipped
    too (with a line saying so) in multi-process runs and for streamed datasets.
    """
    import time

    from trl_conservative.reliability import atomic

    if top <= 0:
        return None, None
    if int(getattr(trainer.accelerator, "num_processes", 1)) > 1:
        log("Suspected-flip list skipped: it is computed in single-process runs only.")
        return None, None
    if not hasattr(given, "__len__") or not hasattr(trainer.train_dataset, "select_columns"):
        log("Suspected-flip list skipped: it needs a map-style (not streamed) training split.")
        return None, None
    started = time.monotonic()
    try:
        flips = suspected_flips(trainer, given, top=top)
        write_suspected_flips(flips, output_dir, writer=atomic.write_text)
    except Exception as exc:  # a diagnostic: report it, keep the trained run
        log(f"Suspected-flip list skipped: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return None, None
    return flips, time.monotonic() - started
