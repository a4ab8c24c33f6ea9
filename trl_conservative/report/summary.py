"""`RunSummary`: what a finished run's report shows, as plain data saved beside the run.

`trl-conservative run` writes `run_summary.json` (settings, timings, saved paths) and `trainer_state.json` (the
Trainer's `log_history`) into the output folder; `trl-conservative report OUTPUT_DIR` rebuilds the summary from
them. Everything derived (final, best and before/after metrics, KL series, warnings) is computed here by pure
functions over the log history, so the live run and the re-rendered report agree. No Rich in this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
from trl_conservative.report.formatting import fmt_number

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
    "PLOT_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
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
LOWER_IS_BETTER = {"loss"}
# A margin that falls below this fraction of its peak counts as collapsed.
MARGIN_COLLAPSE_FRACTION = 0.5

Point = tuple[int, float]


@dataclass
class RunSettings:
    """The settings a report shows, copied from the config when the run starts."""

    loss_type: list[str]
    loss_weights: list[float]
    beta: float
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
    seed: int | None = None
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

    # --- persistence ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("log_history")  # lives in trainer_state.json
        data.pop("suspected_flips")  # lives in suspected_flips.jsonl
        return data

    def save(self, output_dir: str | Path) -> Path:
        from trl_conservative.reliability import atomic

        return atomic.write_json(Path(output_dir) / SUMMARY_FILE, self.to_json(), default=_json_default)

    @classmethod
    def load(cls, output_dir: str | Path) -> RunSummary:
        """Rebuild a run's summary from its output folder; a `ConfigError` says what is missing."""
        directory = Path(output_dir)
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
        history: list[dict[str, Any]] = []
        state: dict[str, Any] = {}
        if state_path.is_file():
            state = _read_json(state_path)
            history = list(state.get("log_history", []))
        if summary_path.is_file():
            data = _read_json(summary_path)
            settings = _settings_from(data, summary_path)
            known = set(cls.__dataclass_fields__) - {"suspected_flips"}
            summary = cls(
                settings=settings, log_history=history, **{k: v for k, v in data.items() if k in known}
            )
            summary.suspected_flips = _suspected_flips_in(directory)
            return summary
        # A plain Trainer folder: settings unknown, metrics only.
        settings = RunSettings(
            loss_type=["?"], loss_weights=[1.0], beta=math.nan, label_smoothing=math.nan, loss_params={},
            model="?", dataset="?",
        )  # fmt: skip
        return cls(
            settings=settings,
            log_history=history,
            output_dir=str(directory),
            global_step=int(state.get("global_step", 0)),
            max_steps=state.get("max_steps"),
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
        return run_warnings(self.log_history, kl_monitor=self.settings.kl_monitor)


def metric_series(history: list[dict[str, Any]], key: str) -> list[Point]:
    """(step, value) for every log entry holding `key` (non-numbers skipped, NaN kept)."""
    points = []
    for entry in history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
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


def _suspected_flips_in(directory: Path) -> list[dict[str, Any]] | None:
    from .suspected_flips import read_suspected_flips

    try:
        flips = read_suspected_flips(directory)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"Cannot read {str(directory / 'suspected_flips.jsonl')!r}: {exc}. Re-run the training, or delete the file."
        ) from None
    return None if flips is None else [f.to_json() for f in flips]


def _settings_from(data: dict[str, Any], path: Path) -> RunSettings:
    """The `settings` of a `run_summary.json`; `ConfigError` for a file of another shape (version, program)."""
    try:
        return RunSettings(**data.pop("settings"))
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"{str(path)!r} is not a run summary this version of trl-conservative can read ({type(exc).__name__}: "
            f"{exc}). Re-run the training, or restore the file."
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"Cannot read {str(path)!r}: {exc}. Re-run the training, or restore the file."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{str(path)!r} does not hold a JSON object. Re-run the training, or restore the file."
        )
    return data


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return repr(value)
