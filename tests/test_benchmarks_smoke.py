"""The benchmark scripts run at tiny sizes. Speeds are measured, never asserted; what a worker reports is checked
(its keys, units and the consistency of its numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trl_conservative.demo.tiny import save_tiny_model

pytestmark = pytest.mark.slow
BENCH = Path(__file__).parents[1] / "benchmarks"



def _overhead_worker(spec: dict[str, Any], *, timeout: int) -> dict[str, Any]:
    """Run `bench_overhead.py --worker` on `spec` in its own process; the numbers its RESULT line reports."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_overhead.py"), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    return result

def test_gpu_benchmark_cpu_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_gpu.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max |loss(ours sigmoid) - loss(stock sigmoid)| over 3 steps: 0" in proc.stdout
    assert "| ours sigmoid + KL |" in proc.stdout


@pytest.mark.parametrize("trainer", ["stock", "ours"])
def test_overhead_benchmark_worker(tmp_path: Path, trainer: str) -> None:
    model = save_tiny_model(tmp_path / "m", vocab_size=512)
    spec = dict(
        batch=2,
        length=8,
        steps=3,
        warmup=1,
        trainer=trainer,
        loss="cdpo" if trainer == "ours" else "sigmoid",
        kl="every step" if trainer == "ours" else "off",
        model=str(model),
        out=str(tmp_path / "out"),
    )
    result = _overhead_worker(spec, timeout=300)
    assert set(result) == {"step_s", "peak_mb", "steps", "train_s"}  # the toy run: no KL timings, no evaluation
    assert result["steps"] == spec["steps"]  # one timed step per optimizer step, none lost or doubled
    timed = result["steps"] - spec["warmup"]
    # The mean of the timed steps (seconds, not ms): they ran inside train(), which took longer than all of them.
    assert 0 < result["step_s"] and result["step_s"] * timed <= result["train_s"]
    # Peak memory growth in MB (ru_maxrss is KiB): a tiny model on 6 pairs grows by well under 4 GB.
    assert 0 <= result["peak_mb"] < 4096


def test_label_noise_benchmark_quick(tmp_path: Path) -> None:
    env = {**os.environ, "TRL_CONSERVATIVE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_label_noise.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "**The pre-stated contrast in one line (computed).** cDPO with eps = rho" in proc.stdout
    assert "| 0.2 | final | 1 |" in proc.stdout  # the pre-stated contrast, one seed
    assert "| dpo | margin beta*h |" in proc.stdout  # suspected-flip detection at rho = 0.2


def test_label_noise_statistics() -> None:
    sys.path.insert(0, str(BENCH))
    from label_noise_stats import best_index, detection, paired_difference, units_needed

    pooled = paired_difference([1, 1, 0, 0] * 50, [1, 0, 1, 0] * 50)
    assert pooled.mean == 0 and pooled.discordant == 0.5
    assert abs(pooled.half_width - 1.96 * (100 / 199 / 200) ** 0.5) < 1e-3  # var = 100/199 per unit
    assert units_needed(0.1) == 961  # (1.96 / 0.02)^2 * 0.1
    assert best_index([0.5, 0.7, 0.7]) == 1
    det = detection([-3.0, 2.0, -1.0, 0.5, -0.2], flipped=[0, 2], k=2)
    assert det.precision_at_k == 1.0 and det.recall_at_k == 1.0 and det.auc == 1.0
    assert det.precision_negative == 2 / 3 and det.recall_negative == 1.0


@pytest.mark.real_model
def test_overhead_benchmark_real_model_worker(tmp_path: Path, real_model_dir: Path) -> None:
    """`bench_overhead.py --model real`'s worker: one step of the chat pairs on SmolLM2-135M-Instruct, then
    evaluate() with and without the sequence KL (2 held-out prompts, 4 sampled tokens)."""
    spec = dict(
        data="chat",
        batch=8,
        max_length=128,
        pairs=8,
        warmup=0,
        eval_pairs=2,
        trainer="ours",
        loss="cdpo",
        kl="default",
        kl_extra={"kl_sequence_max_new_tokens": 4},
        model=str(real_model_dir),
        out=str(tmp_path / "out"),
    )
    result = _overhead_worker(spec, timeout=600)
    assert result["steps"] == 1 and result["step_s"] > 0 and result["drift_s"] > 0
    assert result["eval_on_s"] > 0 and result["eval_off_s"] > 0
    assert 0 <= result["eval_sampled/truncated"] <= 1 and 1 <= result["eval_sampled/length"] <= 4
