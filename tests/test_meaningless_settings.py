"""Meaningless values and dead monitors are refused in one line; legal but alarming runs are named; the card states
the batch a run actually used (issue 20, family 4).

- refused by `trl-conservative run` (exit 2, one line, nothing written; the ids are docs/bad-inputs.md's) and by
  the Python API: a threshold below what the monitored metric can be (a negative one on a KL) or out of its reach,
  a warning above the stop, a monitor on a metric the setup never logs, a loss named twice, a beta past 2**23;
- `report/alarms.py`: a non-finite gradient norm, an evaluation loss many times its start;
- `model_card/collect.py: batch_used`: never more pairs per step than the training set holds.
"""

from __future__ import annotations

import hashlib
import math
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs

from trl_conservative import ConfigError, ConservativeDPOConfig, ConservativeDPOTrainer, KLMonitorCallback
from trl_conservative.cli import main
from trl_conservative.kl.monitor import check_thresholds, metric_bounds
from trl_conservative.losses.plan import BETA_MAX
from trl_conservative.model_card.collect import batch_used, card_data_from_trainer
from trl_conservative.model_card.render import render_model_card
from trl_conservative.report.alarms import EVAL_LOSS_RISE, eval_loss_alarms, grad_norm_alarm, training_alarms
from trl_conservative.run.args import parse_run_args
from trl_conservative.trainer.kl_availability import check_monitor_metric, unlogged_kl

MISSING_MODEL = "/nonexistent/model/trl-conservative"
EVALUATES = {"eval_strategy": "steps", "eval_steps": 1, "test_split_size": 0.25}

# (id in docs/bad-inputs.md, settings over the base run, phrases of the one line)
CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "kl-threshold-below-zero",
        {"kl_stop_above": -1.0},
        (
            "kl_stop_above -1 is below 0, but kl/exact is a KL, which is never negative",
            "act on its first log",
        ),
    ),
    (
        "kl-threshold-below-zero-eval",
        {"kl_warn_above": -0.01, "kl_monitor_metric": "eval_kl/sequence", **EVALUATES},
        ("kl_warn_above -0.01 is below 0, but eval_kl/sequence is a KL",),
    ),
    (
        "kl-threshold-out-of-reach",
        {"kl_stop_above": 1.0, "kl_monitor_metric": "rewards/accuracies"},
        ("kl_stop_above 1 is not below 1, but rewards/accuracies is a share in [0, 1]", "could never act"),
    ),
    (
        "kl-warn-above-stop",
        {"kl_warn_above": 0.5, "kl_stop_above": 0.2},
        ("kl_warn_above 0.5 is above kl_stop_above 0.2", "stop before the warning"),
    ),
    (
        "kl-monitor-never-fires",
        {
            "precompute_ref_log_probs": True,
            "kl_monitor_metric": "eval_kl/sequence",
            "kl_stop_above": 1.0,
            **EVALUATES,
        },
        (
            "kl_monitor_metric 'eval_kl/sequence' is not logged by this run (precompute_ref_log_probs=True without a "
            "ref_model keeps no reference model to sample against)",
            "never fire",
        ),
    ),
    (
        "kl-monitor-auto-never-fires",
        {"kl_exact_steps": 0, "kl_stop_above": 1.0},
        (
            "kl_monitor_metric 'auto' watches 'kl/exact' in this run, which it does not log (kl_exact_steps is 0)",
        ),
    ),
    (
        "loss-type-twice",
        {"loss_type": ["cdpo", "cdpo"]},
        ("loss_type ['cdpo', 'cdpo'] lists 'cdpo' more than once", "set loss_weights"),
    ),
    ("beta-too-large", {"beta": 1e30}, ("beta must be below 2**23 = 8388608", "got 1e+30")),
]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


def test_docs_list_every_case() -> None:
    catalogue = (Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md").read_text()
    missing = [case_id for case_id, _, _ in CASES if f"`{case_id}`" not in catalogue]
    assert not missing, f"docs/bad-inputs.md does not list: {missing}"


@pytest.mark.parametrize(("case_id", "settings", "expect"), CASES, ids=[c[0] for c in CASES])
def test_meaningless_settings_exit_2_with_one_line_and_write_nothing(
    case_id: str,
    settings: dict[str, Any],
    expect: tuple[str, ...],
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tiny_run_settings(
        tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "out", **settings
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    before = _digest(tmp_path)
    rc = main(["run", "--config", str(tmp_path / "run.yaml")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), err
    for phrase in expect:
        assert phrase in lines[0], lines[0]
    assert _digest(tmp_path) == before and not (tmp_path / "out").exists()


def _parse(tmp_path: Path, **settings: Any) -> Any:
    config = tiny_run_settings(Path("some/model"), Path("pairs.jsonl"), tmp_path / "out", **settings)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return parse_run_args(["--config", str(tmp_path / "run.yaml")])


def test_thresholds_that_mean_something_pass(tmp_path: Path) -> None:
    # A log-ratio can be negative: any finite threshold; a reward margin too; a KL threshold of 0 is "any drift".
    _parse(tmp_path, kl_monitor_metric="logratio/rejected", kl_warn_above=-1e9, kl_stop_above=-1e9)
    _parse(tmp_path, kl_monitor_metric="rewards/margins", kl_stop_above=-1.0)
    _parse(tmp_path, kl_stop_above=0.0, kl_warn_above=0.0)
    _parse(tmp_path, kl_warn_above=0.1, kl_stop_above=0.5)
    _parse(tmp_path, beta=BETA_MAX / 2)
    # precompute_ref_log_probs with PEFT keeps the reference (the model without its adapter): the sequence KL is logged.
    spec = _parse(tmp_path, precompute_ref_log_probs=True, use_peft=True, kl_stop_above=1.0, **EVALUATES)
    assert spec.training.precompute_ref_log_probs


@pytest.mark.parametrize(
    ("metric", "kwargs", "message"),
    [
        ("auto", {"stop_above": -1.0}, "stop_above -1 is below 0, but the metric 'auto' watches"),
        ("kl/exact_chosen", {"warn_above": -0.5}, "warn_above -0.5 is below 0, but kl/exact_chosen is a KL"),
        ("eval_kl/sequence", {"stop_above": -2.0}, "eval_kl/sequence is a KL, which is never negative"),
        ("auto", {"warn_above": 0.5, "stop_above": 0.2}, "warn_above 0.5 is above stop_above 0.2"),
        ("rewards/margins", {"warn_above": 1.0, "stop_above": -1.0}, "warn_above 1 is above stop_above -1"),
        ("eval_rewards/accuracies", {"warn_above": 1.0}, "share in [0, 1]: the monitor could never act"),
        ("logps/chosen", {"stop_above": 0.0}, "a log-probability, which is never positive"),
    ],
)
def test_kl_monitor_callback_refuses_meaningless_thresholds(
    metric: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        KLMonitorCallback(metric, **kwargs)
    assert str(err.value).startswith("KLMonitorCallback ")


def test_kl_monitor_callback_keeps_thresholds_that_mean_something() -> None:
    KLMonitorCallback("logratio/chosen", warn_above=-2.0, stop_above=-1.0)
    KLMonitorCallback("rewards/margins", stop_above=-1.0)
    KLMonitorCallback(stop_above=0.0, warn_above=0.0)
    KLMonitorCallback("my/metric", warn_above=-5.0)  # not a metric we know the range of
    assert metric_bounds("eval_kl/exact") == (0.0, math.inf, "a KL, which is never negative")
    assert metric_bounds("logratio/chosen") is None and metric_bounds("loss") is None
    check_thresholds("kl/exact", 0.1, 0.1)  # warn == stop: allowed


def test_what_a_setup_cannot_log_is_known_before_loading(tmp_path: Path) -> None:
    args = ConservativeDPOConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", precompute_ref_log_probs=True
    )
    missing = unlogged_kl(args, reference_free=False)
    assert set(missing) == {"kl/exact", "kl/sequence"}
    assert unlogged_kl(args, reference_free=False, peft=True) == {}
    assert unlogged_kl(args, reference_free=False, ref_model=True) == {}
    assert set(unlogged_kl(args, reference_free=True)) == {"kl/exact", "kl/sequence", "logratio/*"}
    assert check_monitor_metric("logratio/chosen", args, setting="m") == "logratio/chosen"
    with pytest.raises(
        ConfigError, match="m 'kl/exact' is not logged by this run \\(precompute_ref_log_probs"
    ):
        check_monitor_metric("kl/exact", args, setting="m")
    with pytest.raises(ConfigError, match="m 'kl/sequence' is not logged .*measured at evaluations only"):
        check_monitor_metric("kl/sequence", args, setting="m", peft=True)


def test_the_python_api_refuses_a_loss_named_twice_and_an_overflowing_beta(tmp_path: Path) -> None:
    from trl import DPOConfig

    base = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none"}
    for bad, line in (
        ({"loss_type": ["cdpo", "cdpo"]}, "lists 'cdpo' more than once"),
        ({"beta": 1e30}, "beta must be below 2**23"),
        ({"beta": float(2**23)}, "beta must be below 2**23"),
    ):
        with pytest.raises(ConfigError, match=line.replace("*", r"\*")) as ours:
            ConservativeDPOConfig(**base, **bad)
        with pytest.raises(ConfigError) as stock:  # a plain DPOConfig: the trainer refuses before loading
            ConservativeDPOTrainer(model=MISSING_MODEL, args=DPOConfig(**base, **bad))
        assert str(stock.value) == str(ours.value)


# --- alarms: legal but alarming ------------------------------------------------------------------------------
def _history(key: str, points: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [{key: value, "step": step} for step, value in points]


def test_a_non_finite_gradient_norm_is_an_alarm() -> None:
    history = _history("grad_norm", [(1, math.inf), (2, math.inf), (3, math.nan), (4, 2.0)])
    alarm = grad_norm_alarm(history)
    assert alarm is not None
    assert alarm.startswith("grad_norm was inf at step 1, and at 2 more of the 4 logged steps")
    assert "clipping scales such a gradient by 0" in alarm and "Lower learning_rate or beta" in alarm
    assert grad_norm_alarm(_history("grad_norm", [(1, 1e30), (2, 3.0)])) is None  # large but finite


def test_an_evaluation_loss_many_times_its_start_is_an_alarm() -> None:
    # learning_rate: 10 on the tiny model (issue 20): the held-out DPO loss went from ln 2 to 733.
    history = _history("eval_loss", [(0, 0.6931), (20, 12.5), (40, 733.0)])
    (alarm,) = eval_loss_alarms(history)
    assert alarm.startswith("eval_loss rose to 733 at step 40, 1058 times its first value (0.6931 at step 0)")
    assert "diverged on the held-out pairs" in alarm
    # A run that learns, or overfits a little, raises none; nor does one evaluation.
    assert eval_loss_alarms(_history("eval_loss", [(0, 0.693), (10, 0.45), (20, 0.9)])) == []
    assert eval_loss_alarms(_history("eval_loss", [(0, 0.693)])) == []
    # A spike that came back down is still named, with where it ended; each evaluation set on its own.
    spiked = _history("eval_loss", [(0, 0.7), (10, 0.7 * EVAL_LOSS_RISE), (20, 0.8)])
    assert "2.1 at step 10, 3 times" in eval_loss_alarms(spiked)[0]
    assert "0.8 at the last evaluation (step 20)" in eval_loss_alarms(spiked)[0]
    named = _history("eval_chat_loss", [(0, 1.0), (5, 4.0)]) + _history(
        "eval_rewards/margins", [(0, 1.0), (5, 9.0)]
    )
    assert [a.split(" ")[0] for a in eval_loss_alarms(named)] == ["eval_chat_loss"]


def test_training_alarms_are_plain_data_in_and_lines_out() -> None:
    history = _history("grad_norm", [(1, math.inf)]) + _history("eval_loss", [(0, 0.69), (2, 5.0)])
    alarms = training_alarms(history)
    assert len(alarms) == 2 and alarms[0].startswith("grad_norm") and alarms[1].startswith("eval_loss")
    assert training_alarms([]) == [] and training_alarms(_history("loss", [(1, 0.69), (2, 733.0)])) == []


# --- the card's batch: what the run used -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("asked", "train_size", "used", "pairs"),
    [
        ((400, 8, 1), 8, (8, 1), 8),  # issue 20: the card claimed 3,200 pairs per step on 8 pairs
        ((4, 100, 1), 8, (4, 2), 8),  # two batches of 4 accumulated
        ((3, 100, 1), 8, (8, 1), 8),  # 3 + 3 + 2: one step of all 8, stated as such
        ((4, 4, 1), 10, (10, 1), 10),
        ((4, 2, 2), 10, (5, 1), 10),  # two processes, 5 pairs each
        ((4, 4, 1), 16, (4, 4), 16),  # fits: as given
        ((4, 1, 1), 10, (4, 1), 4),  # smaller than the data: as given
        ((8, 1, 1), None, (8, 1), 8),  # a streamed set: its size is unknown
    ],
)
def test_batch_used_is_never_more_than_the_training_set(
    asked: tuple[int, int, int], train_size: int | None, used: tuple[int, int], pairs: int
) -> None:
    per_device, accumulation, world = asked
    assert batch_used(per_device, accumulation, world, train_size) == used
    assert used[0] * used[1] * world == pairs


def test_the_card_states_the_batch_the_run_used() -> None:
    from trl_conservative.losses.plan import LossPlan

    trainer = types.SimpleNamespace(
        args=types.SimpleNamespace(
            beta=0.1,
            label_smoothing=0.0,
            learning_rate=1e-4,
            num_train_epochs=1.0,
            max_steps=40,
            per_device_train_batch_size=400,
            gradient_accumulation_steps=8,
            world_size=1,
            bf16=False,
            fp16=False,
            seed=0,
        ),
        model=types.SimpleNamespace(
            config=types.SimpleNamespace(_name_or_path="tiny"), dtype="torch.float32"
        ),
        state=types.SimpleNamespace(log_history=[], global_step=40, epoch=40.0),
        hub_model_id=None,
        train_dataset=list(range(8)),
        eval_dataset=None,
        loss_plan=LossPlan(entries=()),
        processing_class=None,
    )
    card = render_model_card(card_data_from_trainer(trainer, model_name="m", model_location="m"))
    assert (
        "effective batch size: 8 pairs per step = 8 per device x 1 gradient accumulation x 1 process" in card
    )
    assert "3200" not in card and "3,200" not in card


def test_the_report_warnings_show_the_alarms_once() -> None:
    from trl_conservative.report.summary import run_warnings

    history = [
        {"step": 0, "eval_loss": 0.69},
        {"step": 5, "loss": 0.5, "grad_norm": float("nan")},
        {"step": 10, "eval_loss": 733.0},
    ]
    warnings = run_warnings(history)
    assert sum("grad_norm" in w for w in warnings) == 1, warnings
    assert any("eval_loss" in w and "733" in w for w in warnings), warnings
