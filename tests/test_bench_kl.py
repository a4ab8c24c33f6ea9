"""`benchmarks/bench_kl.py --quick` runs at tiny sizes; its timings are printed, never asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_kl.py"


def test_bench_kl_quick(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for label in (
        "| KL off | ",
        "| log-ratio signals only |",
        "| defaults (drift + exact every",
        "| drift + exact every step |",
    ):
        assert label in out
    # The sampled sequence KL table: one row per (prompts, max new tokens), a non-negative KL.
    seq = re.findall(
        r"^\| (\d+) \| (\d+) \| [\d.]+ \| [\d.]+x \| [\d.]+ \| ([\d.]+) \+/- [\d.]+ \| [\d.]+ \|$", out, re.M
    )
    assert [(n, t) for n, t, _ in seq] == [("4", "8"), ("8", "16")]
    assert all(float(kl) >= 0 for _, _, kl in seq)
    # The memory table: per vocabulary, the chunked exact KL equals the naive full-logits KL.
    rows = re.findall(r"^\| ([\d,]+) \| (chunk \d+|naive full logits) \| .* \| ([\d.]+) \|$", out, re.M)
    assert len(rows) == 6
    for vocab in {v for v, _, _ in rows}:
        values = {float(kl) for v, _, kl in rows if v == vocab}
        assert len(values) == 1, (vocab, values)
