"""Our callbacks' state in a checkpoint's `trainer_state.json`: restored in place when resuming, brought up to date
when we write the file ourselves.

Callback state (`ExportableState`, e.g. `KLMonitorCallback`'s consecutive-breach count) is saved in
`trainer_state.json` but restored by transformers only with `restore_callback_states_from_checkpoint=True`, and then
into new callback objects. `restore_callback_states` restores trl-conservative's own callbacks in place whatever that
flag says, provided they were built with the same arguments. `TrainCounters` carries what TRL counts on the trainer
but nobody checkpoints (the `num_tokens` total), so the logged history continues unbroken. `SettingsStamp` records
the run's settings, which a resume compares with the settings given then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from transformers.trainer_callback import ExportableState, TrainerCallback
from transformers.utils import logging

__all__ = [
    "SettingsStamp",
    "TrainCounters",
    "restore_callback_states",
    "save_trainer_state",
    "stored_attribute",
]

logger = logging.get_logger(__name__)


def restore_callback_states(callbacks: Iterable[Any], stored: Mapping[str, Any]) -> list[str]:
    """Restore, in place, trl-conservative callbacks from the `stateful_callbacks` of a `trainer_state.json`.

    Only callbacks defined in this package are touched (others follow transformers'
    `restore_callback_states_from_checkpoint`). A stored state whose `args` differ from the callback's (a
    threshold changed between the runs) is not restored, with a warning. Returns the restored class names.
    """
    restored = []
    by_name: dict[str, list[Any]] = {}
    for callback in callbacks:
        if getattr(callback, "record_only", False):  # a record of the run (SettingsStamp), not state to restore
            continue
        if type(callback).__module__.startswith("trl_conservative.") and hasattr(callback, "state"):
            by_name.setdefault(type(callback).__name__, []).append(callback)
    for name, group in by_name.items():
        data = stored.get(name)
        if data is None:
            continue
        states = data if isinstance(data, list) else [data]
        for callback, state in zip(group, states, strict=False):
            current = callback.state()
            if state.get("args", {}) != current.get("args", {}):
                logger.warning(
                    f"Not restoring {name} from the checkpoint: it was built with {state.get('args')}, now with "
                    f"{current.get('args')}. Its counters start afresh."
                )
                continue
            for attribute, value in state.get("attributes", {}).items():
                setattr(callback, attribute, value)
            restored.append(name)
    return restored


class TrainCounters(TrainerCallback, ExportableState):
    """Run totals kept on the trainer that transformers does not checkpoint: TRL's `num_tokens` count.

    `state()` reads the live value through `read` when the trainer set it; the value is saved in every
    checkpoint's `trainer_state.json` and given back to the trainer on resume.
    """

    def __init__(self, train_tokens: int = 0) -> None:
        self.train_tokens = train_tokens
        self.read: Callable[[], int] | None = None

    def state(self) -> dict[str, Any]:
        if self.read is not None:
            self.train_tokens = int(self.read())
        return {"args": {}, "attributes": {"train_tokens": self.train_tokens}}


def stored_attribute(stored: Mapping[str, Any], callback: type, attribute: str) -> Any:
    """An attribute of the first saved state of `callback` in `stateful_callbacks`, or None."""
    data = stored.get(callback.__name__)
    if isinstance(data, list):
        data = data[0] if data else None
    return (data or {}).get("attributes", {}).get(attribute)


class SettingsStamp(TrainerCallback, ExportableState):
    """Records the run's settings (`run/resume.py: settings_record`) in every checkpoint's `trainer_state.json`.

    A resume compares them with the settings given then. A record, not state: it is never restored
    (`restore_callback_states` skips it), so each checkpoint holds the settings that were in effect when it was saved.
    """

    record_only = True

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def state(self) -> dict[str, Any]:
        return {"args": {"settings": self.settings}, "attributes": {}}


def save_trainer_state(trainer: Any, path: str | os.PathLike[str]) -> None:
    """Write `trainer.state` to `path` (atomically) with every `ExportableState` callback's state brought up to date,
    as `Trainer._save_checkpoint` does: the run stamp, the settings, the pair scores, the KL monitor's counters."""
    from . import atomic

    stored = trainer.state.stateful_callbacks
    if isinstance(stored, dict):
        states: dict[str, list[dict[str, Any]]] = {}
        for callback in [*trainer.callback_handler.callbacks, trainer.control]:
            if isinstance(callback, ExportableState):
                states.setdefault(type(callback).__name__, []).append(callback.state())
        stored.update({name: group[0] if len(group) == 1 else group for name, group in states.items()})
    with atomic.replacing(path) as temp:
        trainer.state.save_to_json(str(temp))
