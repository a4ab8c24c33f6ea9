"""A generated test of every setting `trl-conservative run --help` lists: each gets wrong-type and out-of-range
values (generated with hypothesis, in the YAML file and on the command line), and `run` must exit 0 or 2 with one
line, never a traceback, and write nothing when it exits 2. The settings with a numeric range (`RANGE_OF`, pinned
here apart from the checks) get more: a generated value outside it must be refused (exit 2, in the range check's
words), one inside it accepted (exit 0), so deleting a range check fails a test.

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
    name: str,
    value: Any,
    on_command_line: bool,
    model: Path,
    capsys: pytest.CaptureFixture[str],
    **extra: Any,
) -> tuple[int, str]:
    """Run `run` with `name` set to `value` (`extra`: other settings); assert exit 0 or 2, one line, nothing
    written on 2; return (exit, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = tiny_run_settings(model, write_pairs(root / "pairs.jsonl"), root / "out", **extra)
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
        return rc, err


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
        value = data.draw(WRONG_TYPE[kind], label=kind)
        rc, err = _run(name, value, False, tiny_model_dir, capsys)
        assert rc == 2, f"{name}={value!r} is not {kind} but was accepted"
    else:  # any value of the kind, in range or not (`RANGE_OF` tests the ranges): no crash, no traceback
        _run(name, data.draw(OUT_OF_RANGE[kind], label=kind), kind == "bool", tiny_model_dir, capsys)


# --- the numeric ranges: outside refused, inside accepted ---------------------------------------------------------
INF = math.inf
# The range each numeric setting is checked against (`settings_check.RANGES`), written out here on its own so that a
# deleted or loosened check fails: (low, low included, high, high included).
RANGE_OF: dict[str, tuple[float, bool, float, bool]] = {
    "adam_beta1": (0, True, 1, False),
    "adam_beta2": (0, True, 1, False),
    "adam_epsilon": (0, False, INF, False),
    "data_seed": (0, True, 2**32, False),
    "dataloader_num_workers": (0, True, 1024, True),
    "dataloader_prefetch_factor": (1, True, INF, False),
    "dataset_num_proc": (1, True, 1024, True),
    "ddp_bucket_cap_mb": (1, True, INF, False),
    "ddp_timeout": (1, True, INF, False),
    "discopop_tau": (0, False, INF, False),
    "eval_accumulation_steps": (1, True, INF, False),
    "eval_delay": (0, True, INF, False),
    "eval_steps": (0, False, INF, False),
    "gradient_accumulation_steps": (1, True, INF, False),
    "kl_stop_patience": (1, True, INF, False),
    "label_smoothing_factor": (0, True, 1, False),
    "ld_alpha": (0, True, 1, True),
    "learning_rate": (0, False, INF, False),
    "local_rank": (-1, True, INF, False),
    "logging_steps": (0, False, INF, False),
    "lora_alpha": (0, False, INF, False),
    "lora_dropout": (0, True, 1, False),
    "lora_r": (1, True, INF, False),
    "max_grad_norm": (0, True, INF, False),
    "max_length": (1, True, INF, False),
    "max_steps": (1, True, INF, False),  # or -1: "not set, train num_train_epochs"
    "neftune_noise_alpha": (0, True, INF, False),
    "num_train_epochs": (0, True, INF, False),
    "pad_to_multiple_of": (1, True, 65536, True),  # or "auto"
    "per_device_eval_batch_size": (1, True, INF, False),
    "per_device_train_batch_size": (1, True, INF, False),
    "precompute_ref_batch_size": (1, True, INF, False),
    "ref_model_mixup_alpha": (0, True, 1, True),
    "ref_model_sync_steps": (1, True, INF, False),
    "router_aux_loss_coef": (0, True, INF, False),
    "save_steps": (0, False, INF, False),
    "save_total_limit": (1, True, INF, False),
    "seed": (0, True, 2**32, False),
    "suspected_flips": (0, True, INF, False),
    "test_split_size": (0, False, 1, False),
    "torch_empty_cache_steps": (1, True, INF, False),
    "warmup_steps": (0, True, INF, False),
    "weight_decay": (0, True, INF, False),
}
# The ranged settings the installed TRL line has (pad_to_multiple_of, ld_alpha, ... are TRL 1.16's only).
RANGED = sorted(n for n in RANGE_OF if n in SETTINGS)
# The settings a value needs beside it to take effect (`run` refuses a setting that would be ignored).
COMPANIONS: dict[str, dict[str, Any]] = {
    "dataloader_prefetch_factor": {"dataloader_num_workers": 1},
    "ld_alpha": {"loss_type": "sigmoid", "label_smoothing": 0.0},  # a TRL loss option
}
# Whole numbers only inside the range: an integer setting, or a step count transformers reads as a count above 1.
WHOLE = {n for n in RANGED if _kind(SETTINGS[n].type) == "int"} | {"eval_steps", "logging_steps", "save_steps"}


def _outside(name: str) -> st.SearchStrategy[Any]:
    """Values outside `name`'s range: at or past an open end, past a closed one; never its unset marker."""
    low, low_in, high, high_in = RANGE_OF[name]
    whole = _kind(SETTINGS[name].type) == "int"
    step = 1 if whole else 1e-3
    candidates: list[st.SearchStrategy[Any]] = []
    below = low - (step if low_in else 0)
    candidates.append(st.integers(-(10**9), int(below)) if whole else st.floats(-1e9, below))
    if high < INF:
        above = high + (step if high_in else 0)
        candidates.append(st.integers(int(above), 10**12) if whole else st.floats(above, 1e9))
    if not whole:
        candidates.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    marker = SETTINGS[name].unset_marker
    return st.one_of(candidates).filter(lambda v: v != marker)


def _inside(name: str) -> st.SearchStrategy[Any]:
    """Values inside `name`'s range (a bounded stretch of it: a huge batch size is in range but not worth a draw)."""
    low, low_in, high, high_in = RANGE_OF[name]
    top = min(high, low + 10**4)
    if name in WHOLE:
        first = int(low) + (0 if low_in else 1)
        last = int(top) - (0 if high_in or top < high else 1)
        return st.integers(first, last)
    return st.floats(low, top, exclude_min=not low_in, exclude_max=not high_in or top < high)


def test_the_pinned_ranges_are_the_checked_ones() -> None:
    """Every numeric range `run` checks is pinned above, and nothing pinned is left unchecked."""
    from trl_conservative.run.settings_check import RANGES

    numeric = {n for n, r in RANGES.items() if any(w in r.need for w in ("number", "integer", "fraction"))}
    numeric -= {"kl_warn_above", "kl_stop_above"}  # any finite number: what is meaningless depends on the metric
    assert numeric == set(RANGE_OF)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_values_outside_a_range_are_refused_in_its_words(
    data: st.DataObject, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trl_conservative.run.settings_check import RANGES

    name = data.draw(st.sampled_from(RANGED), label="setting")
    value = data.draw(_outside(name), label="outside")
    on_command_line = data.draw(st.booleans(), label="on the command line")
    rc, err = _run(name, value, on_command_line, tiny_model_dir, capsys, **COMPANIONS.get(name, {}))
    assert rc == 2, f"{name}={value!r} is outside its range but was accepted"
    assert f"error: {name} must be {RANGES[name].need}, got " in err, err


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_values_inside_a_range_are_accepted(
    data: st.DataObject, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = data.draw(st.sampled_from(RANGED), label="setting")
    value = data.draw(_inside(name), label="inside")
    on_command_line = data.draw(st.booleans(), label="on the command line")
    rc, err = _run(name, value, on_command_line, tiny_model_dir, capsys, **COMPANIONS.get(name, {}))
    assert rc == 0, f"{name}={value!r} is inside its range but was refused: {err}"


def test_the_ends_of_each_range(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each closed end accepted, each open end refused (the values a generator is least likely to draw)."""
    for name in RANGED:
        low, low_in, high, high_in = RANGE_OF[name]
        for end, included in ((low, low_in), (high, high_in)):
            if end == INF or (name in WHOLE and not float(end).is_integer()):
                continue
            value = int(end) if name in WHOLE else float(end)
            rc, err = _run(name, value, False, tiny_model_dir, capsys, **COMPANIONS.get(name, {}))
            assert rc == (0 if included else 2), f"{name}={value!r}: exit {rc} {err}"


@pytest.mark.skipif("pad_to_multiple_of" not in SETTINGS, reason="a setting of TRL 1.16 only")
def test_a_number_or_word_setting_takes_a_number_on_the_command_line(tmp_path: Path) -> None:
    """TRL types pad_to_multiple_of `int | str` ('auto' or a count): `--pad_to_multiple_of 8` is the number 8 (it was
    the text '8', refused by the range check), and a word stays a word."""
    from trl_conservative.run.args import parse_run_args

    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: builtin:tiny-arithmetic\ndataset_name: builtin:arithmetic\noutput_dir: {tmp_path / 'out'}\nuse_cpu: true\nbf16: false\n")
    assert parse_run_args(["--config", str(config), "--pad_to_multiple_of", "8"]).training.pad_to_multiple_of == 8
    word = parse_run_args(["--config", str(config), "--pad_to_multiple_of", "auto"]).training.pad_to_multiple_of
    assert word in ("auto", None)  # TRL resolves 'auto' itself (None on this machine)
