"""`trl-conservative` CLI: YAML + flag parsing, one-line user errors (exit 2), `losses`, `run`, `report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trl_conservative.cli import main
from trl_conservative.run.args import build_parser, parse_run_args
from trl_conservative.run.renamed import LINE_ONLY_SETTINGS, RENAMED_SETTINGS, REPLACEMENTS
from trl_conservative.run.settings import loss_settings

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    from trl_conservative.demo.tiny import tiny_preference_rows

    return write_jsonl(tmp_path / "pairs.jsonl", tiny_preference_rows(16, seed=0))


def small_run_config(tmp_path: Path, model: Path | str, data: Path | str, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_name_or_path": str(model),
        "dataset_name": str(data),
        "output_dir": str(tmp_path / "out"),
        "loss_type": "cdpo",
        "label_smoothing": 0.1,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "no",
        "max_length": 32,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "activation_checkpointing": False,
        "dataloader_num_workers": 0,
        "plot": False,
    }
    config.update(extra)
    return config


def assert_user_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- fast: the console script and the parser ------------------------------------------------------------
def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from trl_conservative.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'trl', 'transformers', 'rich', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "run" in out and "losses" in out and "report" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_yaml_values_flags_override_and_peft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRLC_TEST_VAR", raising=False)
    config = small_run_config(
        tmp_path, "some/model", "data.jsonl", beta=0.2, use_peft=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"],
        env={"TRLC_TEST_VAR": "from-yaml"},
    )  # fmt: skip
    path = write_yaml(tmp_path / "run.yaml", config)
    spec = parse_run_args(
        ["--config", str(path), "--beta", "0.3", "--lora_alpha", "8", "--test_split_size", "0.25"]
    )
    assert spec.training.beta == 0.3  # the flag wins
    assert spec.training.label_smoothing == 0.1  # from the YAML
    assert loss_settings(spec.training)["loss_type"] == ["cdpo"]  # TRL 0.2x keeps a lone name as a str
    assert spec.training.max_steps == 2 and spec.training.output_dir == str(tmp_path / "out")
    assert spec.script.dataset_name == "data.jsonl" and spec.script.test_split_size == 0.25
    assert spec.model.model_name_or_path == "some/model"
    assert os.environ["TRLC_TEST_VAR"] == "from-yaml"
    from trl import get_peft_config

    peft = get_peft_config(spec.model)
    assert (peft.r, peft.lora_alpha, sorted(peft.target_modules)) == (4, 8, ["q_proj", "v_proj"])


def test_default_config_is_the_embedded_one() -> None:
    spec = parse_run_args(["--max_steps", "3"])
    assert spec.config_path.name == "default.yaml"
    assert spec.model.model_name_or_path == "builtin:tiny-arithmetic"
    assert spec.script.dataset_name == "builtin:arithmetic"
    assert loss_settings(spec.training)["loss_type"] == ["cdpo"] and spec.training.label_smoothing == 0.1
    assert spec.training.max_steps == 3
    assert spec.notes == []  # the embedded default's own settings are read silently on either TRL line


def test_overwrite_output_dir_is_one_flag_with_our_meaning_on_either_trl_line(tmp_path: Path) -> None:
    # transformers 4.x's TrainingArguments (under TRL 0.2x) defines overwrite_output_dir too: one flag, ours.
    actions = [a for a in build_parser()._actions if "--overwrite_output_dir" in a.option_strings]
    assert len(actions) == 1 and "different run" in str(actions[0].help)
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, "m", "d.jsonl"))
    spec = parse_run_args(["--config", str(path), "--overwrite_output_dir", "true"])
    assert spec.script.overwrite_output_dir is True
    assert getattr(spec.training, "overwrite_output_dir", True) is True  # the same value where the config has it
    spec = parse_run_args(["--config", str(path)])
    assert spec.script.overwrite_output_dir is False
    assert getattr(spec.training, "overwrite_output_dir", False) is False


def test_activation_checkpointing_is_read_under_the_installed_transformers_name(tmp_path: Path) -> None:
    import transformers

    renamed = "activation_checkpointing" not in {a.dest for a in build_parser()._actions}
    assert renamed == (int(transformers.__version__.split(".")[0]) < 5)
    config = small_run_config(tmp_path, "m", "d.jsonl", activation_checkpointing=True)
    path = write_yaml(tmp_path / "run.yaml", config)
    spec = parse_run_args(["--config", str(path)])
    name = RENAMED_SETTINGS["activation_checkpointing"] if renamed else "activation_checkpointing"
    assert getattr(spec.training, name) is True
    flag = parse_run_args(["--config", str(path), "--activation_checkpointing", "false"])
    assert getattr(flag.training, name) is False  # the flag wins, under either name
    if renamed:
        assert spec.notes == [
            f"Note: transformers {transformers.__version__} calls activation_checkpointing 'gradient_checkpointing' "
            f"(renamed in transformers 5.23); activation_checkpointing in {str(path)!r} is applied as "
            "gradient_checkpointing."
        ]
        assert "in " in flag.notes[0] and "and on the command line" in flag.notes[0]
        both = write_yaml(tmp_path / "both.yaml", {**config, "gradient_checkpointing": False})
        with pytest.raises(Exception, match="sets both activation_checkpointing and gradient_checkpointing"):
            parse_run_args(["--config", str(both)])
    else:
        assert spec.notes == [] and flag.notes == []


def test_a_warmup_fraction_is_read_as_warmup_ratio_where_warmup_steps_counts_steps(tmp_path: Path) -> None:
    fraction_in_steps = "warmup_ratio" not in {a.dest for a in build_parser()._actions}  # transformers >= 5
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, "m", "d.jsonl", warmup_steps=0.25))
    from_file = parse_run_args(["--config", str(path)])
    from_flag = parse_run_args(["--config", str(path), "--warmup_steps", "0.5"])
    for spec, fraction in ((from_file, 0.25), (from_flag, 0.5)):
        if fraction_in_steps:
            assert spec.training.warmup_steps == fraction and spec.notes == []
        else:
            assert spec.training.warmup_ratio == fraction and spec.training.warmup_steps == 0
            assert "warmup_steps < 1" in spec.notes[-1] and "applied as warmup_ratio" in spec.notes[-1]
    if not fraction_in_steps:
        assert f"in {str(path)!r}" in from_file.notes[-1] and "on the command line" in from_flag.notes[-1]
    ratio = write_yaml(tmp_path / "ratio.yaml", small_run_config(tmp_path, "m", "d.jsonl", warmup_ratio=0.2))
    spec = parse_run_args(["--config", str(ratio)])  # a config written for transformers 4
    if fraction_in_steps:  # transformers 5 has no warmup_ratio: the fraction goes to warmup_steps
        assert spec.training.warmup_steps == 0.2 and "applied as warmup_steps" in spec.notes[-1]
    else:
        assert spec.training.warmup_ratio == 0.2 and not any("as warmup_" in note for note in spec.notes)
    plain = write_yaml(tmp_path / "plain.yaml", small_run_config(tmp_path, "m", "d.jsonl"))
    steps = parse_run_args(["--config", str(plain), "--warmup_steps", "3"])  # a step count stays one
    assert steps.training.warmup_steps == 3 and getattr(steps.training, "warmup_ratio", 0) == 0
    assert not any("warmup_ratio" in note for note in steps.notes)


def test_a_setting_of_the_other_trl_line_is_refused_naming_that_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import trl

    dests = {a.dest for a in build_parser()._actions}
    installed = "TRL 1.16" if trl.__version__.startswith("1.") else "TRL 0.23"
    if trl.__version__.startswith(("1.16.", "0.23.")):  # the releases the lists were read off
        for line, names in LINE_ONLY_SETTINGS.items():
            assert (names <= dests) if line.startswith(installed) else not (names & dests), line
    other = next(line for line in LINE_ONLY_SETTINGS if not line.startswith(installed))
    key = sorted(LINE_ONLY_SETTINGS[other] - dests)[0]
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, "m", "d.jsonl", **{key: 8}))
    rc, _, err = run_cli(["run", "--config", str(path)], capsys)
    assert_user_error(
        rc, err, f"Unknown setting {key!r} in {str(path)!r}. It is a setting of {other} only; the installed "
        f"TRL {trl.__version__} has none"
    )  # fmt: skip
    assert (REPLACEMENTS[key] if key in REPLACEMENTS else "so remove it") in err
    rc, _, err = run_cli(["run", "--config", str(path.with_name("none.yaml")), f"--{key}", "8"], capsys)
    assert rc == 2  # the missing file is said first
    plain = write_yaml(tmp_path / "plain.yaml", small_run_config(tmp_path, "m", "d.jsonl"))
    rc, _, err = run_cli(["run", "--config", str(plain), f"--{key}", "8"], capsys)
    assert_user_error(rc, err, f"Unknown setting {key!r} on the command line. It is a setting of {other} only")


def test_loss_params_json_flag(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, "m", "d.jsonl"))
    with pytest.raises(Exception, match="Unknown loss_params key"):
        parse_run_args(["--config", str(path), "--loss_params", '{"gamma": 1.0}'])


@pytest.mark.parametrize(
    ("yaml_extra", "flags", "fragments"),
    [
        ({"learnig_rate": 1e-3}, [], ["Unknown setting 'learnig_rate'", "Did you mean 'learning_rate'?"]),
        ({}, ["--bta", "0.2"], ["Unknown setting 'bta' on the command line", "'beta'"]),
        ({}, ["--beta", "abc"], ["--beta", "invalid float value: 'abc'"]),
        ({}, ["--label_smoothing", "0.7"], ["label_smoothing", "[0, 0.5)", "0.7"]),
        ({"beta": -1.0}, [], ["beta must be a finite number > 0, got -1.0"]),
        ({"loss_type": "cdop"}, [], ["Unknown loss 'cdop'", "Did you mean 'cdpo'?"]),
        ({"lr_scheduler_type": "sideways"}, [], ["Invalid setting", "sideways"]),
    ],
)
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    yaml_extra: dict[str, Any],
    flags: list[str],
    fragments: list[str],
) -> None:
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, "m", "d.jsonl", **yaml_extra))
    rc, _, err = run_cli(["run", "--config", str(path), *flags], capsys)
    assert_user_error(rc, err, *fragments)
    assert not (tmp_path / "out").exists()


def test_missing_and_broken_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["run", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert_user_error(rc, err, "nope.yaml", "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: [0.1\n")
    rc, _, err = run_cli(["run", "--config", str(bad)], capsys)
    assert_user_error(rc, err, "is not valid YAML at line")
    listed = tmp_path / "list.yaml"
    listed.write_text("- beta\n")
    rc, _, err = run_cli(["run", "--config", str(listed)], capsys)
    assert_user_error(rc, err, "must hold a mapping")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("beta: !!python/object/apply:os.system ['true']\n")
    rc, _, err = run_cli(["run", "--config", str(unsafe)], capsys)
    assert_user_error(rc, err, "is not valid YAML")  # safe_load refuses to build Python objects


def test_report_of_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["report", str(tmp_path / "nothing")], capsys)
    assert_user_error(rc, err, "does not exist")


# --- errors found when resolving the model and the data (imports TRL, no training) ------------------------
def test_nonexistent_model_path(tmp_path: Path, pairs_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(
        tmp_path / "run.yaml", small_run_config(tmp_path, tmp_path / "no-such-model", pairs_file)
    )
    rc, _, err = run_cli(["run", "--config", str(path)], capsys)
    assert_user_error(rc, err, "no-such-model", "does not exist", "model_name_or_path")
    assert not (tmp_path / "out").exists()
    empty_dir = tmp_path / "empty-model"
    empty_dir.mkdir()
    rc, _, err = run_cli(["run", "--config", str(path), "--model_name_or_path", str(empty_dir)], capsys)
    assert_user_error(rc, err, "no config.json")


@pytest.mark.parametrize(
    ("rows", "extra", "fragments"),
    [
        (
            [{"question": "1+1=", "answer": "2"}],
            {},
            ["no 'chosen' or 'rejected' column", "columns: question, answer"],
        ),
        ([{"prompt": "1+1=", "chosen": "2"}], {}, ["no 'rejected' column"]),
        (None, {}, ["does not exist"]),
        (
            [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}],
            {"eval_strategy": "steps"},
            ["has no split 'test'"],
        ),
    ],
)
def test_dataset_errors(
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[dict[str, str]] | None,
    extra: dict[str, Any],
    fragments: list[str],
) -> None:
    data = tmp_path / "data.jsonl"
    if rows is not None:
        write_jsonl(data, rows)
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, tiny_model_dir, data, **extra))
    rc, _, err = run_cli(["run", "--config", str(path)], capsys)
    assert_user_error(rc, err, *fragments)
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datasets import Dataset

    folder = tmp_path / "saved"
    Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).save_to_disk(str(folder))
    path = write_yaml(tmp_path / "run.yaml", small_run_config(tmp_path, tiny_model_dir, folder))
    rc, _, err = run_cli(["run", "--config", str(path)], capsys)
    assert_user_error(rc, err, "is empty")
    empty_file = tmp_path / "empty.jsonl"
    empty_file.write_text("\n")
    rc, _, err = run_cli(["run", "--config", str(path), "--dataset_name", str(empty_file)], capsys)
    assert_user_error(rc, err, "empty.jsonl' is empty")
    assert not (tmp_path / "out").exists()


# --- slow: real runs --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_then_report(
    tmp_path: Path, tiny_model_dir: Path, pairs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_run_config(
        tmp_path, tiny_model_dir, pairs_file, test_split_size=0.25, eval_strategy="steps", eval_steps=2,
        eval_on_start=True, plot=True,
    )  # fmt: skip
    path = write_yaml(tmp_path / "run.yaml", config)
    rc, out, err = run_cli(["run", "--config", str(path)], capsys)
    assert rc == 0, err
    run_dir = tmp_path / "out"
    for name in ("run_summary.json", "trainer_state.json", "README.md", "model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert "step 1/2" in out and "step 2/2" in out  # the live view's lines (stdout is not a terminal here)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert summary["settings"]["loss_type"] == ["cdpo"] and summary["settings"]["train_rows"] == 12
    assert summary["settings"]["eval_rows"] == 4 and summary["global_step"] == 2
    assert [e["step"] for e in state["log_history"] if "eval_loss" in e] == [0, 2]
    report_start = out.index("trl-conservative run report")
    rc, again, _ = run_cli(["report", str(run_dir)], capsys)
    assert rc == 0
    assert again[again.index("trl-conservative run report") :] == out[report_start:]
    assert "Held-out preference accuracy" in again and "cdpo" in again
    plot = run_dir / "training_curves.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_kl_monitor_options_stop_the_run_and_warn(
    tmp_path: Path, tiny_model_dir: Path, pairs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_run_config(tmp_path, tiny_model_dir, pairs_file, max_steps=4, live=False)
    path = write_yaml(tmp_path / "run.yaml", config)
    flags = ["--kl_monitor_metric", "logratio/rejected", "--kl_warn_above=-1e9", "--kl_stop_above=-1e9"]
    rc, out, err = run_cli(["run", "--config", str(path), *flags], capsys)
    assert rc == 0, err
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1  # any value is above -1e9: stopped after the first logged step
    assert any("kl_monitor/stopped" in entry for entry in state["log_history"])
    assert "KL monitor  logratio/rejected: warn > -1.000e+09, stop > -1.000e+09" in out
    assert "logratio/rejected rose above warn above = -1.000e+09 at step 1" in " ".join(out.split())


@pytest.mark.slow
def test_losses_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(["losses"], capsys)
    assert rc == 0
    for name in ("sigmoid", "cdpo", "ipo"):
        assert f"│ {name} " in out
    assert "Also accepted, computed by TRL itself:" in out and "hinge" in out


@pytest.fixture(scope="module")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache for the builtin model, fresh for this test session and shared with tests/test_examples.py."""
    return tmp_path_factory.getbasetemp() / "builtin-model-cache"


@pytest.mark.slow
def test_embedded_default_builds_then_reuses_the_model(
    tmp_path: Path, builtin_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRL_CONSERVATIVE_CACHE", str(builtin_cache))
    args = [
        "run",
        "--max_steps",
        "2",
        "--eval_steps",
        "2",
        "--output_dir",
        str(tmp_path / "a"),
        "--plot",
        "false",
    ]
    fresh = not any(builtin_cache.glob("tiny-arithmetic-*/config.json"))  # another test may have built it
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    assert ("Building the tiny model" in out) == fresh
    built = list(builtin_cache.glob("tiny-arithmetic-*/config.json"))
    assert len(built) == 1
    args[6] = str(tmp_path / "b")
    rc, out, err = run_cli(args, capsys)
    assert rc == 0, err
    assert "Building the tiny model" not in out
    assert "data       builtin:arithmetic (640 train, 160 held-out pairs)" in out


@pytest.mark.slow
def test_embedded_default_learns(
    tmp_path: Path, builtin_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's main command: held-out reward accuracy ends clearly above chance (0.5)."""
    monkeypatch.setenv("TRL_CONSERVATIVE_CACHE", str(builtin_cache))
    rc, out, err = run_cli(["run", "--output_dir", str(tmp_path / "out"), "--plot", "false"], capsys)
    assert rc == 0, err
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_rewards/accuracies" in e]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 200
    assert evals[-1]["eval_rewards/accuracies"] >= 0.7, evals
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]
    assert "Held-out preference accuracy" in out
    # Clean data read as clean: no list of "mislabeled" pairs, the estimate says no (or negligible) label noise.
    noise = json.loads((tmp_path / "out" / "run_summary.json").read_text())["label_noise"]
    assert noise["scored"] == 640 and (noise["low"] == 0 or noise["high"] < 0.02), noise
    assert "Label noise: no evidence" in out or "Label noise: negligible" in out
    assert "mislabeled" not in out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_cpu_run(tmp_path: Path, tiny_model_dir: Path, pairs_file: Path) -> None:
    config = small_run_config(tmp_path, tiny_model_dir, pairs_file, per_device_train_batch_size=2, live=False)
    path = write_yaml(tmp_path / "run.yaml", config)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "trl_conservative.cli", "run", "--config", str(path),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["settings"]["world_size"] == 2
    assert summary["global_step"] == 2
    assert (
        proc.stdout.count("trl-conservative run report") == 1
    )  # the main process reports, the other does not
