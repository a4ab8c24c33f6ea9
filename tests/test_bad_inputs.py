"""The catalogue of bad inputs (docs/bad-inputs.md): each one exits with status 2 and one line naming the problem
and the fix, and leaves the output folder as it was.

Every case runs `trl-conservative run` in this process on a tiny local model; none trains. A few cases run the
console script in a subprocess too, to check the one line a user actually sees on stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs

from trl_conservative.cli import main
from trl_conservative.demo.tiny import tiny_preference_rows
from trl_conservative.reliability.output_dir import IDENTITY_FILE


@dataclass
class Ctx:
    """A case's workspace: a valid base config it may change, and helpers to write files."""

    tmp: Path
    model: Path
    config: dict[str, Any] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # command-line flags after --config

    @property
    def out(self) -> Path:
        return Path(self.config["output_dir"])

    def jsonl(self, rows: list[dict[str, Any]], name: str = "pairs.jsonl") -> str:
        path = self.tmp / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    def rows(self, n: int = 8) -> list[dict[str, Any]]:
        return tiny_preference_rows(n, seed=0)


Setup = Callable[[Ctx], None]


@dataclass
class Case:
    id: str
    setup: Setup
    expect: tuple[str, ...]
    plugins: dict[str, str] = field(default_factory=dict)  # entry-point name -> module source
    raw_yaml: str | None = None  # written as is instead of the config mapping


def _set(**values: Any) -> Setup:
    def setup(ctx: Ctx) -> None:
        ctx.config.update(values)

    return setup


def _flags(*flags: str) -> Setup:
    def setup(ctx: Ctx) -> None:
        ctx.extra.extend(flags)

    return setup


def _data(make_rows: Callable[[Ctx], list[dict[str, Any]]], **values: Any) -> Setup:
    def setup(ctx: Ctx) -> None:
        ctx.config["dataset_name"] = ctx.jsonl(make_rows(ctx))
        ctx.config.update(values)

    return setup


def _with_row(index: int, **changes: Any) -> Callable[[Ctx], list[dict[str, Any]]]:
    def make(ctx: Ctx) -> list[dict[str, Any]]:
        rows = ctx.rows()
        rows[index] = {k: v for k, v in {**rows[index], **changes}.items() if v is not _DROP}
        return rows

    return make


_DROP = object()


# --- plugins for the plugin-fault cases: installed as real entry points (a *.dist-info on sys.path) -----------
_HOOK_RAISES = """
from trl_conservative import hookimpl

@hookimpl
def register_losses(register):
    raise RuntimeError("cannot find my CUDA kernel")
"""
_IMPORT_FAILS = "import trl_conservative_missing_dependency_xyz\n"
_LOSS = """
from trl_conservative import LossParam, hookimpl

class Margin:
    name = "{name}"
    params = (LossParam(name="margin", type=float, default=1.0, help="hinge margin"),)

    def __call__(self, inputs):
        raise AssertionError("not trained in these tests")

class NotALoss:
    def __call__(self, inputs):
        raise AssertionError

@hookimpl
def register_losses(register):
    register({what})
"""


def _install(root: Path, plugins: dict[str, str]) -> None:
    """Install one fake distribution whose entry points are `plugins` (entry-point name -> module source)."""
    info = root / "fake_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    lines = "".join(f"{name} = fake_plugin_{name}\n" for name in plugins)
    (info / "entry_points.txt").write_text("[trl_conservative]\n" + lines)
    for name, source in plugins.items():
        (root / f"fake_plugin_{name}.py").write_text(source)


@contextlib.contextmanager
def _installed(root: Path, plugins: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from trl_conservative.registry import DISABLE_ENV, reset_registry

    if not plugins:
        yield
        return
    _install(root, plugins)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    reset_registry()
    try:
        yield
    finally:
        for name in plugins:
            sys.modules.pop(f"fake_plugin_{name}", None)
        reset_registry()


# --- output folders --------------------------------------------------------------------------------------------
def _different_run(ctx: Ctx) -> None:
    ctx.out.mkdir()
    (ctx.out / "model.safetensors").write_bytes(b"weights of the earlier run")
    identity = {
        "model": str(ctx.model),
        "dataset": ctx.config["dataset_name"],
        "loss_type": ["ipo"],
        "loss_weights": None,
        "loss_params": {},
        "beta": 0.1,
        "label_smoothing": 0.1,
        "seed": 7,
    }
    (ctx.out / IDENTITY_FILE).write_text(json.dumps(identity))


def _foreign_files(ctx: Ctx) -> None:
    ctx.out.mkdir()
    (ctx.out / "config.json").write_text("{}")
    (ctx.out / "README.md").write_text("my notes")


def _output_is_file(ctx: Ctx) -> None:
    ctx.out.write_text("not a folder")


def _cut_off_checkpoint(ctx: Ctx) -> None:
    checkpoint = ctx.out / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"half")
    ctx.extra += ["--resume_from_checkpoint", str(checkpoint)]


def _text_file(ctx: Ctx) -> None:
    (ctx.tmp / "pairs.txt").write_text("1+2= 3 4\n")
    ctx.config["dataset_name"] = str(ctx.tmp / "pairs.txt")


def _custom_code_model(ctx: Ctx) -> None:
    import shutil

    model = ctx.tmp / "custom-model"
    shutil.copytree(ctx.model, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "custom-tiny"
    config["auto_map"] = {"AutoConfig": "configuration_custom.C", "AutoModelForCausalLM": "modeling_custom.M"}
    (model / "config.json").write_text(json.dumps(config))
    marker = ctx.tmp / "REMOTE_CODE_RAN"
    for module in ("configuration_custom", "modeling_custom"):
        (model / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    ctx.config["model_name_or_path"] = str(model)


def _truncated_checkpoint(ctx: Ctx) -> None:
    checkpoint = ctx.out / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    shutil.copy(ctx.model / "model.safetensors", checkpoint / "model.safetensors")
    with open(checkpoint / "model.safetensors", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    (checkpoint / "trainer_state.json").write_text("{}")
    ctx.extra += ["--resume_from_checkpoint", str(checkpoint)]


def _truncated_model(ctx: Ctx) -> None:
    model = ctx.tmp / "copied-model"
    shutil.copytree(ctx.model, model)
    with open(model / "model.safetensors", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 100)
    ctx.config["model_name_or_path"] = str(model)


def _bad_bytes_config(ctx: Ctx) -> None:
    path = ctx.tmp / "latin1.yaml"
    path.write_bytes(b"seed: 1\nbeta: \xff0.1\n")
    ctx.extra += ["--config", str(path)]


def _not_utf8_rows(ctx: Ctx) -> None:
    lines = [json.dumps(r).encode() for r in ctx.rows()]
    lines[2] = lines[2][:13] + b"\xff" + lines[2][13:]
    (ctx.tmp / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    ctx.config["dataset_name"] = str(ctx.tmp / "latin1.jsonl")


def _bad_json_line(ctx: Ctx) -> None:
    lines = [json.dumps(r) for r in ctx.rows()]
    lines[3] = "{oops"
    (ctx.tmp / "broken.jsonl").write_text("\n".join(lines) + "\n")
    ctx.config["dataset_name"] = str(ctx.tmp / "broken.jsonl")


def _folder_with_bad_line(ctx: Ctx) -> None:
    folder = ctx.tmp / "pairs"
    folder.mkdir()
    rows = [json.dumps(r) for r in ctx.rows()]
    (folder / "part-1.jsonl").write_text("\n".join(rows[:4]) + "\n")
    (folder / "part-2.jsonl").write_text("\n".join([rows[4], "]", *rows[5:]]) + "\n")
    ctx.config["dataset_name"] = str(folder)


def _gzip_named_jsonl(ctx: Ctx) -> None:
    import gzip

    path = ctx.tmp / "pairs.jsonl"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ctx.rows()).encode()))
    ctx.config["dataset_name"] = str(path)


def _folder_splits_differ(ctx: Ctx) -> None:
    folder = ctx.tmp / "splits"
    folder.mkdir()
    rows = ctx.rows()
    chat = [{k: [{"role": "user" if k == "prompt" else "assistant", "content": v}] for k, v in r.items()} for r in rows]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    ctx.config["dataset_name"] = str(folder)


def _folder_file_types_differ(ctx: Ctx) -> None:
    folder = ctx.tmp / "splits"
    folder.mkdir()
    rows = ctx.rows()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.csv").write_text("prompt,chosen,rejected\n" + "".join(f"{r['prompt']},1,2\n" for r in rows))
    ctx.config["dataset_name"] = str(folder)


def _as_chat(row: dict[str, Any]) -> dict[str, Any]:
    def turn(role: str, content: str) -> list[dict[str, str]]:
        return [{"role": role, "content": content}]

    return {"prompt": turn("user", row["prompt"]), "chosen": turn("assistant", row["chosen"]),
            "rejected": turn("assistant", row["rejected"])}  # fmt: skip


def _chat(index: int | None = None, **changes: Any) -> Callable[[Ctx], list[dict[str, Any]]]:
    def make(ctx: Ctx) -> list[dict[str, Any]]:
        rows = [_as_chat(r) for r in ctx.rows()]
        for i in range(len(rows)) if index is None else [index]:
            rows[i] = {**rows[i], **changes}
        return rows

    return make


def _implicit_user_only(ctx: Ctx) -> list[dict[str, Any]]:
    rows = [_as_chat(r) for r in ctx.rows()]
    return [{"chosen": r["prompt"], "rejected": r["prompt"] + r["rejected"]} for r in rows]


def _text_and_chat(ctx: Ctx) -> list[dict[str, Any]]:
    rows = ctx.rows()
    return rows[:6] + [_as_chat(r) for r in rows[6:]]


CASES = [
    # YAML and the config file
    Case(
        "yaml-syntax",
        _set(),
        ("is not valid YAML at line 2", "Fix the syntax"),
        raw_yaml="beta: [0.1\nseed: 1\n",
    ),
    Case(
        "yaml-not-a-mapping",
        _set(),
        ("must hold a mapping of setting: value, got a list",),
        raw_yaml="- beta\n",
    ),
    Case(
        "yaml-python-tag",
        _set(),
        ("is not valid YAML", "python/object/apply"),
        raw_yaml="beta: !!python/object/apply:os.system ['touch PWNED']\n",
    ),
    Case(
        "yaml-unknown-key",
        _set(learning_rat=1e-3),
        ("Unknown setting 'learning_rat'", "Did you mean 'learning_rate'"),
    ),
    Case("yaml-env-not-mapping", _set(env=3), ("`env` in", "must be a mapping of VARIABLE: value")),
    Case("config-file-missing", _flags("--config", "missing.yaml"), ("'missing.yaml' does not exist",)),
    Case(
        "flag-unknown",
        _flags("--lerning_rate", "1e-3"),
        ("Unknown setting 'lerning_rate' on the command line",),
    ),
    Case("flag-bad-value", _flags("--learning_rate", "fast"), ("learning_rate", "'fast'", "run --help")),
    Case("flag-bad-bool", _flags("--nan_guard", "maybe"), ("--nan_guard", "got maybe", "true/false")),
    Case("eval-split-missing", _set(eval_strategy="steps"), ("has no split 'test'", "eval_strategy: 'no'")),
    # loss settings
    Case(
        "loss-unknown",
        _set(loss_type="cdpoo"),
        ("Unknown loss 'cdpoo'", "Did you mean 'cdpo'", "Fix loss_type"),
    ),
    Case("loss-beta-zero", _set(beta=0), ("beta must be a finite number > 0, got 0", "0.1")),
    Case("loss-label-smoothing", _set(label_smoothing=0.6), ("label_smoothing", "[0, 0.5), got 0.6")),
    Case(
        "loss-params-unknown",
        _set(loss_params={"gamma": 1}),
        ("Unknown loss_params key(s) 'gamma'", "accepts"),
    ),
    Case("loss-params-json", _flags("--loss_params", "{gamma"), ("loss_params must be a mapping or a JSON",)),
    Case(
        "loss-weights-count",
        _set(loss_type=["cdpo", "ipo"], loss_weights=[1.0]),
        ("loss_weights [1.0] has 1 weights for 2 losses ['cdpo', 'ipo']", "Give one weight per loss_type entry"),
    ),
    Case("kl-exact-steps", _set(kl_exact_steps=-1), ("kl_exact_steps must be an integer >= 0, got -1",)),
    # plugin faults
    Case(
        "plugin-hook-raises",
        _set(loss_type="simpo_x"),
        (
            "Unknown loss 'simpo_x'",
            "plugin 'broken'",
            "RuntimeError: cannot find my CUDA kernel",
            "reinstall",
        ),
        plugins={"broken": _HOOK_RAISES},
    ),
    Case(
        "plugin-import-fails",
        _set(loss_type="simpo_x"),
        ("plugin 'needsdep'", "failed to import 'fake_plugin_needsdep'", "distribution 'fake-plugins'"),
        plugins={"needsdep": _IMPORT_FAILS},
    ),
    Case(
        "plugin-duplicate-name",
        _set(),
        (
            "Loss 'cdpo' is registered twice",
            "fake-plugins (plugin 'dup')",
            "TRL_CONSERVATIVE_DISABLE_PLUGINS",
        ),
        plugins={"dup": _LOSS.format(name="cdpo", what="Margin()")},
    ),
    Case(
        "plugin-not-a-loss",
        _set(loss_type="margin_test"),
        ("Unknown loss 'margin_test'", "plugin 'nameless'", "which is not a loss"),
        plugins={"nameless": _LOSS.format(name="margin_test", what="NotALoss()")},
    ),
    Case(
        "plugin-param-type",
        _set(loss_type="margin_test", loss_params={"margin": "wide"}),
        ("loss_params['margin'] for loss 'margin_test'", "'wide'", "Set it to a float"),
        plugins={"margin": _LOSS.format(name="margin_test", what="Margin()")},
    ),
    # model
    Case(
        "model-missing",
        _set(model_name_or_path="./no/such/model"),
        ("does not exist", "Fix model_name_or_path"),
    ),
    Case(
        "model-not-saved", lambda ctx: _set(model_name_or_path=str(ctx.tmp))(ctx), ("is not a saved model",)
    ),
    Case("model-custom-code", _custom_code_model, ("ships its own Python code", "--trust_remote_code true")),
    # dataset files and rows
    Case("data-file-missing", _set(dataset_name="./missing.jsonl"), ("does not exist", "Fix dataset_name")),
    Case("data-file-type", lambda ctx: _text_file(ctx), ("unsupported type '.txt'",)),
    Case("data-empty-file", _data(lambda ctx: []), ("is empty",)),
    Case(
        "data-no-rejected-column",
        _data(lambda ctx: [{"prompt": r["prompt"], "chosen": r["chosen"]} for r in ctx.rows()]),
        ("no 'rejected' column", "rename yours"),
    ),
    Case(
        "row-missing-field",
        _data(_with_row(2, chosen=_DROP)),
        ("'chosen' is missing in row 2", "drop_bad_rows"),
    ),
    Case(
        "row-empty-field", _data(_with_row(1, rejected="")), ("'rejected' is empty in row 1", "1 of 8 rows")
    ),
    Case("row-empty-prompt", _data(_with_row(0, prompt="  ")), ("'prompt' is empty in row 0",)),
    Case(
        "row-not-text",
        _data(lambda ctx: [{**r, "chosen": i} for i, r in enumerate(ctx.rows())]),
        ("'chosen' is not text or chat messages (got int 0) in rows 0, 1, 2 and 5 more",),
    ),
    Case(
        "row-list-of-strings",
        _data(lambda ctx: [{**r, "rejected": [r["rejected"]]} for r in ctx.rows()]),
        ("'rejected' is not text or chat messages (got list",),
    ),
    Case(
        "row-identical",
        _data(
            lambda ctx: [{**r, "rejected": r["chosen"]} if i == 5 else r for i, r in enumerate(ctx.rows())]
        ),
        (
            "'chosen' is identical to 'rejected' in row 5",
            "make each pair's chosen and rejected answers differ",
        ),
    ),
    Case(
        "rows-all-truncated",
        _data(  # keep_start: TRL 1.16's only mode; TRL 0.2x's default keep_end would cut the prompts instead
            lambda ctx: [{**r, "prompt": "What is " * 5 + r["prompt"]} for r in ctx.rows()],
            max_length=16,
            truncation_mode="keep_start",
        ),
        ("every prompt is at least max_length=16 tokens long", "Raise max_length"),
    ),
    # the output folder and resuming
    Case(
        "output-different-run",
        _different_run,
        (
            "holds a different run: loss_type ['ipo'] (now ['cdpo']); seed 7 (now 42)",
            "--overwrite_output_dir true",
        ),
    ),
    Case(
        "output-foreign-files",
        _foreign_files,
        ("already holds files this run would overwrite (README.md, config.json)",),
    ),
    Case("output-is-a-file", _output_is_file, ("is a file, not a folder",)),
    Case("resume-nothing-to-resume", _flags("--resume", "true"), ("holds no complete checkpoint-N folder",)),
    Case(
        "resume-cut-off-checkpoint", _cut_off_checkpoint, ("has no trainer_state.json (the save was cut off",)
    ),
    Case(
        "resume-both-flags",
        lambda ctx: _flags("--resume", "true", "--resume_from_checkpoint", str(ctx.tmp))(ctx),
        ("give one of them",),
    ),
    Case(
        "resume-truncated-weights",
        _truncated_checkpoint,
        ("has a weights file model.safetensors that is truncated",),
    ),
    # round two (issue 15): types, ranges, combinations, files named precisely, trainer-build errors
    Case(
        "yaml-duplicate-key",
        _set(),
        ("sets 'beta' twice (again at line 2)",),
        raw_yaml="beta: 0.1\nbeta: 0.2\n",
    ),
    Case("yaml-float-for-int", _set(max_steps=2.5), ("max_steps must be an integer, got a float 2.5",)),
    Case("yaml-choice", _set(dtype="float99"), ("dtype must be one of", "got 'float99'")),
    Case(
        "yaml-env-list", _set(env={"TRL_CONSERVATIVE_DISABLE_PLUGINS": ["rdpo"]}), ("must be one text value",)
    ),
    Case(
        "config-not-utf8",
        _bad_bytes_config,
        ("is not UTF-8 text: byte 0xff at offset 14 (line 2, column 7)",),
    ),
    Case(
        "config-is-a-folder", lambda ctx: _flags("--config", str(ctx.tmp))(ctx), ("is a folder, not a file",)
    ),
    Case(
        "range-batch-size",
        _set(per_device_train_batch_size=0),
        ("per_device_train_batch_size must be an integer >= 1",),
    ),
    Case(
        "range-learning-rate",
        _flags("--learning_rate", "-1e-5"),
        ("learning_rate must be a number > 0, got -1e-05",),
    ),
    Case("range-max-length", _set(max_length=-3), ("max_length must be an integer >= 1, got -3",)),
    Case("range-seed", _set(seed=-1), ("seed must be an integer in [0, 2**32), got -1",)),
    Case("output-dir-empty", _flags("--output_dir", ""), ("output_dir must be a folder path, got ''",)),
    Case(
        "loss-weights-zero", _set(loss_weights=[0.0]), ("loss_weights must be a list of finite weights > 0",)
    ),
    Case("loss-weights-negative", _set(loss_weights=[-1.0]), ("a negative one ascends the loss",)),
    Case(
        "loss-eps-ignored",
        _set(loss_type="ipo", label_smoothing=0.3),
        ("label_smoothing 0.3 has no effect on loss_type ['ipo']", "Set label_smoothing: 0"),
    ),
    Case(
        "kl-metric-not-logged",
        _set(kl_monitor_metric="kl/exakt", kl_warn_above=0.1),
        ("kl_monitor_metric 'kl/exakt' is not logged by this run", "Did you mean 'kl/exact'"),
    ),
    Case("zero-steps", _set(max_steps=-1, num_train_epochs=0), ("0 training steps",)),
    Case(
        "test-split-is-train",
        _set(eval_strategy="steps", dataset_test_split="train"),
        ("dataset_test_split 'train' is the train split",),
    ),
    Case(
        "test-split-size-empties",
        _set(eval_strategy="steps", test_split_size=0.99),
        ("test_split_size 0.99",),
    ),
    Case("data-not-utf8", _not_utf8_rows, ("is not UTF-8 text: byte 0xff", "(line 3, column 14)")),
    Case(
        "data-bad-json-line",
        _bad_json_line,
        ("line 4, column 2 is not valid JSON", "fix or remove that line"),
    ),
    Case(
        "data-folder-bad-line", _folder_with_bad_line, ("part-2.jsonl' line 2, column 1 is not valid JSON",)
    ),
    # issue 20 family 6: files whose bytes or whose folder's other files are not what the name says
    Case(
        "data-compressed-misnamed",
        _gzip_named_jsonl,
        ("pairs.jsonl' is gzip-compressed, not JSON lines text", "Rename it to 'pairs.jsonl.gz'"),
    ),
    Case(
        "data-folder-formats-differ",
        _folder_splits_differ,
        ("its data files differ in format: column 'prompt' holds text in 'train.jsonl' (line 1) but chat messages in "
         "'test.jsonl' (line 1)", "make 'test.jsonl' match 'train.jsonl'"),
    ),  # fmt: skip
    Case(
        "data-folder-file-types",
        _folder_file_types_differ,
        ("holds data files of different types: 'train.jsonl' (JSON), 'test.csv' (CSV)", "convert them to one type"),
    ),
    # issue 20 family 5: chat rows
    Case(
        "chat-completion-not-assistant",
        _data(_chat(3, chosen=[{"role": "user", "content": "What else?"}])),
        ("'chosen' has a 'user' turn (turn 0) in row 3, where only the answer's assistant turns belong",
         "drop_bad_rows=true to drop these 1 of 8 rows"),
    ),  # fmt: skip
    Case(
        "chat-unknown-role",
        _data(_chat(1, prompt=[{"role": "human", "content": "1+1="}])),
        ("'prompt' has a turn with the unknown role 'human' (turn 0) in row 1", "system, developer, user, assistant"),
    ),
    Case(
        "chat-implicit-no-answer",
        _data(_implicit_user_only),
        ("'chosen' holds no answer after the opening turns it shares with the other in rows 0, 1, 2 and 5 more",),
    ),
    Case(
        "chat-bad-message",
        _data(_chat(2, rejected=[{"role": "assistant", "content": {"text": "4"}}])),
        ("'rejected' has a message that is not a {'role', 'content'} mapping with text content (turn 0: ", "row 2"),
    ),
    Case(
        "data-mixed-text-chat",
        _data(_text_and_chat),
        ("the split mixes plain-text rows and chat-message rows (text in rows 0, 1, 2 and 3 more; chat messages in "
         "rows 6, 7)", "drop these 2 of 8 rows"),
    ),  # fmt: skip
    # issue 20 family 6: the other columns TRL reads
    Case(
        "column-tools-not-json",
        _data(lambda ctx: [{**r, "tools": "{not json" if i == 2 else None} for i, r in enumerate(_chat()(ctx))]),
        ("'tools' is not a list of tool definitions (got str '{not json': not valid JSON", "in row 2"),
    ),  # fmt: skip
    Case(
        "column-ref-logps-text",
        _data(_chat(ref_chosen_logps="-12.5", ref_rejected_logps=-14.0)),
        ("'ref_chosen_logps' is not a log-probability (a finite number <= 0) (got str '-12.5') in rows 0, 1, 2",),
    ),
    Case(
        "column-ref-logps-alone",
        _data(_chat(ref_chosen_logps=-12.5)),
        ("has a 'ref_chosen_logps' column but no 'ref_rejected_logps' column",),
    ),
    Case(
        "column-template-kwargs",
        _data(_chat(chat_template_kwargs="enable_thinking")),
        ("'chat_template_kwargs' is not a mapping of keyword: value (got str 'enable_thinking')",),
    ),
    Case(
        "model-is-a-file",
        lambda ctx: _set(model_name_or_path=ctx.jsonl(ctx.rows()))(ctx),
        ("is a file, not a folder",),
    ),
    Case("model-truncated-weights", _truncated_model, ("model.safetensors' is truncated",)),
    Case(
        "trainer-build-error",
        _set(use_peft=True, lora_target_modules=["no_such_proj"]),
        ("These settings could not build the trainer", "no_such_proj"),
    ),
]


def _digest(path: Path) -> Any:
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in path.rglob("*")
        if p.is_file()
    }


def _base_config(tmp: Path, model: Path) -> dict[str, Any]:
    return tiny_run_settings(model, write_pairs(tmp / "base.jsonl"), tmp / "out")


def _prepare(case: Case, tmp: Path, model: Path) -> list[str]:
    ctx = Ctx(tmp=tmp, model=model, config=_base_config(tmp, model))
    case.setup(ctx)
    config_file = tmp / "run.yaml"
    config_file.write_text(case.raw_yaml if case.raw_yaml is not None else yaml.safe_dump(ctx.config))
    config_flag = [] if "--config" in ctx.extra else ["--config", str(config_file)]
    return ["run", *config_flag, *ctx.extra]


def test_the_catalogue_has_at_least_25_cases_and_lists_them_all() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)
    catalogue = (Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in catalogue]
    assert not missing, f"docs/bad-inputs.md does not list: {missing}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_loses_nothing(
    case: Case,
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the cases, and where a `touch PWNED` would land
    argv = _prepare(case, tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    before = _digest(out)
    with _installed(tmp_path / "site-packages", case.plugins, monkeypatch):
        rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), err
    for fragment in case.expect:
        assert fragment in lines[0], lines[0]
    assert _digest(out) == before  # nothing written, nothing overwritten
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "REMOTE_CODE_RAN").exists()


@contextlib.contextmanager
def _read_only_folder(path: Path) -> Iterator[None]:
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    # root ignores permission bits: only a read-only file system stops it.
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("inside", [False, True], ids=["folder-itself", "folder-inside"])
def test_read_only_output_folder(
    inside: bool, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    with _read_only_folder(locked):
        output_dir = locked / "run" if inside else locked
        config = {**_base_config(tmp_path, tiny_model_dir), "output_dir": str(output_dir)}
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        rc = main(["run", "--config", str(tmp_path / "run.yaml")])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.count("\n") == 1 and f"output_dir {str(output_dir)!r} is not writable" in err, err
        assert "Choose a folder you can write to" in err
        assert list(locked.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "case_id",
    ["yaml-unknown-key", "plugin-hook-raises", "model-custom-code", "row-identical", "output-different-run"],
)
def test_console_script_prints_exactly_one_line(case_id: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """What the user sees: stderr of the real console script, library logging and plugin warnings included."""
    case = next(c for c in CASES if c.id == case_id)
    argv = _prepare(case, tmp_path, tiny_model_dir)
    site = tmp_path / "site-packages"
    if case.plugins:
        _install(site, case.plugins)
    result = subprocess.run(
        [sys.executable, "-m", "trl_conservative.cli", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(site), *sys.path])},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trl-conservative: error: "), result.stderr
