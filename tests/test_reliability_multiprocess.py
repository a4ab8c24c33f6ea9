"""2 CPU processes: a signal or a NaN on one rank stops both ranks at the same step (no hang, no lone rank)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

WORKER = Path(__file__).with_name("reliability_multiprocess_worker.py")


def _torchrun(model: Path, out: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for _attempt in range(2):
        proc = subprocess.run(
            [*cmd, str(WORKER), str(model), str(out), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if "address already in use" not in proc.stderr.lower():
            break
    return proc


@pytest.mark.parametrize("mode", ["signal", "nan"])
def test_one_rank_misbehaving_stops_every_rank_at_the_same_step(
    tiny_model_dir: Path, tmp_path: Path, mode: str
) -> None:
    proc = _torchrun(tiny_model_dir, tmp_path, mode)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if mode == "signal":
        assert [r["error"] for r in ranks] == ["TrainingInterrupted"] * 2
        assert ranks[0]["global_step"] == ranks[1]["global_step"] == ranks[0]["step"] == 2
        checkpoint = tmp_path / "run" / "checkpoint-2"
        assert ranks[0]["checkpoint"] == str(checkpoint) and (checkpoint / "trainer_state.json").is_file()
        # Only the main process prints; rank 1 received the signal, rank 0 learned of it through the all-reduce.
        assert proc.stderr.count("received SIGTERM") == 0
    else:
        assert [r["error"] for r in ranks] == ["NonFiniteError"] * 2
        assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2
        assert "the loss on another process is nan at step 3" in ranks[0]["message"]
        assert "loss is nan at step 3" in ranks[1]["message"]
        assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
