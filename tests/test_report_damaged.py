"""`trl-conservative report` on damaged and foreign run folders (issue 20 family 7): one line naming the file and
the damage (exit 2) where the report's own data is damaged; where only an optional part is, the report renders what
it can and says what it could not read; it never states something false. Also: the files a run writes under a
umask (family 8), and a folder stock TRL wrote."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finished_run import SUSPECTS, copy_run, finished_run, flat, report

from trl_conservative.errors import ConfigError
from trl_conservative.report.summary import NOT_RECORDED, RunSummary

pytestmark = pytest.mark.slow  # the module's run folder trains a tiny model once (about 30 s)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return finished_run(tmp_path_factory, tiny_model_dir)


@pytest.fixture
def copy(run_dir: Path, tmp_path: Path) -> Path:
    return copy_run(run_dir, tmp_path / "run")


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def one_error_line(status: int, err: str, *phrases: str) -> str:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def setting(key: str, value: Any) -> Callable[[Any], None]:
    return lambda data: data["settings"].__setitem__(key, value)


def entry(key: str, value: Any) -> Callable[[Any], None]:
    return lambda data: data["log_history"][0].__setitem__(key, value)


# --- the report's own data damaged: one line, exit 2 ------------------------------------------------------------
JSON_DAMAGE: list[tuple[str, str, Callable[[Path], None], list[str]]] = [
    (
        "summary-str-for-number",
        "run_summary.json",
        lambda p: edit_json(p, setting("beta", "0.1x")),
        ["run_summary.json", "settings.beta is text '0.1x' where a number belongs"],
    ),
    (
        "summary-dict-for-list",
        "run_summary.json",
        lambda p: edit_json(p, setting("loss_type", {"name": "cdpo"})),
        ["settings.loss_type is a JSON object", "where a list of text values belongs"],
    ),
    (
        "summary-list-for-number",
        "run_summary.json",
        lambda p: edit_json(p, setting("seed", [42])),
        ["settings.seed is a list [42] where a whole number or null belongs"],
    ),
    (
        "summary-bool-for-number",
        "run_summary.json",
        lambda p: edit_json(p, setting("learning_rate", True)),
        ["settings.learning_rate is the value true"],
    ),
    (
        "summary-weights-of-text",
        "run_summary.json",
        lambda p: edit_json(p, setting("loss_weights", ["1"])),
        ["settings.loss_weights is a list"],
    ),
    (
        "summary-kl-monitor-threshold",
        "run_summary.json",
        lambda p: edit_json(p, setting("kl_monitor", {"metric": "kl/exact", "warn_above": "high"})),
        ["settings.kl_monitor.warn_above is text 'high'"],
    ),
    (
        "summary-settings-a-list",
        "run_summary.json",
        lambda p: edit_json(p, lambda d: d.__setitem__("settings", [1, 2])),
        ["settings is a list [1, 2] where a JSON object belongs"],
    ),
    (
        "summary-no-settings",
        "run_summary.json",
        lambda p: edit_json(p, lambda d: d.pop("settings")),
        ["it has no settings"],
    ),
    (
        "summary-a-list",
        "run_summary.json",
        lambda p: p.write_text("[1, 2]"),
        ["run_summary.json' holds a list [1, 2] where a JSON object belongs"],
    ),
    (
        "summary-not-utf8",
        "run_summary.json",
        lambda p: p.write_bytes(p.read_bytes().replace(b'"cdpo"', b'"cd\xffo"')),
        ["run_summary.json' is not UTF-8 text: byte 0xff at offset"],
    ),
    (
        "summary-truncated",
        "run_summary.json",
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        ["run_summary.json' is not valid JSON", "cut off"],
    ),
    ("summary-emptied", "run_summary.json", lambda p: p.write_bytes(b""), ["run_summary.json' is empty"]),
    (
        "state-dict-for-list",
        "trainer_state.json",
        lambda p: edit_json(p, lambda d: d.__setitem__("log_history", {"loss": 0.5})),
        ["trainer_state.json", "log_history is a JSON object", "where a list of log entries belongs"],
    ),
    (
        "state-str-for-number",
        "trainer_state.json",
        lambda p: edit_json(p, entry("loss", "0.69")),
        ["log_history[0]['loss'] is text '0.69' where a number belongs"],
    ),
    (
        "state-step-not-a-number",
        "trainer_state.json",
        lambda p: edit_json(p, entry("step", "one")),
        ["log_history[0]['step'] is text 'one' where a whole number belongs"],
    ),
    (
        "state-entry-a-list",
        "trainer_state.json",
        lambda p: edit_json(p, lambda d: d["log_history"].__setitem__(1, [0.5])),
        ["log_history[1] is a list [0.5] where a JSON object belongs"],
    ),
    (
        "state-not-utf8",
        "trainer_state.json",
        lambda p: p.write_bytes(b"\xfe" + p.read_bytes()),
        ["trainer_state.json' is not UTF-8 text: byte 0xfe at offset 0 (line 1, column 1)"],
    ),
    (
        "state-truncated",
        "trainer_state.json",
        lambda p: p.write_bytes(p.read_bytes()[:-40]),
        ["trainer_state.json' is not valid JSON", "cut off", "checkpoint-N/trainer_state.json"],
    ),
    (
        "state-deleted",
        "trainer_state.json",
        lambda p: p.unlink(),
        ["trainer_state.json' is missing", "log_history", "checkpoint-2", "re-run the training"],
    ),
]


@pytest.mark.parametrize(("case", "name", "damage", "phrases"), JSON_DAMAGE, ids=[c[0] for c in JSON_DAMAGE])
def test_damage_to_the_reports_data_is_one_line(
    copy: Path, case: str, name: str, damage: Callable[[Path], None], phrases: list[str]
) -> None:
    damage(copy / name)
    status, _, err = report(copy)
    one_error_line(status, err, *phrases)
    with pytest.raises(ConfigError):
        RunSummary.load(copy)


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("not a folder")
    one_error_line(*report(tmp_path / "run")[::2], "is a file, not a folder")


# --- an optional part damaged: the report renders the rest and says what it could not read ---------------------
OPTIONAL_DAMAGE: list[tuple[str, Callable[[Path], None], list[str], list[str]]] = [
    (
        "label-noise-str-share",
        lambda d: edit_json(d / "run_summary.json", lambda s: s["label_noise"].__setitem__("share", "25%")),
        [
            "run_summary.json: label_noise.share is text '25%' where a number or null belongs",
            "estimate is left out",
        ],
        ["Label noise: about"],
    ),
    (
        "label-noise-a-list",
        lambda d: edit_json(d / "run_summary.json", lambda s: s.__setitem__("label_noise", [0.25])),
        ["label_noise is a list [0.25] where a JSON object or null belongs"],
        ["Label noise:"],
    ),
    (
        "flips-truncated",
        lambda d: (d / "suspected_flips.jsonl").write_bytes((d / "suspected_flips.jsonl").read_bytes()[:-30]),
        ["suspected_flips.jsonl line 3 is not valid JSON", "the list of suspected flips is left out"],
        ["listed in suspected_flips.jsonl"],
    ),
    (
        "flips-not-utf8",
        lambda d: (d / "suspected_flips.jsonl").write_bytes(
            b"\xff\xfe" + (d / "suspected_flips.jsonl").read_bytes()
        ),
        ["suspected_flips.jsonl is not UTF-8 text: byte 0xff at offset 0"],
        ["listed in suspected_flips.jsonl"],
    ),
    (
        "flips-str-score",
        lambda d: (d / "suspected_flips.jsonl").write_text(
            "".join(json.dumps({**s, "score": "low"}) + "\n" for s in SUSPECTS)
        ),
        ["suspected_flips.jsonl line 1: score is text 'low' where a number belongs"],
        ["listed in suspected_flips.jsonl"],
    ),
    (
        "flips-line-a-list",
        lambda d: (d / "suspected_flips.jsonl").write_text("[1, 2]\n"),
        ["suspected_flips.jsonl line 1 holds a list [1, 2] where a JSON object belongs"],
        ["listed in suspected_flips.jsonl"],
    ),
    (
        "flips-deleted",
        lambda d: (d / "suspected_flips.jsonl").unlink(),
        ["suspected_flips.jsonl is missing, though the run listed 3 pairs in it"],
        ["listed in suspected_flips.jsonl"],
    ),
    (
        "flips-cut-at-a-line",
        lambda d: (d / "suspected_flips.jsonl").write_text(json.dumps(SUSPECTS[0]) + "\n"),
        ["suspected_flips.jsonl holds 1 pairs, but the run listed 3"],
        [],
    ),
    (
        "model-weights-deleted",
        lambda d: (d / "model.safetensors").unlink(),
        ["has no weights file (model.safetensors; deleted since the run?)"],
        [],
    ),
    (
        "model-weights-truncated",
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
        ["has a weights file model.safetensors that is truncated"],
        [],
    ),
    (
        "model-config-deleted",
        lambda d: (d / "config.json").unlink(),
        ["has no config.json"],
        [],
    ),
    (
        "card-deleted",
        lambda d: (d / "README.md").unlink(),
        ["The model card", "README.md' is missing (deleted or moved since the run)"],
        [],
    ),
    (
        "curves-deleted",
        lambda d: (d / "training_curves.png").unlink(),
        ["The curves file", "training_curves.png' is missing"],
        [],
    ),
    (
        "summary-card-path-a-number",
        lambda d: edit_json(d / "run_summary.json", lambda s: s.__setitem__("model_card", 3)),
        [
            "run_summary.json: model_card is the number 3 where text or null belongs; read from the folder instead"
        ],
        ["(none)"],
    ),
    (
        "summary-step-a-string",
        lambda d: edit_json(d / "run_summary.json", lambda s: s.__setitem__("global_step", "2")),
        [
            "global_step is text '2' where a whole number belongs; read from trainer_state.json instead",
            "for 2/2 steps",
        ],
        [],
    ),
    (
        "summary-runtime-a-dict",
        lambda d: edit_json(d / "run_summary.json", lambda s: s.__setitem__("runtime_s", {"s": 3})),
        ["runtime_s is a JSON object", "the run time is read from the log only"],
        [],
    ),
    (
        "identity-deleted",  # not read by the report of a finished run: nothing to say
        lambda d: (d / "trl_conservative_run.json").unlink(),
        ["Warnings: none"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "damage", "phrases", "absent"), OPTIONAL_DAMAGE, ids=[c[0] for c in OPTIONAL_DAMAGE]
)
def test_damage_to_an_optional_part_is_said_and_the_rest_rendered(
    copy: Path, case: str, damage: Callable[[Path], None], phrases: list[str], absent: list[str]
) -> None:
    damage(copy)
    status, out, err = report(copy)
    assert status == 0 and err == "", err
    text = flat(out)
    assert "loss cdpo" in text and "beta, eps 0.1, 0.1" in text  # the rest of the report is there
    assert "eval_loss" in text
    for phrase in phrases:
        assert phrase in text, (phrase, text)
    for phrase in absent:
        assert phrase not in text, (phrase, text)


def test_the_undamaged_copy_reports_the_list_and_no_notes(copy: Path) -> None:
    status, out, err = report(copy)
    text = flat(out)
    assert status == 0 and err == ""
    assert "3 of 3 listed in suspected_flips.jsonl" in text
    assert "Label noise: about 5 of 20 pairs look flipped" in text
    assert "Warnings: none" in text
    assert f"model {copy}" in text and f"model card {copy}/README.md" in text


def test_a_run_whose_summary_is_missing_reads_its_settings_from_the_identity_record(copy: Path) -> None:
    (copy / "run_summary.json").unlink()
    status, out, err = report(copy)
    text = flat(out)
    assert status == 0 and err == "", err
    assert "run_summary.json is missing (the run did not finish, or the file was deleted)" in text
    assert "loss cdpo" in text and "beta, eps 0.1, 0.1" in text and "seed 42" in text
    assert "lr not recorded" in text
    for false in ("loss ?", "nan", "seed None", "(not saved)"):
        assert false not in text, false


# --- a folder stock TRL wrote -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A plain `trl.DPOTrainer` output: trained, `save_model`, `create_model_card`, `trainer_state.json`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trl_conservative.demo.tiny import tiny_preference_rows
    from trl_conservative.testing import tiny_config

    out = tmp_path_factory.mktemp("stock") / "out"
    args = tiny_config(out, config_class=DPOConfig, max_steps=2, beta=0.3, seed=7, save_strategy="no")
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=Dataset.from_list(tiny_preference_rows(16, seed=0)),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(model_name="stock", dataset_name="org/pairs")
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    return out


def test_a_stock_trl_folder_reports_what_it_holds_and_not_recorded_for_the_rest(stock_dir: Path) -> None:
    assert {"trainer_state.json", "model.safetensors", "README.md", "training_args.bin"} <= {
        p.name for p in stock_dir.iterdir()
    }
    status, out, err = report(stock_dir)
    text = flat(out)
    assert status == 0 and err == "", err
    for false in (
        "loss ?",
        "nan",
        "seed None",
        "(not saved)",
        "model card (none)",
        "install the `plot` extra",
    ):
        assert false not in text, (false, text)
    assert "loss not recorded" in text and "beta, eps not recorded, not recorded" in text
    assert "lr not recorded, seed not recorded" in text
    assert "data org/pairs" in text  # from the model card's front matter
    assert "weights saved as float32" in text  # from config.json
    assert f"model {stock_dir}" in text and f"model card {stock_dir}/README.md" in text
    assert "for 2/2 steps" in text
    assert "No run_summary.json: a folder trl-conservative run did not write" in text
    assert "Read from trainer_state.json, config.json, README.md" in text


def test_a_stock_adapter_folder_names_the_base_model_and_the_adapter(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    state = {"global_step": 3, "max_steps": 3, "log_history": [{"step": 3, "loss": 0.5}]}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "base_model_name_or_path": "org/base-1b"})
    )
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, str(folder / "adapter_model.safetensors"))
    (folder / "README.md").write_text(
        "---\nbase_model: org/base-1b\ndatasets:\n- org/a\n- org/b\n---\n- TRL: 1.16.0\n"
    )
    summary = RunSummary.load(folder)
    assert summary.settings.model == "org/base-1b" and summary.settings.peft == "LoRA r=8, alpha=16"
    assert summary.settings.dataset == "org/a, org/b" and summary.settings.trl_version == "1.16.0"
    assert summary.model_dir == str(folder) and summary.global_step == 3
    text = flat(report(folder)[1])
    assert "model org/base-1b (LoRA r=8, alpha=16), precision not recorded" in text


def test_not_recorded_reads_as_such_and_computes_as_nan() -> None:
    from trl_conservative.report.formatting import fmt_number

    assert fmt_number(NOT_RECORDED) == "not recorded" and f"seed {NOT_RECORDED}" == "seed not recorded"
    assert str(NOT_RECORDED) == repr(NOT_RECORDED) == "not recorded"
    assert NOT_RECORDED != NOT_RECORDED  # NaN: never equal to a recorded value


def test_the_identity_file_name_matches_the_one_runs_write() -> None:
    from trl_conservative.reliability.output_dir import IDENTITY_FILE
    from trl_conservative.report import summary

    assert summary._IDENTITY_FILE == IDENTITY_FILE


# --- family 8 end to end: what a run writes gets the umask's modes ----------------------------------------------
def test_files_a_run_writes_get_the_mode_open_gives_under_the_umask(run_dir: Path) -> None:
    """The module's run was made under umask 0o027: every report file and the final model 0o640, folders 0o750."""
    written = [
        "run_summary.json",
        "trainer_state.json",
        "trl_conservative_run.json",
        "README.md",
        "training_curves.png",
        "model.safetensors",
        "config.json",
    ]
    for name in written:
        assert oct(stat.S_IMODE((run_dir / name).stat().st_mode)) == oct(0o640), name
    # Every other file and folder too, the checkpoints' (written by transformers and torch) included.
    modes = {str(p.relative_to(run_dir)): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*")}
    wrong = {name: oct(m) for name, m in modes.items() if m != (0o750 if (run_dir / name).is_dir() else 0o640)}
    assert any(name.startswith("checkpoint-") for name in modes) and not wrong, wrong
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".trl-conservative-tmp-")]
    assert os.access(run_dir, os.R_OK)
