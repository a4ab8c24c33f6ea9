"""Property (issue 20 family 7): whatever damage a finished run folder takes (a file truncated, bytes corrupted, a
file deleted, a JSON value swapped for another type), `trl-conservative report` answers with exit 0 (the report,
saying what it could not read) or exit 2 and one line, and `run --resume true` (one step further) trains on or
answers exit 2 with one error line; never a traceback."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from finished_run import copy_run, finished_run, report
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow  # the run folder trains a tiny model once (about 30 s)

# Files the report reads, each twice as likely to be damaged as any other file of the folder.
READ = (
    "run_summary.json",
    "trainer_state.json",
    "suspected_flips.jsonl",
    "trl_conservative_run.json",
    "README.md",
)
SWAPS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(0, 9), max_size=2),
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return finished_run(tmp_path_factory, tiny_model_dir)


def _files(folder: Path) -> list[str]:
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return names + [n for n in names if n in READ]


def _json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON document (the root excluded)."""
    paths = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(_json_paths(child, (*prefix, key)))
    return paths


def _damage(folder: Path, data: st.DataObject) -> str:
    return _damage_file(folder, data.draw(st.sampled_from(_files(folder)), label="file"), data)


def _damage_file(folder: Path, name: str, data: st.DataObject) -> str:
    path = folder / name
    raw = path.read_bytes()
    kinds = ["truncate", "corrupt", "delete"] + (
        ["swap", "swap"] if name.endswith((".json", ".jsonl")) else []
    )
    kind = data.draw(st.sampled_from(kinds), label="damage")
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="keep")])
    elif kind == "corrupt":
        spots = data.draw(st.lists(st.integers(0, max(len(raw) - 1, 0)), min_size=1, max_size=4), label="at")
        new = data.draw(st.binary(min_size=len(spots), max_size=len(spots)), label="bytes")
        buffer = bytearray(raw)
        for spot, byte in zip(spots, new, strict=True):
            if buffer:
                buffer[spot] = byte
        path.write_bytes(bytes(buffer))
    else:  # swap one JSON value (of the document, or of one line of a .jsonl) for a value of another type
        try:  # an earlier damage may have left no JSON to swap in
            text = raw.decode()
            lines = text.splitlines() if name.endswith(".jsonl") else [text]
            line = data.draw(st.integers(0, len(lines) - 1), label="line") if lines else 0
            document = json.loads(lines[line]) if lines else None
        except ValueError:
            return f"{name}: no JSON left to swap"
        positions = _json_paths(document)
        if not positions:
            return f"{name}: nothing to swap"
        where = data.draw(st.sampled_from(positions), label="where")
        parent = document
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = data.draw(SWAPS, label="value")
        lines[line] = json.dumps(document)
        path.write_text("\n".join(lines) + "\n")
    return f"{name}: {kind}"


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_report_on_a_randomly_damaged_run_folder_is_the_report_or_one_line(
    run_dir: Path, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_run(run_dir, Path(scratch) / "run")
        damages = [_damage(folder, data) for _ in range(data.draw(st.integers(1, 3), label="damages"))]
        status, out, err = report(folder)
        assert status in (0, 2), (damages, status, err)
        assert "Traceback" not in err, (damages, err)
        if status == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), (damages, err)
        else:
            assert err.strip() == "", (damages, err)
            assert "trl-conservative run report" in out
        shutil.rmtree(folder)


# Files a resume reads: the newest checkpoint's, the run's record and its finished state, each twice as likely.
RESUME_READ = (
    "trl_conservative_run.json",
    "run_summary.json",
    "trainer_state.json",
    "checkpoint-2/trainer_state.json",
    "checkpoint-2/model.safetensors",
    "checkpoint-2/optimizer.pt",
    "checkpoint-2/scheduler.pt",
    "checkpoint-2/rng_state.pth",
)


def _resume(folder: Path, settings_file: Path) -> tuple[int, str]:
    """`trl-conservative run --config <the run's settings> --resume true --max_steps 3` on `folder`, in this
    process: (status, stderr). One more step than the run trained, so a sound folder trains on."""
    import contextlib
    import io

    import yaml

    from trl_conservative.cli import main

    config = yaml.safe_load(settings_file.read_text())
    config["output_dir"] = str(folder)
    path = folder.parent / "resume.yaml"
    path.write_text(yaml.safe_dump(config))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            status = main(["run", "--config", str(path), "--resume", "true", "--max_steps", "3"])
        except SystemExit as exc:  # argparse-level refusals
            status = exc.code if isinstance(exc.code, int) else 2
    return status, err.getvalue()


# No shrinking: each example trains, and the failure report already lists every draw.
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.generate),
)
@given(data=st.data())
def test_resume_of_a_randomly_damaged_run_folder_trains_on_or_says_one_line(
    run_dir: Path, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_run(run_dir, Path(scratch) / "run")
        damages = []
        for _ in range(data.draw(st.integers(1, 2), label="damages")):
            present = [name for name in RESUME_READ if (folder / name).is_file()]
            if not present:
                break
            name = data.draw(st.sampled_from(present), label="file")
            damages.append(_damage_file(folder, name, data))
        status, err = _resume(folder, run_dir.parent / "run.yaml")
        assert "Traceback" not in err, (damages, err)
        if status == 0:  # trained on: step 3 recorded, its model and summary in place
            summary = json.loads((folder / "run_summary.json").read_text())
            assert summary["global_step"] == 3, (damages, summary)
        else:
            assert status == 2, (damages, status, err)
            lines = [line for line in err.strip().splitlines() if line.startswith("trl-conservative: error: ")]
            assert len(lines) == 1, (damages, err)
