"""Score every training pair from the forwards training already runs (`flips.scores.PairScores`).

The trainer's tokenized training split gets one more column, `PAIR_ROW` (each row's position), which the
collator wrapper below moves into the batch; `ConservativeDPOTrainer.compute_loss` takes it out again before TRL
sees the batch, and the adapter hands TRL's own summed log-probs of the batch to `_record_pair_scores`. In a
multi-process run the rows and margins are gathered, so every process holds every pair's scores. The scores are
checkpointed (`PairScoresCallback`) and carry over a resume. `pair_scores` scores every pair once more after
training, under the trained policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from trl_conservative.flips.scores import PairScores

from .trl_compat import is_peft_model

__all__ = ["PAIR_ROW", "PairRowCollator", "PairScoresCallback", "PairScoring", "pair_scores"]

PAIR_ROW = "trl_conservative_pair_row"


class PairRowCollator:
    """Wraps a collator: each example's `PAIR_ROW` (when there) becomes a `[B]` tensor in the batch."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples or PAIR_ROW not in examples[0]:
            return self.inner(examples)
        rows = [int(example[PAIR_ROW]) for example in examples]
        batch = self.inner([{k: v for k, v in example.items() if k != PAIR_ROW} for example in examples])
        batch[PAIR_ROW] = torch.tensor(rows, dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:  # the wrapped collator's attributes (pad_token_id, ...)
        return getattr(self.inner, name)


class PairScoresCallback(TrainerCallback, ExportableState):  # type: ignore[misc]
    """Saves the recorded pair scores in each checkpoint's `trainer_state.json` and restores them on resume."""

    def __init__(self, book: PairScores | None = None) -> None:
        self.book = book if book is not None else PairScores()

    @property
    def pairs(self) -> list[list[Any]]:
        return self.book.state()

    @pairs.setter
    def pairs(self, state: list[list[Any]]) -> None:
        self.book.load(state)

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"pairs": self.pairs}}


class PairScoring:
    """The part of `ConservativeDPOTrainer` that records `pair_scores` (mixed into the trainer)."""

    pair_scores: PairScores | None = None
    _pair_rows: torch.Tensor | None = None
    args: Any
    state: Any
    accelerator: Any
    train_dataset: Any
    data_collator: Any
    _signature_columns: Any

    def _start_pair_scores(self) -> None:
        """Number the rows of a map-style training split; a streamed one is not scored."""
        dataset = self.train_dataset
        if dataset is None or not hasattr(dataset, "add_column") or not hasattr(dataset, "__len__"):
            return
        if PAIR_ROW not in (dataset.column_names or []):
            self.train_dataset = dataset.add_column(PAIR_ROW, list(range(len(dataset))))
        if not isinstance(self.data_collator, PairRowCollator):
            self.data_collator = PairRowCollator(self.data_collator)
        self.pair_scores = PairScores()
        self.add_callback(PairScoresCallback(self.pair_scores))  # type: ignore[attr-defined]

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()  # type: ignore[misc]
        if self._signature_columns is not None and PAIR_ROW not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, PAIR_ROW]

    def _take_pair_rows(self, inputs: dict[str, Any]) -> None:
        """Move the batch's row numbers out of `inputs` (TRL never sees them) for `_record_pair_scores`."""
        self._pair_rows = inputs.pop(PAIR_ROW, None)

    def _record_pair_scores(
        self,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        ref_chosen: torch.Tensor | None,
        ref_rejected: torch.Tensor | None,
    ) -> None:
        """Record this training batch's margins (TRL's summed completion log-probs, `[B]` each)."""
        rows, self._pair_rows = self._pair_rows, None
        if rows is None or self.pair_scores is None or not bool(getattr(self.model, "training", False)):  # type: ignore[attr-defined]
            return
        device = chosen.device
        margins = [chosen.detach().double() - rejected.detach().double()]
        if ref_chosen is not None and ref_rejected is not None:
            margins.append(ref_chosen.detach().double().to(device) - ref_rejected.detach().double().to(device))
        table = torch.stack([rows.to(device).double(), *margins], dim=1)  # [B, 2 or 3]; rows exact in float64
        if self.accelerator.num_processes > 1:
            table = self.accelerator.gather(table)
        values: list[Sequence[float]] = table.cpu().T.tolist()
        self.pair_scores.record(
            [int(r) for r in values[0]],
            values[1],
            values[2] if len(values) > 2 else None,
            step=int(self.state.global_step) + 1,
            max_steps=int(self.state.max_steps),
        )


def pair_scores(trainer: Any, *, batch_size: int | None = None) -> tuple[list[float], list[float | None]]:
    """(score, beta*h) for every row of `trainer.train_dataset` (TRL's tokenized split), in order; no grad.

    The extra pass after training (`suspected_flips_pass`): each pair scored under the trained policy, by the
    trainer's own `pair_logps` forwards.
    """
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
