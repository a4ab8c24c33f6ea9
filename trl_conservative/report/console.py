"""Every Rich renderable of trl-conservative; the only module that imports rich.

Each renderable is built over plain data (a `RunSummary`, a `LiveStatus`, registry entries) and renders through
`__rich_console__`, so tests render it into `Console(file=io.StringIO(), width=100, color_system=None)` and
compare text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from trl_conservative.metric_names import KL_EXACT, KL_EXACT_CHOSEN, KL_EXACT_REJECTED, KL_SEQUENCE

from .formatting import fmt_duration, fmt_number, sparkline
from .summary import ACCURACY, HEADLINE_METRICS, MARGIN, RunSummary, best_point
from .suspected_flips import SUSPECTED_FLIPS_FILE, LabelNoise

__all__ = [
    "KL_LABELS",
    "SUSPECTS_SHOWN",
    "RunReport",
    "make_console",
    "render_text",
]

SUSPECTS_SHOWN = 10  # rows of the suspected-flip list printed in the report (the file holds them all)


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
        suspects = self._suspects(options.max_width)
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
        counted = f", {tokens:,.0f} tokens" if tokens else ""
        if tokens is None and str(st.trl_version or "").startswith("0."):
            counted = f" (TRL {st.trl_version} counts no tokens)"
        table.add_row("time", f"{fmt_duration(runtime)} for {steps} steps" + counted + speed)
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
        return (
            f"  {name:<{width}} {fmt_number(first):>9} -> {fmt_number(last):<9} {spark:<12} {label}".rstrip()
        )

    def _suspects(self, width: int) -> Group | None:
        """Label noise (`suspected_flips.py`): the estimated share of flipped labels and the pairs most likely
        flipped. On data that read as clean it says so and lists nothing."""
        s = self.summary
        noise = LabelNoise.from_json(s.label_noise)
        if noise is None and s.suspected_flips is None:
            return None
        parts: list[Any] = [Text(_noise_headline(noise), style="bold")]
        shown = (s.suspected_flips or [])[:SUSPECTS_SHOWN]
        cost = f" ({s.suspected_flips_s:.1f} s)" if s.suspected_flips_s is not None else ""
        if not shown and cost:
            parts.append(Text(f"Estimated from training's own forwards{cost}.", style="dim"))
        if shown:
            parts.append(self._suspects_table(shown, width))
            if noise is not None and noise.ranked_by == "after_training":
                ranked = "score after training (suspected_flips_pass)"
            elif noise is not None and noise.verdict == "undetermined":
                ranked = "the policy's margin, most negative first (weak evidence: not a count of flipped pairs)"
            else:
                ranked = "P(flip), the chance the label is flipped given the pair's score"
            parts.append(
                Text(
                    f"{len(shown)} of {len(s.suspected_flips or [])} listed in {SUSPECTED_FLIPS_FILE}{cost}, by "
                    f"{ranked}. score: log pi(chosen) - log pi(rejected) when the pair was first trained on "
                    "(< 0: the policy prefers the rejected answer); row: position in the training split as given.",
                    style="dim",
                )
            )
        return Group(*parts)

    @staticmethod
    def _suspects_table(shown: list[dict[str, Any]], width: int) -> Table:
        """Row, P(flip) and score at their full width; the three previews share the rest, cut with "…"."""
        numbers = [
            (
                str(flip.get("index", "?")),
                "-" if flip.get("flip_probability") is None else f"{flip['flip_probability']:.2f}",
                fmt_number(flip.get("score")),
            )
            for flip in shown
        ]
        headers = ("row", "P(flip)", "score")
        # No pair with a P(flip) (an undetermined estimate, the extra pass's order): no P(flip) column.
        keep = [0, 2] if all(n[1] == "-" for n in numbers) else [0, 1, 2]
        widths = [max(len(headers[i]), *(len(n[i]) for n in numbers)) for i in keep]
        # Each column costs its width + 2 padding + 1 rule; the table has one more rule.
        preview_width = max(6, (width - sum(widths) - (len(keep) + 3) * 3 - 1) // 3)
        table = Table(pad_edge=True)
        for i, column_width in zip(keep, widths, strict=True):
            table.add_column(headers[i], justify="right", no_wrap=True, min_width=column_width)
        for name in ("prompt", "chosen", "rejected"):
            table.add_column(name, overflow="ellipsis", no_wrap=True, max_width=preview_width)
        for flip, number in zip(shown, numbers, strict=True):
            table.add_row(
                *(number[i] for i in keep),
                str(flip.get("prompt", "")),
                str(flip.get("chosen", "")),
                str(flip.get("rejected", "")),
            )
        return table

    def _outputs(self) -> Table:
        s = self.summary
        table = Table(title="Saved", title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        table.add_row("model", s.model_dir or "(not saved)")
        table.add_row("model card", s.model_card or "(none)")
        table.add_row("curves", s.plot or "(not drawn: install the `plot` extra for a PNG)")
        if s.suspected_flips:
            table.add_row("suspected flips", f"{s.output_dir.rstrip('/')}/{SUSPECTED_FLIPS_FILE}")
        table.add_row("report", f"trl-conservative report {s.output_dir}")
        return table


def _noise_headline(noise: LabelNoise | None) -> str:
    """How many labels look flipped, with the 95% interval, or why there is no estimate (`LabelNoise.verdict`)."""
    if noise is None:
        return "Pairs that look mislabeled"
    left_out = noise.repeated + noise.identical
    skipped = f"; {left_out} repeated or identical pairs left out" if left_out else ""
    verdict = noise.verdict
    if verdict == "none" or noise.share is None or noise.low is None or noise.high is None:
        return f"Label noise: not estimated ({noise.note or 'no scores'}){skipped}"
    interval = f"95% interval {noise.low:.1%}-{noise.high:.1%}"
    share = f"{noise.share:.1%}"
    if verdict == "clean":
        return f"Label noise: no evidence of flipped labels: {share} of {noise.scored} pairs ({interval}){skipped}"
    if verdict == "undetermined":
        # No evidence of flips (the interval reaches 0), but no evidence of clean labels either: say both, and no
        # point estimate, which an interval from 0 does not support as a count.
        return (
            f"Label noise: undetermined: no evidence of flipped labels among {noise.scored} pairs, but up to "
            f"{noise.high:.1%} cannot be ruled out ({interval}); the policy did not separate the pairs clearly "
            f"enough to tell{skipped}"
        )
    if verdict == "negligible":
        return f"Label noise: negligible: {noise.count} of {noise.scored} pairs look flipped, {share} ({interval}){skipped}"
    return f"Label noise: about {noise.count} of {noise.scored} pairs look flipped, {share} ({interval}){skipped}"


# What each KL line of the report measures.
KL_LABELS = {
    KL_SEQUENCE: "per seq., own samples",
    KL_EXACT: "per token, dataset",
    KL_EXACT_CHOSEN: "per token, chosen",
    KL_EXACT_REJECTED: "per token, rejected",
}


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
