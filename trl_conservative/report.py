"""Every Rich renderable of trl-conservative; the only module that imports rich.

Each renderable is built over plain data (a `RunSummary`, a `LiveStatus`, registry entries) and renders through
`__rich_console__`, so tests render it into `Console(file=io.StringIO(), width=100, color_system=None)` and
compare text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from .kl import KL_EXACT, KL_EXACT_CHOSEN, KL_EXACT_REJECTED, KL_SEQUENCE
from .summary import ACCURACY, HEADLINE_METRICS, MARGIN, RunSummary, best_point
from .suspected_flips import SUSPECTED_FLIPS_FILE

SPARK_CHARS = "▁▂▃▄▅▆▇█"
SUSPECTS_SHOWN = 10  # rows of the suspected-flip list printed in the report (the file holds them all)


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """Values as block characters, lowest to highest; longer series are averaged into `width` buckets.

    Non-finite values show as "!" so a NaN is visible in the trend.
    """
    if not values:
        return ""
    if len(values) > width:
        buckets = []
        for i in range(width):
            chunk = values[i * len(values) // width : (i + 1) * len(values) // width]
            buckets.append(math.nan if any(not math.isfinite(v) for v in chunk) else sum(chunk) / len(chunk))
        values = buckets
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    span = hi - lo
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append("!")
        elif span == 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[min(len(SPARK_CHARS) - 1, int((v - lo) / span * len(SPARK_CHARS)))])
    return "".join(out)


def fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# --- the end-of-run report -------------------------------------------------------------------------------
@dataclass
class RunReport:
    """The report of a finished run: settings, time, metrics, held-out accuracy, KL, warnings, outputs."""

    summary: RunSummary
    title: str = "trl-conservative run report"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        s = self.summary
        yield Rule(self.title)
        yield self._settings()
        yield self._metrics()
        accuracy = s.held_out_accuracy()
        if accuracy is not None:
            (step0, before), (step1, after) = accuracy
            tied = step0 == 0 and any(v == 0 for step, v in s.series(f"eval_{MARGIN}") if step == 0)
            note = (
                "; at step 0 the policy is the reference, so every pair ties and counts as wrong"
                if tied
                else ""
            )
            yield Text(
                f"Held-out preference accuracy (eval {ACCURACY}): {before:.3f} at step {step0} -> "
                f"{after:.3f} at step {step1} (chance is 0.5{note})",
                style="bold",
            )
        yield self._kl()
        warnings = s.warnings()
        if warnings:
            yield Panel(Text("\n".join(f"! {w}" for w in warnings)), title="Warnings", title_align="left")
        else:
            yield Text("Warnings: none")
        suspects = self._suspects()
        if suspects is not None:
            yield suspects
        yield self._outputs()

    def _settings(self) -> Table:
        st = self.summary.settings
        table = Table(title="Settings", title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        losses = ", ".join(
            name if len(st.loss_type) == 1 else f"{name} x{weight:g}"
            for name, weight in zip(st.loss_type, st.loss_weights, strict=False)
        )
        table.add_row("loss", losses + (f" {st.loss_params}" if st.loss_params else ""))
        table.add_row("beta, eps", f"{fmt_number(st.beta)}, {fmt_number(st.label_smoothing)}")
        table.add_row("model", st.model + (f" ({st.peft})" if st.peft else "") + f", {st.precision}")
        rows = ", ".join(
            f"{n} {label}"
            for n, label in ((st.train_rows, "train"), (st.eval_rows, "held-out"))
            if n is not None
        )
        table.add_row("data", st.dataset + (f" ({rows} pairs)" if rows else ""))
        batch = ""
        if st.batch_size is not None:
            batch = f"batch {st.batch_size} x {st.gradient_accumulation_steps} accum x {st.world_size} proc, "
        table.add_row("optimiser", f"{batch}lr {fmt_number(st.learning_rate)}, seed {st.seed}")
        if st.kl_monitor:
            m = st.kl_monitor
            limits = ", ".join(
                f"{label} > {fmt_number(m[key])}"
                for key, label in (("warn_above", "warn"), ("stop_above", "stop"))
                if m.get(key) is not None
            )
            table.add_row("KL monitor", f"{m.get('metric')}: {limits}")
        s = self.summary
        runtime, tps = s.train_runtime(), s.tokens_per_second()
        steps = f"{s.global_step}" + (f"/{s.max_steps}" if s.max_steps else "")
        speed = f", {tps:,.0f} tokens/s" if tps is not None else ""
        tokens = s.total_tokens()
        table.add_row(
            "time",
            f"{fmt_duration(runtime)} for {steps} steps"
            + (f", {tokens:,.0f} tokens" if tokens else "")
            + speed,
        )
        return table

    def _metrics(self) -> Table:
        s = self.summary
        table = Table(title="Metrics", title_justify="left")
        table.add_column("metric", no_wrap=True)
        for name in ("first", "final", "best (step)"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("trend", no_wrap=True)
        for base in HEADLINE_METRICS:
            for key in (base, f"eval_{base}"):
                points = s.series(key)
                if not points:
                    continue
                best = best_point(points, key)
                table.add_row(
                    key,
                    fmt_number(points[0][1]),
                    fmt_number(points[-1][1]),
                    f"{fmt_number(best[1])} ({best[0]})" if best else "",
                    sparkline([v for _, v in points], width=12),
                )
        if not table.rows:
            table.add_row("(no metrics logged)", "", "", "", "")
        return table

    def _kl(self) -> Text:
        s = self.summary
        names, drift = s.kl_metrics(), s.drift_metrics()
        if not names and not drift:
            return Text("KL: no KL metrics were logged.")
        lines = []
        if names:
            lines.append("KL from the reference (nats; >= 0, 0 at the start):")
            stderr = s.sequence_kl_stderr()
            width = max(map(len, names))
            for name in names:
                label = KL_LABELS.get(name.removeprefix("eval_"), "")
                if name == f"eval_{KL_SEQUENCE}" and stderr is not None:
                    label = f"per seq. +/- {fmt_number(stderr)}"
                lines.append(self._series_line(name, label, width))
        if drift:
            lines.append("Log-ratio drift on dataset tokens (log pi - log pi_ref; not a KL, can be < 0):")
            width = max(map(len, drift))
            lines.extend(self._series_line(name, "", width) for name in drift)
        return Text("\n".join(lines))

    def _series_line(self, name: str, label: str, width: int) -> str:
        points = self.summary.series(name)
        first, last = points[0][1], points[-1][1]
        spark = sparkline([v for _, v in points], width=12)
        return f"  {name:<{width}} {fmt_number(first):>9} -> {fmt_number(last):<9} {spark:<12} {label}".rstrip()

    def _suspects(self) -> Group | None:
        """The suspected-flip list (`suspected_flips.py`): the training pairs the policy disagrees with most."""
        s = self.summary
        if s.suspected_flips is None:
            return None
        cost = f"; extra pass {s.suspected_flips_s:.1f} s" if s.suspected_flips_s is not None else ""
        shown = s.suspected_flips[:SUSPECTS_SHOWN]
        table = Table()
        for name, justify in (("row", "right"), ("score", "right"), ("beta*h", "right"), ("prompt", "left"),
                              ("chosen", "left"), ("rejected", "left")):  # fmt: skip
            table.add_column(name, justify=justify, overflow="ellipsis", no_wrap=True)  # type: ignore[arg-type]
        for flip in shown:
            table.add_row(
                str(flip["index"]), fmt_number(flip["score"]), fmt_number(flip.get("margin")), flip["prompt"],
                flip["chosen"], flip["rejected"],
            )  # fmt: skip
        if not shown:
            table.add_row("-", "-", "-", "(no training pairs)", "", "")
        return Group(
            Text(
                f"Pairs that look mislabeled ({len(shown)} of {len(s.suspected_flips)} in "
                f"suspected_flips.jsonl{cost})",
                style="bold",
            ),
            table,
            Text(
                "score: log pi(chosen) - log pi(rejected) under the trained policy, most negative first; "
                "beta*h: the implicit-reward margin; row: position in the training split as given.",
                style="dim",
            ),
        )

    def _outputs(self) -> Table:
        s = self.summary
        table = Table(title="Saved", title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        table.add_row("model", s.model_dir or "(not saved)")
        table.add_row("model card", s.model_card or "(none)")
        table.add_row("curves", s.plot or "(not drawn: install the `plot` extra for a PNG)")
        if s.suspected_flips is not None:
            table.add_row("suspected flips", f"{s.output_dir.rstrip('/')}/{SUSPECTED_FLIPS_FILE}")
        table.add_row("report", f"trl-conservative report {s.output_dir}")
        return table


# --- the live view --------------------------------------------------------------------------------------
LIVE_METRICS = (
    ("loss", "loss"),
    (ACCURACY, "acc"),
    (MARGIN, "margin"),
    (KL_EXACT, "KL/token"),
    (f"eval_{KL_SEQUENCE}", "KL/seq"),
)
# What each KL line of the report measures.
KL_LABELS = {
    KL_SEQUENCE: "per seq., own samples",
    KL_EXACT: "per token, dataset",
    KL_EXACT_CHOSEN: "per token, chosen",
    KL_EXACT_REJECTED: "per token, rejected",
}


@dataclass
class LiveStatus:
    """One frame of the live view: progress and the latest logged training metrics."""

    step: int
    max_steps: int
    elapsed_s: float
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float | None:
        return self.step / self.elapsed_s if self.elapsed_s > 0 and self.step > 0 else None

    @property
    def eta_s(self) -> float | None:
        speed = self.steps_per_s
        return (self.max_steps - self.step) / speed if speed else None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.line(), no_wrap=True, overflow="ellipsis")  # one line, or Live redraws break up

    def line(self) -> str:
        width = 20
        done = int(width * self.step / self.max_steps) if self.max_steps else 0
        parts = [f"step {self.step}/{self.max_steps} " + "#" * done + "-" * (width - done)]
        for key, label in LIVE_METRICS:
            if key in self.metrics:
                parts.append(f"{label} {fmt_number(self.metrics[key])}")
        speed = self.steps_per_s
        parts.append(f"{speed:.2f} it/s" if speed else "- it/s")
        parts.append(f"ETA {fmt_duration(self.eta_s)}")
        return " | ".join(parts)


class LiveDisplay:
    """The live view on the main process: a Rich `Live` line on a terminal, one printed line per log elsewhere.

    Redirected output (CI, a log file, `accelerate launch` workers) gets plain lines instead of redraws.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None

    def start(self, status: LiveStatus) -> None:
        if self.console.is_terminal:
            self._live = Live(status, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def update(self, status: LiveStatus) -> None:
        """A new step: redraw on a terminal, nothing elsewhere."""
        if self._live is not None:
            self._live.update(status)

    def log(self, status: LiveStatus) -> None:
        """New metrics were logged: redraw on a terminal, print a line elsewhere."""
        if self._live is not None:
            self._live.update(status)
        else:
            self.console.print(status.line(), soft_wrap=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def citation_title(citation: str | None) -> str:
    """The `title` of a BibTeX entry (the first one), else its first line; "-" without a citation."""
    if not citation or not citation.strip():
        return "-"
    match = re.search(r"title\s*=\s*[{\"]+(.+?)[}\"]+\s*,?\s*$", citation, flags=re.MULTILINE | re.IGNORECASE)
    title = match.group(1).strip() if match else citation.strip().splitlines()[0]
    return re.sub(r"\\(.)", r"\1", title)  # BibTeX escapes such as \&


# --- `trl-conservative losses` ----------------------------------------------------------------------------
@dataclass
class LossTable:
    """Registered losses: name, source and version, parameters, first line of the citation; failed plugins."""

    infos: Sequence[Any]  # plugins.LossInfo
    failures: dict[str, str] = field(default_factory=dict)
    native: Iterable[str] = ()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = Table(title="Registered losses", title_justify="left", show_lines=True)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("source", ratio=2)
        table.add_column("parameters", ratio=2)
        table.add_column("about", ratio=3)
        for info in self.infos:
            source = info.source + (f"\n{info.version}" if info.version else "")
            params = "\n".join(
                f"{p.name}: {p.type.__name__} = {p.default!r}" + (f"\n  {p.help}" if p.help else "")
                for p in info.params
            )
            description = getattr(info, "description", "") or ""
            about = "\n".join(x for x in (description, f"cite: {citation_title(info.citation)}") if x)
            table.add_row(info.name, source, params or "-", about)
        items: list[Any] = [table]
        native = sorted(self.native)
        if native:
            items.append(Text("Also accepted, computed by TRL itself: " + ", ".join(native)))
        if self.failures:
            failed = Table(title="Plugins that failed to load", title_justify="left")
            failed.add_column("plugin", style="bold")
            failed.add_column("error", overflow="fold")
            for name, error in sorted(self.failures.items()):
                failed.add_row(name, error)
            items.append(failed)
        yield Group(*items)


def render_text(renderable: Any, *, width: int = 100) -> str:
    """Render to plain text (no colour), as the tests and the saved `report.txt` do."""
    import io

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)


def make_console() -> Console:
    """The console the CLI prints to (stdout; colour only on a terminal)."""
    return Console()
