"""Shared by the 2-process tests: a policy that differs from its reference, and a worker launch that retries once
when torchrun's `--standalone` port was taken by another job on this shared machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def perturbed_copy(src: Path, dst: Path) -> Path:
    """The tiny model with noise added: a policy that differs from its reference from the first step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def run_worker(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (one process, or under `TORCHRUN_2`) on one thread each; assert it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for _attempt in range(2):
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
        # `--standalone` picks a free port, which another job on a shared machine can take before we bind it.
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
