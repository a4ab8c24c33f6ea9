"""`RunSummary`: what a finished run's report shows, as plain data saved beside the run.

`trl-conservative run` writes `run_summary.json` (settings, timings, saved paths) and `trainer_state.json` (the
Trainer's `log_history`) into the output folder; `trl-conservative report OUTPUT_DIR` rebuilds the summary from
them. Everything derived (final, best and before/after metrics, KL series, warnings) is computed here by pure
functions over the log history, so the live run and the re-rendered report agree. No Rich in this module.

`RunSummary.load` trusts nothing it reads: every value is checked against the type the report needs. Damage to what
the report is made of (the settings, the log history) is one `ConfigError` naming the file, the field and the fix;
damage to an optional part (the label-noise estimate, the suspected-flip list, a saved path) leaves that part out
and says so among the warnings (`RunSummary.load_notes`). A folder `trl-conservative run` did not finish (or a plain
`Trainer`/`DPOTrainer` output) is read from what it holds (`trainer_state.json`, `trl_conservative_run.json`, the
saved config and adapter files, the model card's front matter; never the pickled `training_args.bin`), and each
setting it does not hold shows as "not recorded" (`NOT_RECORDED`).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

from trl_conservative.errors import ConfigError
from trl_conservative.metric_names import (
    KL_EXACT,
    KL_EXACT_CHOSEN,
    KL_EXACT_REJECTED,
    KL_SEQUENCE,
    LOGRATIO_METRICS,
    LOSS,
    REWARDS_ACCURACIES,
    REWARDS_CHOSEN,
    REWARDS_MARGINS,
    REWARDS_REJECTED,
    SAMPLED_KL_STDERR,
)
from trl_conservative.report.alarms import GRAD_NORM, training_alarms
from trl_conservative.report.formatting import fmt_number
from trl_conservative.training_args import is_number, weights_in_effect

__all__ = [
    "ACCURACY",
    "DRIFT_METRICS",
    "HEADLINE_METRICS",
    "HIGHER_IS_BETTER",
    "KL_METRICS",
    "KL_MONITOR_PREFIX",
    "LOWER_IS_BETTER",
    "MARGIN",
    "MARGIN_COLLAPSE_FRACTION",
    "NOT_RECORDED",
    "PLOT_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
    "NotRecorded",
    "Point",
    "RunSettings",
    "RunSummary",
    "best_point",
    "kl_threshold_warnings",
    "margin_collapse",
    "metric_series",
    "run_warnings",
]

SUMMARY_FILE = "run_summary.json"
STATE_FILE = "trainer_state.json"
PLOT_FILE = "training_curves.png"

ACCURACY = REWARDS_ACCURACIES
MARGIN = REWARDS_MARGINS
# True KLs (>= 0, 0 at initialisation), the headline first; then the log-ratio drift signals (not KLs).
KL_METRICS = (KL_SEQUENCE, KL_EXACT, KL_EXACT_CHOSEN, KL_EXACT_REJECTED)
DRIFT_METRICS = LOGRATIO_METRICS
KL_MONITOR_PREFIX = "kl_monitor/"
# Metrics shown in the report's table, in order; `eval_` variants are looked up as well. KL has its own section.
HEADLINE_METRICS = (LOSS, ACCURACY, MARGIN, REWARDS_CHOSEN, REWARDS_REJECTED)
# Metrics where higher is better (for "best"); the others are lower-is-better or shown without a best.
HIGHER_IS_BETTER = {ACCURACY, MARGIN}
LOWER_IS_BETTER = {LOSS}
# A margin that falls below this fraction of its peak counts as collapsed.
MARGIN_COLLAPSE_FRACTION = 0.5

Point = tuple[int, float]


class NotRecorded(float):
    """A number the run folder does not record: NaN in arithmetic, "not recorded" wherever it is shown."""

    def __new__(cls) -> NotRecorded:
        return super().__new__(cls, math.nan)

    def __repr__(self) -> str:
        return "not recorded"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "not recorded"


NOT_RECORDED = NotRecorded()
NOT_RECORDED_TEXT = "not recorded"


@dataclass
class RunSettings:
    """The settings a report shows, copied from the config when the run starts."""

    loss_type: list[str]
    loss_weights: list[float]
    beta: float  # NOT_RECORDED (a float) where the folder does not record it; so are the other numbers below
    label_smoothing: float
    loss_params: dict[str, Any]
    model: str
    dataset: str
    train_rows: int | None = None
    eval_rows: int | None = None
    peft: str | None = None
    precision: str = "float32"
    learning_rate: float | None = None
    max_steps: int | None = None
    num_train_epochs: float | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    world_size: int = 1
    seed: int | NotRecorded | None = None
    kl_monitor: dict[str, Any] | None = None  # KLMonitorCallback's metric, warn_above, stop_above, patience
    trl_version: str | None = None  # the TRL that trained (TRL 0.2x logs no token count)


@dataclass
class RunSummary:
    """A run: its settings, its log history and where its outputs went."""

    settings: RunSettings
    log_history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str = ""
    model_dir: str | None = None
    model_card: str | None = None
    plot: str | None = None
    runtime_s: float | None = None
    global_step: int = 0
    max_steps: int | None = None
    suspected_flips: list[dict[str, Any]] | None = None  # most suspect training pairs (suspected_flips.jsonl)
    suspected_flips_s: float | None = None  # seconds the label-noise step took (estimate, list, optional pass)
    label_noise: dict[str, Any] | None = None  # suspected_flips.LabelNoise: the estimated share of flipped labels
    # What `load` could not read (a damaged optional part, a setting the folder does not record): shown first among
    # the warnings; never saved.
    load_notes: list[str] = field(default_factory=list, compare=False, repr=False)

    # --- persistence ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("log_history")  # lives in trainer_state.json
        data.pop("suspected_flips")  # lives in suspected_flips.jsonl
        data.pop("load_notes")
        return data

    def save(self, output_dir: str | Path) -> Path:
        from trl_conservative.reliability import atomic

        return atomic.write_json(Path(output_dir) / SUMMARY_FILE, self.to_json(), default=_json_default)

    @classmethod
    def load(cls, output_dir: str | Path) -> RunSummary:
        """Rebuild a run's summary from its output folder; a `ConfigError` says what is missing or damaged."""
        directory = Path(output_dir)
        if directory.is_file():
            raise ConfigError(
                f"Run folder {str(directory)!r} is a file, not a folder. Pass the output_dir of a finished run."
            )
        if not directory.is_dir():
            raise ConfigError(
                f"Run folder {str(directory)!r} does not exist. Pass the output_dir of a finished run."
            )
        summary_path, state_path = directory / SUMMARY_FILE, directory / STATE_FILE
        if not summary_path.is_file() and not state_path.is_file():
            raise ConfigError(
                f"{str(directory)!r} holds neither {SUMMARY_FILE} nor {STATE_FILE}. "
                "Pass the output_dir of a run made with `trl-conservative run` (or a Trainer output folder)."
            )
        notes: list[str] = []
        if summary_path.is_file():
            data = _read_json(summary_path, _SUMMARY_FIX)
            settings = _settings_from(data, summary_path)
            if not state_path.is_file():
                raise ConfigError(
                    f"{str(state_path)!r} is missing: it holds the run's metrics (log_history), which "
                    f"{SUMMARY_FILE} does not. Restore it{_checkpoint_hint(directory)}, or re-run the training."
                )
            state = _read_json(state_path, _STATE_FIX)
            history = _log_history(state, state_path)
            values = _summary_values(data, summary_path, directory, state, history, notes)
            summary = cls(settings=settings, log_history=history, **values)
            summary.suspected_flips = _suspected_flips_in(directory, summary.label_noise, notes)
            _check_saved_files(summary, directory, notes)
            summary.load_notes = notes
            return summary
        state = _read_json(state_path, _STATE_FIX)
        history = _log_history(state, state_path)
        return cls(
            settings=_settings_in_folder(directory, state, notes),
            log_history=history,
            output_dir=str(directory),
            model_dir=str(directory) if _saved_model_problem(directory) is None else None,
            model_card=_if_file(directory / _CARD_FILE),
            plot=_if_file(directory / PLOT_FILE) or "(none in this folder)",
            global_step=_state_int(state, "global_step", history, notes) or 0,
            max_steps=_state_int(state, "max_steps", [], notes),
            load_notes=notes,
        )

    # --- derived views ----------------------------------------------------------------------------------
    def series(self, key: str) -> list[Point]:
        return metric_series(self.log_history, key)

    def train_runtime(self) -> float | None:
        for entry in reversed(self.log_history):
            if "train_runtime" in entry:
                return float(entry["train_runtime"])
        return self.runtime_s

    def total_tokens(self) -> float | None:
        points = self.series("num_tokens")
        return points[-1][1] if points else None

    def tokens_per_second(self) -> float | None:
        tokens, runtime = self.total_tokens(), self.train_runtime()
        if tokens is None or not runtime:
            return None
        return tokens / runtime

    def held_out_accuracy(self) -> tuple[Point, Point] | None:
        """(first, last) held-out reward accuracy; the first is "before" when the run evaluated at step 0."""
        points = self.series("eval_" + ACCURACY)
        if len(points) < 2:
            return None
        return points[0], points[-1]

    def kl_metrics(self) -> list[str]:
        """The KL metric names present in the log (true KLs only): the headline sequence KL first, then the
        token KLs in `KL_METRICS` order, train before eval."""
        present = self._present(KL_METRICS)
        head = f"eval_{KL_SEQUENCE}"
        return ([head] if head in present else []) + [m for m in present if m != head]

    def drift_metrics(self) -> list[str]:
        """The log-ratio drift signals present in the log (`logratio/...`: not KLs, may be negative)."""
        return self._present(DRIFT_METRICS)

    def headline_kl(self) -> str | None:
        """The KL a reader should look at first: the sequence KL on the policy's samples, else the token KL."""
        present = self.kl_metrics()
        for name in (f"eval_{KL_SEQUENCE}", KL_EXACT, f"eval_{KL_EXACT}"):
            if name in present:
                return name
        return present[0] if present else None

    def sequence_kl_stderr(self) -> float | None:
        """The standard error of the last logged `eval_kl/sequence`, when logged."""
        points = self.series(f"eval_{SAMPLED_KL_STDERR}")
        return points[-1][1] if points else None

    def _present(self, metrics: tuple[str, ...]) -> list[str]:
        present = {k for entry in self.log_history for k in entry}
        train = [m for m in metrics if m in present]
        return train + [f"eval_{m}" for m in metrics if f"eval_{m}" in present]

    def warnings(self) -> list[str]:
        """What `load` could not read, then what a reader should look at in the run (`run_warnings`)."""
        return [*self.load_notes, *run_warnings(self.log_history, kl_monitor=self.settings.kl_monitor)]


def metric_series(history: list[dict[str, Any]], key: str) -> list[Point]:
    """(step, value) for every log entry holding `key` (non-numbers skipped, NaN kept)."""
    points = []
    for entry in history:
        value = entry.get(key)
        if is_number(value):
            points.append((int(entry.get("step", 0)), float(value)))
    return points


def best_point(points: list[Point], key: str) -> Point | None:
    """The best finite value of a metric: max for accuracies and margins, min for losses, else None."""
    base = key.removeprefix("eval_")
    finite = [p for p in points if math.isfinite(p[1])]
    if not finite:
        return None
    if base in HIGHER_IS_BETTER:
        return max(finite, key=lambda p: p[1])
    if base in LOWER_IS_BETTER:
        return min(finite, key=lambda p: p[1])
    return None


def run_warnings(history: list[dict[str, Any]], *, kl_monitor: dict[str, Any] | None = None) -> list[str]:
    """What a reader should look at: NaN/inf metrics, KL thresholds crossed and monitor events, a collapsed
    reward margin. `kl_monitor` holds the run's `KLMonitorCallback` settings (metric, warn_above, stop_above)."""
    found: list[str] = []
    bad: dict[str, int] = {}
    for entry in history:
        for key, value in entry.items():
            if isinstance(value, float) and not math.isfinite(value) and key not in bad:
                bad[key] = int(entry.get("step", 0))
    for key, step in bad.items():
        if key == GRAD_NORM:  # `training_alarms` below says it, with what to do
            continue
        found.append(
            f"{key} became non-finite at step {step}: check the learning rate, beta, the loss parameters and the "
            "precision."
        )
    for entry in history:
        for key, value in entry.items():
            if key.startswith(KL_MONITOR_PREFIX):
                found.append(
                    f"KL monitor: {key.removeprefix(KL_MONITOR_PREFIX)} = {fmt_number(value) if isinstance(value, float) else value} at step {entry.get('step', 0)}."
                )
    if kl_monitor:
        found.extend(kl_threshold_warnings(history, kl_monitor))
    for key in (MARGIN, "eval_" + MARGIN):
        message = margin_collapse(metric_series(history, key), key)
        if message:
            found.append(message)
    found.extend(training_alarms(history))  # non-finite gradient norms; an evaluation loss far above its start
    return found


def kl_threshold_warnings(history: list[dict[str, Any]], kl_monitor: dict[str, Any]) -> list[str]:
    """The first step the monitored KL metric went above each threshold, and its peak."""
    metric = str(kl_monitor.get("metric") or KL_EXACT)
    points = metric_series(history, metric)
    found = []
    for label in ("warn_above", "stop_above"):
        threshold = kl_monitor.get(label)
        if threshold is None:
            continue
        above = [p for p in points if math.isfinite(p[1]) and p[1] > threshold]  # the monitor skips NaN too
        if above:
            peak_step, peak = max(above, key=lambda p: p[1])
            found.append(
                f"{metric} rose above {label.replace('_', ' ')} = {fmt_number(float(threshold))} at step {above[0][0]} "
                f"(peak {fmt_number(peak)} at step {peak_step}, {len(above)} of {len(points)} logs)."
            )
    return found


def margin_collapse(points: list[Point], key: str = MARGIN) -> str | None:
    """A warning when the reward margin peaked above 0 and then ended below half of that peak."""
    finite = [p for p in points if math.isfinite(p[1])]
    if len(finite) < 2:
        return None
    peak_step, peak = max(finite, key=lambda p: p[1])
    last_step, last = finite[-1]
    if peak <= 0 or last_step == peak_step or last >= MARGIN_COLLAPSE_FRACTION * peak:
        return None
    return (
        f"{key} collapsed: {fmt_number(peak)} at step {peak_step}, {fmt_number(last)} at step {last_step}. "
        "Lower the learning rate or raise beta."
    )


# --- reading a run folder: every value checked against the type the report needs -------------------------------
_SUMMARY_FIX = "Restore the file from a backup, or re-run the training"
_STATE_FIX = "Restore the file (checkpoint-N/trainer_state.json holds the log up to that checkpoint), or re-run the training"
_IDENTITY_FILE = (
    "trl_conservative_run.json"  # reliability.output_dir.IDENTITY_FILE (importing that loads transformers)
)
_CARD_FILE = "README.md"
# Log keys the report reads as numbers, each also with the `eval_` prefix.
_NUMERIC_LOG_KEYS = frozenset(
    key
    for base in (
        *HEADLINE_METRICS,
        *KL_METRICS,
        *DRIFT_METRICS,
        SAMPLED_KL_STDERR,
        "num_tokens",
        "train_runtime",
    )
    for key in (base, f"eval_{base}")
)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class _Damaged(ValueError):
    """What is wrong with a file, as a phrase following its name ("is not valid JSON: ...")."""


def _load_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or `_Damaged` saying why not (unreadable, not UTF-8, empty, cut off, not JSON)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _Damaged(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    text = _utf8(raw)
    if not text.strip():
        raise _Damaged("is empty (a write was cut off, or the file was emptied)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        ends = text.rstrip()[-1:]
        cut = "" if ends in ("}", "]") else " (the file stops mid-value: it was cut off)"
        raise _Damaged(
            f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}{cut}"
        ) from None
    except RecursionError:
        raise _Damaged("is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise _Damaged(f"holds {_describe(data)} where a JSON object belongs")
    return data


def _utf8(raw: bytes) -> str:
    """`raw` as text (a byte order mark dropped), or `_Damaged` naming the first bad byte as `run` does."""
    from trl_conservative.file_checks import utf8_problem

    problem = utf8_problem(raw)
    if problem is not None:
        raise _Damaged(f"is not UTF-8 text: {problem}")
    return raw.decode("utf-8-sig")


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    """`_load_json`, its damage a `ConfigError` naming the file and the fix."""
    try:
        return _load_json(path)
    except _Damaged as exc:
        raise ConfigError(f"{str(path)!r} {exc}. {fix}.") from None


def _optional_json(path: Path, notes: list[str], lost: str) -> dict[str, Any] | None:
    """`_load_json` for a file the report can do without: None when absent; when damaged, a note saying so."""
    if not path.exists():
        return None
    try:
        return _load_json(path)
    except _Damaged as exc:
        notes.append(f"{path.name} {exc}; {lost}.")
        return None


def _fits(value: Any, expected: Any) -> bool:
    """Whether `value`, read from JSON, has the annotated type `expected` (an int counts as a float, a bool as
    neither)."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if isinstance(value, bool):
        return expected is bool
    if expected in (float, int, str):
        return isinstance(value, (int, float) if expected is float else expected)
    if origin is list:
        (item,) = typing.get_args(expected) or (Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        args = typing.get_args(expected) or (Any, Any)
        return isinstance(value, dict) and all(_fits(v, args[1]) for v in value.values())
    return False  # NotRecorded, ...: never read from a file


_WANTED = {float: "a number", int: "a whole number", str: "text", bool: "true or false", type(None): "null"}
_WANTED_ITEMS = {float: "numbers", int: "whole numbers", str: "text values"}


def _wanted(expected: Any) -> str:
    """What belongs where `expected` is annotated, in words ("a number or null")."""
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(
            dict.fromkeys(_wanted(a) for a in typing.get_args(expected) if a is not NotRecorded)
        )
    if origin is list:
        (item,) = typing.get_args(expected) or (Any,)
        return f"a list of {_WANTED_ITEMS.get(item, 'values')}"
    if origin is dict:
        return "a JSON object"
    return _WANTED.get(expected, getattr(expected, "__name__", str(expected)))


def _describe(value: Any) -> str:
    """A JSON value as a reader would name it: "text 'abc'", "a list [1, 2]", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the value {str(value).lower()}"
    if isinstance(value, str):
        return f"text {_short(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    kind = "a JSON object" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a value"
    try:
        shown = json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, RecursionError):
        shown = repr(value)
    return f"{kind} {_short(shown, quote=False)}"


def _short(text: str, limit: int = 40, *, quote: bool = True) -> str:
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text) if quote else text


def _problem(name: str, value: Any, expected: Any) -> str | None:
    """ "name is <value> where <type> belongs", or None when it fits."""
    if _fits(value, expected):
        return None
    return f"{name} is {_describe(value)} where {_wanted(expected)} belongs"


def _settings_from(data: dict[str, Any], path: Path) -> RunSettings:
    """The `settings` of a `run_summary.json`, each value checked; `ConfigError` for a file of another shape
    (version, program) or a damaged value."""

    def refuse(what: str) -> ConfigError:
        return ConfigError(
            f"{str(path)!r} is not a run summary this version of trl-conservative can read: {what}. {_SUMMARY_FIX}."
        )

    raw = data.pop("settings", None)
    if not isinstance(raw, dict):
        raise refuse(
            "it has no settings"
            if raw is None
            else f"settings is {_describe(raw)} where a JSON object belongs"
        )
    hints = typing.get_type_hints(RunSettings)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise refuse(
            f"unknown setting(s) {', '.join(map(repr, unknown))} (written by another version or program?)"
        )
    required = [f.name for f in fields(RunSettings) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise refuse(f"settings has no {', '.join(missing)}")
    for name, value in raw.items():
        problem = _problem(f"settings.{name}", value, hints[name])
        if problem:
            raise refuse(problem)
    if not raw["loss_type"]:
        raise refuse("settings.loss_type is an empty list")
    monitor = raw.get("kl_monitor") or {}
    for key, expected in (("metric", str | None), ("warn_above", float | None), ("stop_above", float | None)):
        problem = _problem(f"settings.kl_monitor.{key}", monitor.get(key), expected)
        if problem:
            raise refuse(problem)
    return RunSettings(**raw)


def _log_history(state: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The log history of a `trainer_state.json`: a list of entries whose step and reported metrics are numbers."""
    history = state.get("log_history", [])

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{str(path)!r}: {what}. {_STATE_FIX}.")

    if not isinstance(history, list):
        raise refuse(f"log_history is {_describe(history)} where a list of log entries belongs")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise refuse(f"log_history[{i}] is {_describe(entry)} where a JSON object belongs")
        for key, value in entry.items():
            if key == "step" or key in _NUMERIC_LOG_KEYS:
                problem = _problem(f"log_history[{i}][{key!r}]", value, int if key == "step" else float)
                if problem:
                    raise refuse(problem)
    return list(history)


def _state_int(
    state: dict[str, Any], key: str, history: list[dict[str, Any]], notes: list[str]
) -> int | None:
    """A whole number of `trainer_state.json` (`global_step`, `max_steps`); a damaged one is noted and, for the
    step, read from the log."""
    value = state.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    steps = [int(e["step"]) for e in history if "step" in e] if key == "global_step" else []
    if value is not None:
        fallback = "read from the log instead" if steps else "left out"
        notes.append(f"{STATE_FILE}: {key} is {_describe(value)} where a whole number belongs; {fallback}.")
    return max(steps) if steps else None


def _summary_values(
    data: dict[str, Any],
    path: Path,
    directory: Path,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    notes: list[str],
) -> dict[str, Any]:
    """The other fields of a `run_summary.json`, each checked; a damaged one is read from the folder instead (or
    left out) with a note."""
    from .suspected_flips import LabelNoise

    fallbacks: dict[str, tuple[str, Any]] = {
        "output_dir": ("read from the folder instead", lambda: str(directory)),
        "model_dir": (
            "read from the folder instead",
            lambda: str(directory) if _saved_model_problem(directory) is None else None,
        ),
        "model_card": ("read from the folder instead", lambda: _if_file(directory / _CARD_FILE)),
        "plot": ("read from the folder instead", lambda: _if_file(directory / PLOT_FILE)),
        "global_step": (
            f"read from {STATE_FILE} instead",
            lambda: _state_int(state, "global_step", history, notes) or 0,
        ),
        "max_steps": (f"read from {STATE_FILE} instead", lambda: _state_int(state, "max_steps", [], notes)),
        "runtime_s": ("the run time is read from the log only", lambda: None),
        "suspected_flips_s": ("the time the label-noise step took is left out", lambda: None),
        "label_noise": ("the label-noise estimate is left out", lambda: None),
    }
    hints = typing.get_type_hints(RunSummary)
    values: dict[str, Any] = {}
    for name, (consequence, fallback) in fallbacks.items():
        if name not in data:
            if name in ("global_step", "max_steps"):  # an older file: what the state says
                values[name] = fallback()
            continue
        value = data[name]
        problem = _problem(name, value, hints[name])
        if problem is None and name == "label_noise" and value is not None:
            problem = _record_problem("label_noise", value, LabelNoise)
        if problem is None:
            values[name] = value
        else:
            values[name] = fallback()
            notes.append(f"{SUMMARY_FILE}: {problem}; {consequence}.")
    return values


def _record_problem(name: str, value: dict[str, Any], record: type) -> str | None:
    """What is wrong with a JSON object read as the dataclass `record` (missing fields, wrong types), or None."""
    hints = typing.get_type_hints(record)
    for f in fields(record):
        if f.name not in value:
            if f.default is MISSING and f.default_factory is MISSING:
                return f"{name} has no {f.name}"
            continue
        problem = _problem(f"{name}.{f.name}", value[f.name], hints[f.name])
        if problem:
            return problem
    return None


def _suspected_flips_in(
    directory: Path, label_noise: dict[str, Any] | None, notes: list[str]
) -> list[dict[str, Any]] | None:
    """The saved suspected-flip list, checked line by line; a damaged or missing list is noted and left out."""
    from .suspected_flips import SUSPECTED_FLIPS_FILE, SuspectedFlip, read_suspected_flips

    path = directory / SUSPECTED_FLIPS_FILE
    listed = label_noise.get("listed") if isinstance(label_noise, dict) else None
    if not path.exists():
        if isinstance(listed, int) and listed > 0:
            notes.append(f"{SUSPECTED_FLIPS_FILE} is missing, though the run listed {listed} pairs in it.")
        return None
    try:
        if not path.is_file():
            raise _Damaged("is not a file")
        try:
            lines = _utf8(path.read_bytes()).splitlines()
        except OSError as exc:
            raise _Damaged(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise _Damaged(f"line {number} is not valid JSON (cut off or corrupt)") from None
            if not isinstance(row, dict):
                raise _Damaged(f"line {number} holds {_describe(row)} where a JSON object belongs")
            hints = typing.get_type_hints(SuspectedFlip)
            for name, expected in hints.items():
                problem = _problem(name, row.get(name), expected)
                if problem:
                    raise _Damaged(f"line {number}: {problem}")
        flips = read_suspected_flips(directory) or []
    except _Damaged as exc:
        notes.append(f"{SUSPECTED_FLIPS_FILE} {exc}; the list of suspected flips is left out.")
        return None
    if isinstance(listed, int) and len(flips) != listed:
        notes.append(
            f"{SUSPECTED_FLIPS_FILE} holds {len(flips)} pairs, but the run listed {listed}: the file was cut off or "
            "edited."
        )
    return [f.to_json() for f in flips]


def _check_saved_files(summary: RunSummary, directory: Path, notes: list[str]) -> None:
    """Note a saved model, card or curve file in the folder that is gone or damaged since the run (paths the
    summary records outside this folder, e.g. of a folder since moved, are not judged)."""
    model = _inside(summary.model_dir, directory)
    if model is not None:
        problem = _saved_model_problem(model)
        if problem:
            notes.append(f"The saved model {summary.model_dir!r} {problem}.")
    for label, recorded in (("model card", summary.model_card), ("curves file", summary.plot)):
        path = _inside(recorded, directory)
        if path is not None and not path.is_file():
            notes.append(f"The {label} {recorded!r} is missing (deleted or moved since the run).")


def _inside(recorded: str | None, directory: Path) -> Path | None:
    """`recorded` as a path when it lies in `directory` (or is it), else None."""
    if not recorded:
        return None
    try:
        path, folder = Path(recorded).resolve(), directory.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path == folder or folder in path.parents else None


def _saved_model_problem(folder: Path) -> str | None:
    """Why `folder` does not hold a complete saved model (config and weights, or an adapter), or None."""
    from trl_conservative.file_checks import safetensors_problem

    if not folder.is_dir():
        return "is missing"
    adapter = (folder / "adapter_config.json").is_file()
    names = _ADAPTER_WEIGHT_FILES if adapter else _WEIGHT_FILES
    if not adapter and not (folder / "config.json").is_file():
        return "has no config.json (deleted since the run?)"
    if not any((folder / name).is_file() for name in names):
        return f"has no weights file ({names[0]}; deleted since the run?)"
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            problem = safetensors_problem(weights)
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
        if problem:
            return f"has a weights file {weights.name} that {problem}"
    return None


def _if_file(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _checkpoint_hint(directory: Path) -> str:
    """ " from <last checkpoint>/trainer_state.json (the log up to step N)", or "" without a checkpoint."""
    steps = []
    for folder in directory.glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (folder / STATE_FILE).is_file():
            steps.append((int(suffix), folder))
    if not steps:
        return ""
    step, folder = max(steps)
    return f" (a copy of the log up to step {step} is in {str(folder / STATE_FILE)!r})"


# --- a folder without run_summary.json: a plain Trainer output, or a run that did not finish ------------------
def _settings_in_folder(directory: Path, state: dict[str, Any], notes: list[str]) -> RunSettings:
    """The settings a folder without `run_summary.json` records, read from its `trl_conservative_run.json`, saved
    config and adapter files and model card (never the pickled `training_args.bin`); the rest "not recorded"."""
    identity = _optional_json(
        directory / _IDENTITY_FILE, notes, "the settings it records are shown as not recorded"
    )
    config = _optional_json(directory / "config.json", notes, "the weights' dtype is not shown") or {}
    adapter = _optional_json(directory / "adapter_config.json", notes, "the adapter is not shown") or {}
    card, trl_version = _card_facts(directory / _CARD_FILE, notes)

    def take(source: dict[str, Any] | None, key: str, expected: Any) -> Any:
        value = (source or {}).get(key)
        return value if value is not None and _fits(value, expected) else None

    loss_type = take(identity, "loss_type", list[str]) or [NOT_RECORDED_TEXT]
    weights = weights_in_effect(take(identity, "loss_weights", list[float]), loss_type)
    model = (
        take(identity, "model", str)
        or _text_of(card.get("base_model"))
        or take(adapter, "base_model_name_or_path", str)
        or take(config, "_name_or_path", str)
        or NOT_RECORDED_TEXT
    )
    dtype = take(config, "dtype", str) or take(config, "torch_dtype", str)
    epochs = take(state, "num_train_epochs", float)
    settings = RunSettings(
        loss_type=loss_type,
        loss_weights=weights,
        beta=_number_or_not_recorded(take(identity, "beta", float)),
        label_smoothing=_number_or_not_recorded(take(identity, "label_smoothing", float)),
        loss_params=take(identity, "loss_params", dict[str, Any]) or {},
        model=model,
        dataset=take(identity, "dataset", str) or _text_of(card.get("datasets")) or NOT_RECORDED_TEXT,
        peft=_peft_label(adapter),
        precision="precision not recorded" + (f" (weights saved as {dtype})" if dtype else ""),
        learning_rate=NOT_RECORDED,
        max_steps=take(state, "max_steps", int),  # a damaged one is noted by `load`
        num_train_epochs=None if epochs is None else float(epochs),
        seed=take(identity, "seed", int) if take(identity, "seed", int) is not None else NOT_RECORDED,
        trl_version=trl_version,
    )
    if identity is not None:
        notes.insert(
            0,
            f"{SUMMARY_FILE} is missing (the run did not finish, or the file was deleted): the settings come from "
            f"{_IDENTITY_FILE}, the metrics from {STATE_FILE}; what they do not hold shows as 'not recorded'.",
        )
    else:
        read = [STATE_FILE] + [
            name
            for name, found in (("config.json", config), ("adapter_config.json", adapter), (_CARD_FILE, card))
            if found
        ]
        notes.insert(
            0,
            f"No {SUMMARY_FILE}: a folder trl-conservative run did not write (a Trainer's output?). Read from "
            f"{', '.join(read)}; what they do not hold shows as 'not recorded'.",
        )
    problem = _saved_model_problem(directory)
    if problem and any(
        (directory / n).is_file() for n in ("config.json", "adapter_config.json", *_WEIGHT_FILES)
    ):
        notes.append(f"The model in {str(directory)!r} {problem}.")
    return settings


def _number_or_not_recorded(value: Any) -> float:
    return NOT_RECORDED if value is None else float(value)


def _text_of(value: Any) -> str | None:
    """A model card field as text: a string, or the strings of a list joined; else None."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        texts = [v for v in value if isinstance(v, str) and v.strip()]
        return ", ".join(texts) or None
    return None


def _peft_label(adapter: dict[str, Any]) -> str | None:
    """The adapter a folder holds, as the report names it ("LoRA r=16, alpha=32")."""
    kind = adapter.get("peft_type")
    if not isinstance(kind, str):
        return None
    if kind.upper() == "LORA":
        r, alpha = adapter.get("r"), adapter.get("lora_alpha")
        return (
            "LoRA"
            + (f" r={r}" if _fits(r, int) else "")
            + (f", alpha={alpha}" if _fits(alpha, float) else "")
        )
    return kind


def _card_facts(path: Path, notes: list[str]) -> tuple[dict[str, Any], str | None]:
    """The YAML front matter of a model card (`base_model`, `datasets`, ...) and the TRL version it names."""
    if not path.is_file():
        return {}, None
    try:
        text = _utf8(path.read_bytes())
    except (OSError, _Damaged) as exc:
        reason = (
            exc if isinstance(exc, _Damaged) else f"cannot be read ({exc.strerror or type(exc).__name__})"
        )
        notes.append(f"{path.name} {reason}; the model and data it names are not shown.")
        return {}, None
    front: dict[str, Any] = {}
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end > 0:
            import yaml

            try:
                loaded = yaml.safe_load(text[3:end])
            except yaml.YAMLError:
                loaded = None
            if isinstance(loaded, dict):
                front = loaded
    match = re.search(r"^- TRL: *(\S+)", text, flags=re.MULTILINE)
    return front, match.group(1) if match else None


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return repr(value)
