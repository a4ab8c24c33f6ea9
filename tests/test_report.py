"""Report renderables over plain data, rendered into a pinned Console and compared as text."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from trl_conservative import ConfigError, LossInputs, LossOutput, LossParam, hookimpl
from trl_conservative.registry import registered_plugins
from trl_conservative.report.console import RunReport
from trl_conservative.report.formatting import citation_title, fmt_duration, sparkline
from trl_conservative.report.live import LiveStatus
from trl_conservative.report.losses_table import LossTable
from trl_conservative.report.summary import RunSettings, RunSummary, margin_collapse, run_warnings


def render(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


HISTORY: list[dict[str, Any]] = [
    {"step": 0, "eval_loss": 0.6931, "eval_rewards/accuracies": 0.0, "eval_rewards/margins": 0.0},
    {
        "step": 5,
        "loss": 0.7,
        "rewards/accuracies": 0.5,
        "rewards/margins": 0.1,
        "num_tokens": 1000.0,
        "kl/exact": 0.01,
    },
    {
        "step": 10,
        "loss": 0.6,
        "rewards/accuracies": 0.75,
        "rewards/margins": 0.4,
        "num_tokens": 2000.0,
        "kl/exact": 0.04,
    },
    {"step": 10, "eval_loss": 0.65, "eval_rewards/accuracies": 0.8, "eval_rewards/margins": 0.3},
    {"step": 10, "train_runtime": 4.0, "train_loss": 0.65},
]


def make_summary(history: list[dict[str, Any]] = HISTORY) -> RunSummary:
    settings = RunSettings(
        loss_type=["cdpo"], loss_weights=[1.0], beta=0.3, label_smoothing=0.1, loss_params={},
        model="my-model", dataset="data.jsonl", train_rows=64, eval_rows=16, learning_rate=3e-4,
        batch_size=8, seed=0,
    )  # fmt: skip
    return RunSummary(
        settings=settings,
        log_history=history,
        output_dir="out",
        model_dir="out",
        model_card="out/README.md",
        plot=None,
        global_step=10,
        max_steps=10,
    )


def test_time_line_says_when_trl_counted_no_tokens() -> None:
    """TRL 0.2x logs no `num_tokens`: the report says so (a run with another TRL, or unknown, just omits it)."""
    without_tokens = [{k: v for k, v in e.items() if k != "num_tokens"} for e in HISTORY]
    summary = make_summary(without_tokens)
    summary.settings.trl_version = "0.23.0"
    lines = [line.rstrip() for line in render(RunReport(summary)).splitlines()]
    assert "time       0:00:04 for 10/10 steps (TRL 0.23.0 counts no tokens)" in lines
    summary.settings.trl_version = None  # a summary written before the version was recorded
    lines = [line.rstrip() for line in render(RunReport(summary)).splitlines()]
    assert "time       0:00:04 for 10/10 steps" in lines
    counted = make_summary()
    counted.settings.trl_version = "1.16.0"
    assert "time       0:00:04 for 10/10 steps, 2,000 tokens, 500 tokens/s" in render(RunReport(counted))


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3.0, 3.0]) == "▁▁"
    assert sparkline([0.0, math.nan, 1.0]) == "▁!█"
    assert sparkline([]) == ""
    # 48 values into 24 buckets of two: each bucket's mean is 2i + 0.5, a straight ramp again.
    expected = "".join("▁▂▃▄▅▆▇█"[min(7, int((2 * i) / 46 * 8))] for i in range(24))
    assert sparkline(list(range(48)), width=24) == expected


def test_run_report_text() -> None:
    text = render(RunReport(make_summary()))
    lines = [line.rstrip() for line in text.splitlines()]
    assert "loss       cdpo" in lines
    assert "beta, eps  0.3, 0.1" in lines
    assert "model      my-model, float32" in lines
    assert "data       data.jsonl (64 train, 16 held-out pairs)" in lines
    assert "optimiser  batch 8 x 1 accum x 1 proc, lr 3.000e-04, seed 0" in lines
    # 2000 tokens in 4 s of train_runtime.
    assert "time       0:00:04 for 10/10 steps, 2,000 tokens, 500 tokens/s" in lines
    row = next(line for line in lines if line.startswith("│ loss "))
    assert [c.strip() for c in row.split("│")[1:-1]] == ["loss", "0.7", "0.6", "0.6 (10)", "█▁"]
    row = next(line for line in lines if line.startswith("│ eval_rewards/accuracies"))
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        "eval_rewards/accuracies",
        "0",
        "0.8",
        "0.8 (10)",
        "▁█",
    ]
    assert (
        "Held-out preference accuracy (eval rewards/accuracies): 0.000 at step 0 -> 0.800 at step 10 (chance "
        in text
    )
    assert "every pair ties and counts as wrong" in text  # the step-0 margin is exactly 0
    assert "KL from the reference (nats; >= 0, 0 at the start):" in lines
    assert any(line.split()[:5] == ["kl/exact", "0.01", "->", "0.04", "▁█"] for line in lines)
    assert any(
        line.split()[:5] == ["kl/exact", "0.01", "->", "0.04", "▁█"] and "per token" in line for line in lines
    )
    assert "Warnings: none" in lines
    assert "model card  out/README.md" in lines
    assert "report      trl-conservative report out" in lines


def test_report_kl_section_heads_with_the_sequence_kl_and_names_log_ratios_apart() -> None:
    history = [
        {"step": 0, "eval_loss": 0.69, "eval_kl/sequence": 0.0, "eval_sampled/kl_stderr": 0.0},
        {"step": 5, "loss": 0.6, "kl/exact": 0.02, "logratio/rejected": -3.0},
        {"step": 10, "loss": 0.5, "kl/exact": 0.05, "logratio/rejected": -9.0},
        {"step": 10, "eval_loss": 0.6, "eval_kl/sequence": 2.5, "eval_sampled/kl_stderr": 0.25},
    ]
    summary = make_summary(history)
    assert summary.headline_kl() == "eval_kl/sequence"
    assert summary.kl_metrics() == ["eval_kl/sequence", "kl/exact"]
    assert summary.drift_metrics() == ["logratio/rejected"]
    lines = [line.strip() for line in render(RunReport(summary)).splitlines()]
    kl_at = lines.index("KL from the reference (nats; >= 0, 0 at the start):")
    drift_at = next(i for i, line in enumerate(lines) if line.startswith("Log-ratio drift on dataset tokens"))
    assert kl_at < drift_at
    kl_lines = lines[kl_at + 1 : drift_at]
    assert [line.split()[0] for line in kl_lines] == ["eval_kl/sequence", "kl/exact"]
    assert kl_lines[0].split()[1:4] == ["0", "->", "2.5"] and "per seq. +/- 0.25" in kl_lines[0]
    assert all(len(line) <= 78 for line in kl_lines)  # stripped of its 2-space indent: fits 80 columns
    assert lines[drift_at + 1].split()[:4] == ["logratio/rejected", "-3", "->", "-9"]
    assert "not a KL" in lines[drift_at]


def test_live_line_shows_the_token_kl_and_the_last_sequence_kl() -> None:
    from trl_conservative.report.live import LiveStatus

    status = LiveStatus(
        step=5, max_steps=10, elapsed_s=5.0, metrics={"loss": 0.5, "kl/exact": 0.02, "eval_kl/sequence": 1.25}
    )
    line = status.line()
    assert "KL/token 0.02" in line and "KL/seq 1.25" in line and "k3" not in line


def test_report_without_kl_or_eval() -> None:
    history = [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.5}]
    text = render(RunReport(make_summary(history)))
    assert "KL: no KL metrics were logged." in text
    assert "Held-out" not in text


def test_warnings() -> None:
    history = [
        {"step": 1, "loss": 0.7, "rewards/margins": 0.2},
        {"step": 2, "loss": 0.5, "rewards/margins": 1.0},
        {"step": 3, "loss": math.nan, "rewards/margins": 0.4, "kl_monitor/threshold_hit": 0.52},
    ]
    found = run_warnings(history)
    assert found[0].startswith("loss became non-finite at step 3")
    assert "KL monitor: threshold_hit = 0.52 at step 3." in found
    assert found[-1].startswith("rewards/margins collapsed: 1 at step 2, 0.4 at step 3.")
    text = render(RunReport(make_summary(history)))
    assert "Warnings" in text and "! loss became non-finite at step 3" in text
    assert margin_collapse([(1, 0.2), (2, 1.0), (3, 0.6)]) is None  # kept more than half of the peak
    assert margin_collapse([(1, -0.2), (2, -0.5)]) is None  # never positive: nothing collapsed
    assert margin_collapse([(1, 0.2), (2, 1.0)]) is None  # the last value is the peak


def test_kl_threshold_warnings() -> None:
    history = [
        {"step": 1, "kl/exact": 0.1},
        {"step": 2, "kl/exact": 0.6},
        {"step": 3, "kl/exact": 0.9},
        {"step": 3, "kl_monitor/stopped": "kl/exact = 0.9 > 0.8"},
    ]
    monitor = {"metric": "kl/exact", "warn_above": 0.5, "stop_above": 0.8, "patience": 1}
    assert run_warnings(history, kl_monitor=monitor) == [
        "KL monitor: stopped = kl/exact = 0.9 > 0.8 at step 3.",
        "kl/exact rose above warn above = 0.5 at step 2 (peak 0.9 at step 3, 2 of 3 logs).",
        "kl/exact rose above stop above = 0.8 at step 3 (peak 0.9 at step 3, 1 of 3 logs).",
    ]
    assert run_warnings(history[:1], kl_monitor=monitor) == []  # never above a threshold
    summary = make_summary(history)
    summary.settings.kl_monitor = monitor
    text = render(RunReport(summary))
    assert "KL monitor  kl/exact: warn > 0.5, stop > 0.8" in text
    assert "! kl/exact rose above warn above = 0.5 at step 2" in text


def test_live_status_line() -> None:
    status = LiveStatus(
        step=5, max_steps=10, elapsed_s=10.0, metrics={"loss": 0.5, "rewards/accuracies": 0.75}
    )
    # 5 steps in 10 s: 0.5 it/s, 5 steps left: 10 s.
    assert status.line() == "step 5/10 ##########---------- | loss 0.5 | acc 0.75 | 0.50 it/s | ETA 0:00:10"
    assert LiveStatus(step=0, max_steps=10, elapsed_s=0.0).line().endswith("- it/s | ETA -")
    assert render(status).strip() == status.line()
    assert fmt_duration(3725) == "1:02:05"


def test_summary_round_trip(tmp_path: Path) -> None:
    summary = make_summary()
    summary.save(tmp_path)
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": HISTORY, "global_step": 10}))
    loaded = RunSummary.load(tmp_path)
    assert loaded == summary
    assert render(RunReport(loaded)) == render(RunReport(summary))


def test_summary_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RunSummary.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="holds neither run_summary.json nor trainer_state.json"):
        RunSummary.load(tmp_path)
    # A plain Trainer output folder still renders its metrics.
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": HISTORY, "global_step": 10}))
    assert "0.6 (10)" in render(RunReport(RunSummary.load(tmp_path)))


class _MarginLoss:
    """A test loss."""

    name = "margin_test"
    citation = "@article{x,\n  title={A margin}\n}"
    params = (LossParam(name="gamma", type=float, default=0.5, help="target margin"),)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        h = inputs.chosen_logratios - inputs.rejected_logratios
        zero = torch.zeros_like(h)
        return LossOutput(
            losses=(h - inputs.params["gamma"]) ** 2, chosen_rewards=zero, rejected_rewards=zero
        )


class _Plugin:
    @hookimpl
    def register_losses(self, register: Any) -> None:
        register(_MarginLoss())


class _Broken:
    @hookimpl
    def register_losses(self, register: Any) -> None:
        raise RuntimeError("boom")


def test_citation_title() -> None:
    assert (
        citation_title("@misc{k,\n  title = {{Direct} Preference},\n  year={2023}\n}") == "Direct} Preference"
    )
    assert citation_title("Mitchell 2023, a note") == "Mitchell 2023, a note"
    assert citation_title(None) == "-"
    assert citation_title("@misc{k, title={DPO \\& IPO}}") == "DPO & IPO"  # BibTeX escapes dropped


def test_loss_table() -> None:
    with registered_plugins(("margin-plugin", _Plugin()), ("broken", _Broken())) as registry:
        # Only these two rows, so installed plugins do not change the column widths.
        table = LossTable(
            [registry.losses["cdpo"], registry.losses["margin_test"]], dict(registry.failures), ["hinge"]
        )
        text = render(table)
        cdpo_citation = registry.losses["cdpo"].citation
    lines = text.splitlines()
    row = next(line for line in lines if "│ margin_test" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells == ["margin_test", "plugin 'margin-plugin'", "gamma: float = 0.5", "A test loss."]
    following = [c.strip() for c in lines[lines.index(row) + 1].split("│")[1:-1]]
    assert following == ["", "", "target margin", "cite: A margin"]
    row = next(line for line in lines if "│ cdpo" in line)
    assert "trl-conservative" in " ".join(lines[lines.index(row) : lines.index(row) + 3])
    assert citation_title(cdpo_citation).startswith("A note on DPO with noisy preferences")
    assert "Also accepted, computed by TRL itself: hinge" in text
    assert "broken" in text and "RuntimeError: boom" in text
