"""A generated test of every setting `trl-conservative run --help` lists: each gets wrong-type and out-of-range
values (generated with hypothesis, in the YAML file and on the command line), and `run` must exit 0 or 2 with one
line, never a traceback, and write nothing when it exits 2.

`run` stops after validation here (`run_training` is replaced), so the walk takes seconds. Whether the values that
pass validation also train was measured once by running every edge value that passes for real (one step on the
tiny model; issue 15's report): those failures became checks in `settings_check.py`, and errors that remain in
building the trainer or starting training are turned into the same one line by `runner.py`.
"""

from __future__ import annotations

import enum
import hashlib
import math
import tempfile
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_conservative.cli import main
from trl_conservative.run import runner
from trl_conservative.run.args import build_parser
from trl_conservative.run.settings_check import setting_fields

SETTINGS = setting_fields()
NAMES = sorted(SETTINGS)
# Settings the base config sets to run on this machine, whose fuzzing only re-tests the same checks.
BASE_KEYS = ("model_name_or_path", "dataset_name", "output_dir")


def _kind(tp: Any) -> str:
    """bool, int, float, str, list or dict: the kind of value a setting takes (None stripped)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        kinds = {_kind(a) for a in members}
        for kind in ("dict", "list", "int", "float", "bool"):
            if kind in kinds:
                return "str" if "str" in kinds and kind == "bool" else kind
        return "str"
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        return "bool"
    if origin is int:
        return "int"
    if origin is float:
        return "float"
    if origin is list:
        return "list"
    if origin is dict:
        return "dict"
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return "str"
    return "str"


_TEXT = st.text(alphabet="abcxyz_-/.0123456789 ", max_size=10)
_NUMBER = st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True))
WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.one_of(st.integers(2, 9), st.floats(allow_nan=False), st.lists(st.booleans(), max_size=2)),
    "int": st.one_of(
        st.floats(-1e6, 1e6).filter(lambda v: not float(v).is_integer()),
        st.lists(st.integers(), min_size=1, max_size=2),
        st.booleans(),
    ),
    "float": st.one_of(st.lists(st.floats(), min_size=1, max_size=2), st.booleans(), st.just({"a": 1})),
    "str": st.one_of(_NUMBER, st.lists(st.integers(), min_size=1, max_size=2), st.just({"a": 1})),
    "list": st.one_of(st.just({"a": 1}), _NUMBER),
    "dict": st.one_of(_NUMBER, st.lists(st.integers(), min_size=1, max_size=2)),
}
OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.sampled_from(["2", "maybe", ""]),  # a bool has no range: unparsable text instead
    "int": st.one_of(st.sampled_from([-1, 0, -(2**40), 2**40]), st.integers(-(10**15), 10**15)),
    "float": st.one_of(
        st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e30]), st.floats(allow_nan=True)
    ),
    "str": st.one_of(st.just(""), _TEXT),
    "list": st.lists(st.one_of(st.integers(-3, 3), st.floats(), _TEXT), max_size=3),
    "dict": st.dictionaries(_TEXT, st.integers(), max_size=2),
}


# The edge values every setting of a kind gets, besides the generated ones: (value, given on the command line).
EDGES: dict[str, list[tuple[Any, bool]]] = {
    "bool": [(3, False), ([True], False), ("maybe", True)],
    "int": [(2.5, False), (-1, False), (0, False), (2**40, False), ("-3", True), ("1e3", True)],
    "float": [
        ([1.0], False),
        (-1.0, False),
        (0.0, False),
        (math.nan, False),
        (math.inf, False),
        (1e30, False),
    ],
    "str": [(12, False), (["x"], False), ("", False), ("zz-no-such", False)],
    "list": [({"a": 1}, False), ([], False), ([-1.0], False), (["zz"], False)],
    "dict": [(5, False), ({"zz": 1}, False), ("{not json", False)],
}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _run(
    name: str, value: Any, on_command_line: bool, model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run `run` with `name` set to `value`; assert exit 0 or 2, one line, nothing written on 2."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = tiny_run_settings(model, write_pairs(root / "pairs.jsonl"), root / "out")
        flags: list[str] = []
        if on_command_line:
            flags = [f"--{name}", str(value)]
        else:
            config[name] = value
        (root / "run.yaml").write_text(yaml.safe_dump(config))
        before = _digest(root)
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(["run", "--config", str(root / "run.yaml"), *flags])
        err = capsys.readouterr().err
        shown = f"{name}={value!r} ({'flag' if on_command_line else 'YAML'})"
        assert rc in (0, 2), f"{shown}: exit {rc}\n{err}"
        assert "Traceback" not in err, f"{shown}\n{err}"
        if rc == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), f"{shown}\n{err}"
            assert _digest(root) == before, f"{shown} wrote files"
            assert not (root / "out").exists(), shown


@pytest.fixture(autouse=True)
def _validate_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` stops once every setting is parsed and checked: no data, no model, no training."""
    monkeypatch.setattr(runner, "run_training", lambda spec, **kwargs: None)


def test_the_walk_covers_every_setting_run_help_lists() -> None:
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert set(SETTINGS) == dests
    assert len(SETTINGS) > 150


@pytest.mark.parametrize("name", NAMES)
def test_edge_values_exit_0_or_2_with_one_line(
    name: str, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for value, on_command_line in EDGES[_kind(SETTINGS[name].type)]:
        _run(name, value, on_command_line, tiny_model_dir, capsys)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_bad_values_exit_0_or_2_with_one_line(
    data: st.DataObject, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = data.draw(st.sampled_from(NAMES), label="setting")
    kind = _kind(SETTINGS[name].type)
    if data.draw(st.booleans(), label="wrong type (else out of range)"):
        _run(name, data.draw(WRONG_TYPE[kind], label=kind), False, tiny_model_dir, capsys)
    else:
        _run(name, data.draw(OUT_OF_RANGE[kind], label=kind), kind == "bool", tiny_model_dir, capsys)
