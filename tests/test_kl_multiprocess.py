"""KL metrics are gathered across processes: 2 CPU processes (torchrun, gloo) log what 1 process logs, the token
KLs of the training and evaluation batches and the sequence KL sampled on the evaluation prompts.

Both runs train with the same global batch (4 pairs per step: 1 x 4 or 2 x 2) and evaluate 6 pairs, so the
2-process evaluation's last batch is padded with repeated pairs, which `gather_for_metrics` must drop.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from process_workers import TORCHRUN_2, perturbed_copy, run_worker

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

WORKER = Path(__file__).with_name("kl_multiprocess_worker.py")
KL_KEYS = (
    "kl/exact",
    "kl/exact_chosen",
    "kl/exact_rejected",
    "logratio/chosen",
    "logratio/rejected",
    "logratio/chosen_per_token",
    "logratio/rejected_per_token",
)
# The sampled sequence KL at evaluation: prompts split over the processes, one table gathered.
SAMPLED_KEYS = ("kl/sequence", "sampled/kl_stderr", "sampled/truncated", "sampled/length")


def test_two_processes_log_the_same_kl_as_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy = perturbed_copy(tiny_model_dir, tmp_path / "policy")
    results: dict[int, Any] = {}
    for procs, per_device in ((1, 4), (2, 2)):
        out = tmp_path / f"run{procs}" / "metrics.json"
        out.parent.mkdir()
        args = [str(WORKER), str(policy), str(tiny_model_dir), str(out), str(per_device)]
        run_worker([*([sys.executable] if procs == 1 else TORCHRUN_2), *args], cwd=tmp_path)
        results[procs] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["train"]) == len(two["train"]) == 3
    for step_one, step_two in zip(one["train"], two["train"], strict=True):
        assert step_one["kl/exact"] > 1e-3  # the policy differs from the reference
        for key in KL_KEYS:
            assert step_two[key] == pytest.approx(step_one[key], abs=1e-5), (step_one["step"], key)
    for key in KL_KEYS:
        assert two["eval"][f"eval_{key}"] == pytest.approx(one["eval"][f"eval_{key}"], abs=1e-5), key
    assert one["eval"]["eval_kl/sequence"] > 1e-3
    # Suspected flips: each process's pairs are gathered, so rank 0 holds all 12 trained pairs; with lr 1e-30 a pair's
    # margins depend on the pair alone, so a pair both runs trained has the same margins in both.
    pairs_one = {row: rest for row, *rest in one["pairs"]}
    pairs_two = {row: rest for row, *rest in two["pairs"]}
    assert len(pairs_one) == len(pairs_two) == 12
    shared = set(pairs_one) & set(pairs_two)
    assert shared
    for row in shared:
        assert pairs_two[row][2:] == pytest.approx(pairs_one[row][2:], abs=1e-4), row
    for key in SAMPLED_KEYS:
        assert two["eval"][f"eval_{key}"] == pytest.approx(one["eval"][f"eval_{key}"], abs=1e-5), key
