"""Property (issue 20 family 7): whatever damage a finished run folder takes (a file truncated, bytes corrupted, a
file deleted, a JSON value swapped for another type), `trl-conservative report` answers with exit 0 (the report,
saying what it could not read) or exit 2 and one line; never a traceback."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from finished_run import copy_run, finished_run, report
from hypothesis import HealthCheck, given, settings
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
    name = data.draw(st.sampled_from(_files(folder)), label="file")
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
