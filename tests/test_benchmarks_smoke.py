"""The benchmark scripts run at tiny sizes (numbers are not checked here: they are measured, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_conservative.tiny import save_tiny_model

pytestmark = pytest.mark.slow
BENCH = Path(__file__).parents[1] / "benchmarks"


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
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_overhead.py"), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert result["step_s"] > 0 and result["peak_mb"] >= 0


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
    assert "| sigmoid |" in proc.stdout and "| cdpo eps=rho |" in proc.stdout
    assert "rho=0.3: acc / KL" in proc.stdout
