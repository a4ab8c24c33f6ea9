"""A checkpoint whose training-state files are damaged is judged before a resume loads it (issue 20 family 7):
`checkpoint_problem` names the file and the damage, so `--resume` skips the checkpoint and
`--resume_from_checkpoint` refuses it in one line, instead of a torch or json traceback from inside transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trl_conservative.file_checks import torch_archive_problem
from trl_conservative.reliability.checkpoints import (
    checkpoint_problem,
    latest_checkpoint,
    trainer_state_problem,
)

STATE = {
    "global_step": 4,
    "max_steps": 8,
    "epoch": 0.5,
    "log_history": [{"loss": 0.69, "step": 4}],
    "best_metric": None,
    "stateful_callbacks": {"TrainerControl": {"args": {}, "attributes": {}}},
}


def _checkpoint(folder: Path, state: dict[str, object] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps(state or STATE))
    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 4}, folder / "scheduler.pt")
    torch.save({"cpu_rng_state": torch.get_rng_state()}, folder / "rng_state.pth")
    return folder


def test_a_sound_checkpoint_has_no_problem(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "checkpoint-4")
    assert checkpoint_problem(folder) is None
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        assert torch_archive_problem(folder / name) is None


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_truncated_training_state_file_is_named(tmp_path: Path, name: str) -> None:
    folder = _checkpoint(tmp_path / "checkpoint-4")
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: len(raw) // 2])
    problem = checkpoint_problem(folder)
    assert problem is not None and problem.startswith(f"has a file {name} that is truncated or corrupt"), problem
    with pytest.raises(RuntimeError):  # what transformers' torch.load would have met
        torch.load(folder / name, weights_only=True)


def test_flipped_bytes_fail_the_checksum(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "checkpoint-4")
    raw = bytearray((folder / "optimizer.pt").read_bytes())
    data = raw.index(b"data/0") + 200  # inside the tensor bytes, past the member's local header
    raw[data] ^= 0xFF
    (folder / "optimizer.pt").write_bytes(bytes(raw))
    # torch.save names the archive's folder after the file's stem
    assert torch_archive_problem(folder / "optimizer.pt") == "is corrupt (its member optimizer/data/0 fails its checksum)"


def test_empty_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a tensor file")
    assert torch_archive_problem(tmp_path / "empty.pt") == "is empty"
    assert torch_archive_problem(tmp_path / "text.pt") == "is not a torch.save file (no zip or pickle header)"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"global_step": \xd4}', "cannot be read as UTF-8 JSON ("),
        (b"[1, 2]", "holds a JSON list, not an object"),
        (json.dumps({**STATE, "global_step": "4"}).encode(), 'has global_step = "4" where transformers expects int'),
        (json.dumps({**STATE, "log_history": [1]}).encode(), "has log_history = [1] where transformers expects list["),
        (json.dumps({**STATE, "best_metric": "x"}).encode(), 'has best_metric = "x" where transformers expects '),
        (json.dumps({**STATE, "gloabl_step": 4}).encode(), "has a field 'gloabl_step' that transformers' TrainerState"),
        (json.dumps({**STATE, "global_step": True}).encode(), "has global_step = true where transformers expects int"),
    ],
)
def test_a_damaged_trainer_state_is_named(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "trainer_state.json").write_bytes(content)
    problem = trainer_state_problem(tmp_path / "trainer_state.json")
    assert problem is not None and problem.startswith(expected), problem


def test_resume_skips_a_damaged_newest_checkpoint_for_the_previous_one(tmp_path: Path) -> None:
    older = _checkpoint(tmp_path / "checkpoint-2", {**STATE, "global_step": 2})
    newer = _checkpoint(tmp_path / "checkpoint-4")
    (newer / "rng_state.pth").write_bytes((newer / "rng_state.pth").read_bytes()[:90])
    assert latest_checkpoint(tmp_path) == older


def test_fields_that_default_to_none_may_be_null(tmp_path: Path) -> None:
    """transformers 4 annotates trial_params (default None) without Optional: a saved null is no damage."""
    (tmp_path / "trainer_state.json").write_text(json.dumps({**STATE, "trial_params": None, "trial_name": None}))
    assert trainer_state_problem(tmp_path / "trainer_state.json") is None
