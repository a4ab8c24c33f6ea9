"""The suspected-flip list: pure scoring and mapping functions, the report section, and a real tiny run in which a
planted flipped pair comes out on top."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from trl_conservative.cli import main
from trl_conservative.report.console import RunReport, render_text
from trl_conservative.report.summary import RunSettings, RunSummary
from trl_conservative.report.suspected_flips import (
    SUSPECTED_FLIPS_FILE,
    LabelNoise,
    SuspectedFlip,
    preview,
    rank_suspects,
    read_suspected_flips,
    write_suspected_flips,
)
from trl_conservative.run.label_noise import row_positions
from trl_conservative.trainer.pair_scoring import pair_scores
from trl_conservative.trainer.trl_compat import TRL_STACK


def test_rank_suspects_lowest_first_ties_in_order_nan_skipped() -> None:
    scores = [0.5, -2.0, math.nan, -2.0, 3.0, -0.1]
    assert rank_suspects(scores, top=3) == [1, 3, 5]
    assert rank_suspects(scores, top=10) == [1, 3, 5, 0, 4]
    assert rank_suspects(scores, top=0) == []
    with pytest.raises(ValueError, match="-1"):
        rank_suspects(scores, top=-1)


def test_preview_is_one_short_line() -> None:
    assert preview("a\n  b\tc") == "a b c"
    assert preview("x" * 100, width=10) == "x" * 9 + "…"
    # Chat messages: the text of the last message (a completion's answer, a prompt's question), never the role.
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert preview(messages) == "(+1 turn) 4"
    assert preview([{"role": "assistant", "content": "The answer is  4."}]) == "The answer is 4."
    assert preview([{"role": "user", "content": [{"type": "text", "text": "Name it"}]}]) == "Name it"
    assert preview(None) == ""


def test_row_positions_follow_select_filter_and_split() -> None:
    from datasets import Dataset

    ds = Dataset.from_list([{"i": i} for i in range(10)])
    assert row_positions(ds) == list(range(10))
    kept = ds.filter(lambda r: r["i"] % 3 != 0)
    assert row_positions(kept) == [1, 2, 4, 5, 7, 8]
    split = kept.train_test_split(test_size=0.5, seed=0)["train"]
    assert [split[j]["i"] for j in range(len(split))] == row_positions(split)
    again = split.select([1, 0])
    assert row_positions(again) == [split[1]["i"], split[0]["i"]]


def test_file_round_trip(tmp_path: Path) -> None:
    flips = [
        SuspectedFlip(
            rank=1, index=7, flip_probability=0.9, score=-1.5, margin=None, step=3, prompt="p", chosen="ç",
            rejected="r",
        )
    ]  # fmt: skip
    path = write_suspected_flips(flips, tmp_path)
    assert path.name == SUSPECTED_FLIPS_FILE
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["index"] == 7
    assert read_suspected_flips(tmp_path) == flips
    assert read_suspected_flips(tmp_path / "nowhere") is None


def _summary(flips: list[dict[str, Any]] | None, noise: LabelNoise | None = None) -> RunSummary:
    settings = RunSettings(
        loss_type=["cdpo"], loss_weights=[1.0], beta=0.1, label_smoothing=0.1, loss_params={}, model="m",
        dataset="d",
    )  # fmt: skip
    return RunSummary(
        settings=settings, output_dir="out", suspected_flips=flips, suspected_flips_s=0.25,
        label_noise=None if noise is None else noise.to_json(),
    )  # fmt: skip


def _chat_flips(n: int) -> list[dict[str, Any]]:
    system = {"role": "system", "content": "You are a helpful assistant who answers in one sentence."}
    return [
        SuspectedFlip(
            rank=r, index=1000 + r, flip_probability=0.99 - r / 100, score=-12.345 - r, margin=-0.75, step=r,
            prompt=preview([system, {"role": "user", "content": f"What is the capital of country number {r}?"}]),
            chosen=preview([{"role": "assistant", "content": f"Wrongville{r} is the capital, as everyone knows."}]),
            rejected=preview([{"role": "assistant", "content": f"Rightcity{r} is the capital."}]),
        ).to_json()
        for r in range(1, 13)
    ]  # fmt: skip


NOISY = LabelNoise(share=0.15, low=0.09, high=0.22, scored=160, pairs=160, listed=12)


@pytest.mark.parametrize("width", [80, 120])
def test_report_section_reads_on_chat_data(width: int) -> None:
    text = render_text(RunReport(_summary(_chat_flips(12), NOISY)), width=width)
    assert "Label noise: about 24 of 160 pairs look flipped, 15.0% (95% interval 9.0%-22.0%)" in text
    assert "10 of 12 listed in suspected_flips.jsonl (0.2 s)" in " ".join(text.split())
    rows = [line for line in text.splitlines() if "1001" in line or "1010" in line]
    assert len(rows) == 2, text  # the row numbers never collapse
    first = rows[0]
    assert "0.98" in first and "-13.35" in first  # P(flip) and the score, whole
    assert "Wrongville1" in first and "Rightcity1" in first  # the answers, not the role
    assert "assistant" not in text
    assert "1011" not in text  # 10 rows shown
    assert "out/suspected_flips.jsonl" in text


@pytest.mark.parametrize("width", [80, 120])
def test_report_section_reads_on_text_data(width: int) -> None:
    flips = [
        SuspectedFlip(
            rank=r, index=r * 7, flip_probability=0.9, score=-float(r), margin=-0.5, step=1, prompt=f"{r}+4=",
            chosen=str(r + 5), rejected=str(r + 4),
        ).to_json()
        for r in range(1, 4)
    ]  # fmt: skip
    text = render_text(RunReport(_summary(flips, NOISY)), width=width)
    for r in range(1, 4):
        row = next(line for line in text.splitlines() if f"{r}+4=" in line)
        assert f" {r * 7} " in row and "0.90" in row and f"-{r}" in row
        assert f" {r + 5} " in row and f" {r + 4} " in row


def test_report_reads_as_clean_on_clean_data() -> None:
    clean = LabelNoise(share=0.0, low=0.0, high=0.01, scored=640, pairs=640, listed=0)
    text = render_text(RunReport(_summary([], clean)), width=100)
    assert "Label noise: no evidence of flipped labels: 0.0% of 640 pairs (95% interval 0.0%-1.0%)" in text
    assert "mislabeled" not in text and "P(flip)" not in text
    assert "Label noise" not in render_text(RunReport(_summary(None)), width=100)
    few = LabelNoise(share=0.003, low=0.0025, high=0.005, scored=640, pairs=640, listed=2)
    assert (
        "Label noise: negligible: 2 of 640 pairs look flipped, 0.3% (95% interval 0.2%-0.5%)"
        in render_text(RunReport(_summary([], few)), width=100)
    )
    undetermined = LabelNoise(share=0.0, low=0.0, high=0.3775, scored=128, pairs=128, listed=3)
    text = render_text(RunReport(_summary(_chat_flips(3), undetermined)), width=100)
    assert (
        "Label noise: undetermined: no evidence of flipped labels among 128 pairs, but up to 37.8% cannot be ruled "
        "out (95% interval 0.0%-37.8%)" in " ".join(text.split())
    )
    assert "weak evidence: not a count of flipped pairs" in " ".join(text.split())
    # A point estimate inside an interval from 0 is no count of flipped pairs: the headline does not print it.
    uncorroborated = LabelNoise(share=0.11, low=0.0, high=0.21, scored=128, pairs=128, listed=3)
    headline = " ".join(render_text(RunReport(_summary(_chat_flips(3), uncorroborated)), width=100).split())
    assert "up to 21.0% cannot be ruled out (95% interval 0.0%-21.0%)" in headline and "11.0%" not in headline
    unscored = LabelNoise(
        share=None, low=None, high=None, scored=0, pairs=12, note="only 12 pairs were scored"
    )
    assert "Label noise: not estimated (only 12 pairs were scored)" in render_text(
        RunReport(_summary([], unscored)), width=100
    )


def test_label_noise_json_round_trip_and_damage() -> None:
    assert LabelNoise.from_json(NOISY.to_json()) == NOISY
    assert NOISY.count == 24 and NOISY.verdict == "flipped"
    verdicts = {
        (0.0, 0.0, 0.04): "clean",
        (0.0, 0.0, 0.38): "undetermined",
        (0.003, 0.0025, 0.005): "negligible",
        (0.0, 0.0, 0.015): "clean",
        (0.1, 0.05, 0.2): "flipped",
    }
    for (share, low, high), verdict in verdicts.items():
        assert LabelNoise(share=share, low=low, high=high, scored=100, pairs=100).verdict == verdict
    assert LabelNoise(share=None, low=None, high=None, scored=0, pairs=5).verdict == "none"
    assert LabelNoise.from_json(None) is None and LabelNoise.from_json([1, 2]) is None


# --- the scores against an independent computation -----------------------------------------------------------
def _completion_logp(model: Any, prompt: list[int], completion: list[int]) -> float:
    """log p(completion | prompt), summed over the completion's tokens: one plain forward, no TRL code."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]
    return float(logp[len(prompt) - 1 :].gather(1, ids[0, len(prompt) :, None]).sum())


@pytest.mark.slow
@pytest.mark.parametrize("precompute", [False, True], ids=["reference-model", "precomputed-reference"])
def test_pair_scores_are_the_policy_and_reference_log_prob_margins(
    tmp_path: Path, tiny_model_dir: Path, precompute: bool
) -> None:
    from transformers import AutoModelForCausalLM

    from trl_conservative.testing import train_two_steps

    run = train_two_steps(
        "cdpo", tmp_path, label_smoothing=0.1, beta=0.2, model_dir=tiny_model_dir, max_steps=3,
        precompute_ref_log_probs=precompute,
    )  # fmt: skip
    trainer = run.trainer
    scores, margins = pair_scores(trainer, batch_size=5)  # batches of uneven width: padding must not count
    prompt_col, chosen_col, rejected_col = trainer.PAIR_COLUMNS
    rows = trainer.train_dataset
    assert len(scores) == len(margins) == len(rows) == 16
    assert ("ref_chosen_logps" in rows.column_names) == precompute  # TRL added them when training started
    policy = trainer.model.eval()
    reference = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir
    ).eval()  # the weights training started from
    for i in range(len(rows)):
        prompt, chosen, rejected = rows[i][prompt_col], rows[i][chosen_col], rows[i][rejected_col]
        policy_margin = _completion_logp(policy, prompt, chosen) - _completion_logp(policy, prompt, rejected)
        reference_margin = _completion_logp(reference, prompt, chosen) - _completion_logp(
            reference, prompt, rejected
        )
        assert scores[i] == pytest.approx(policy_margin, abs=1e-4), i
        assert margins[i] == pytest.approx(0.2 * (policy_margin - reference_margin), abs=1e-4), i
    assert any(abs(m) > 1e-3 for m in margins if m is not None)  # three steps moved the policy


# --- a real tiny run --------------------------------------------------------------------------------------
PLANTED = 17  # the flipped pair's row position in the file the user gives


def _rows() -> list[dict[str, str]]:
    """A task the tiny model learns in a few steps (answer "yes" over "no"), one planted flip, one row that
    `drop_bad_rows` removes and one prompt so long that TRL drops the row: `index` must still be the file's."""
    rows = [{"prompt": f"Is {i} a number? ", "chosen": "yes", "rejected": "no"} for i in range(40)]
    rows[PLANTED] = {"prompt": f"Is {PLANTED} a number? ", "chosen": "no", "rejected": "yes"}
    rows[3] = {"prompt": "Is 3 a number? ", "chosen": "", "rejected": "no"}  # dropped by drop_bad_rows
    rows[6] = {"prompt": "Is " + "6" * 60 + " a number? ", "chosen": "yes", "rejected": "no"}  # > max_length
    return rows


@pytest.mark.slow
def test_planted_flip_tops_the_list_of_a_real_run(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    config = {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "out"),
        "loss_type": "sigmoid", "beta": 0.1, "max_steps": 30, "per_device_train_batch_size": 8,
        "learning_rate": 1e-3, "logging_steps": 5, "eval_strategy": "no", "save_strategy": "no", "max_length": 32,
        "use_cpu": True, "bf16": False, "report_to": "none", "activation_checkpointing": False, "plot": False,
        "drop_bad_rows": True, "suspected_flips": 5, "suspected_flips_pass": True, "seed": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    flips = read_suspected_flips(tmp_path / "out")
    # The extra pass ranks by the trained policy's margin; only pairs it disagrees with (margin < 0) are listed.
    assert flips is not None and len(flips) == 1, flips
    assert flips[0].index == PLANTED and flips[0].score < 0, flips
    assert flips[0].margin is not None and flips[0].margin < 0  # the implicit-reward margin agrees
    assert flips[0].chosen == "no" and flips[0].rejected == "yes"
    assert flips[0].rank == 1 and flips[0].step is None
    # Row 3 was dropped by drop_bad_rows. Row 6's prompt fills max_length: TRL 1.16 drops it; TRL 0.2x keeps it,
    # its keep_end truncation cutting the prompt's start. Every index is the file's row either way.
    assert 3 not in {f.index for f in flips}
    if TRL_STACK == "fused_head":
        assert 6 not in {f.index for f in flips}
    assert all(f.prompt == preview(_rows()[f.index]["prompt"]) for f in flips)
    assert "Label noise" in out and f"Is {PLANTED} a number?" in out
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["suspected_flips_s"] > 0 and "suspected_flips" not in summary
    assert summary["label_noise"]["ranked_by"] == "after_training"
    assert main(["report", str(tmp_path / "out")]) == 0
    again = capsys.readouterr().out
    assert "Label noise" in again and f"Is {PLANTED} a number?" in again


@pytest.mark.slow
def test_index_survives_the_held_out_split(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datasets import Dataset

    rows = [r for i, r in enumerate(_rows()) if i not in (3, 6)]  # the planted flip stays at position 15
    planted = next(i for i, r in enumerate(rows) if r["chosen"] == "no")
    train = Dataset.from_list(rows).train_test_split(test_size=0.25, seed=0)["train"]
    assert any(r["chosen"] == "no" for r in train)  # the runner holds out with the same seed
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "out"),
        "loss_type": "cdpo", "label_smoothing": 0.1, "max_steps": 30, "per_device_train_batch_size": 8,
        "learning_rate": 1e-3, "eval_strategy": "steps", "eval_steps": 30, "test_split_size": 0.25,
        "save_strategy": "no", "max_length": 32, "use_cpu": True, "bf16": False, "report_to": "none",
        "plot": False, "seed": 0, "suspected_flips_pass": True,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    flips = read_suspected_flips(tmp_path / "out")
    assert flips is not None and len(flips) >= 1
    assert flips[0].index == planted and flips[0].chosen == "no", flips[:3]
    assert all(rows[f.index]["prompt"].strip() == f.prompt for f in flips)  # every index is the file's row
    capsys.readouterr()


@pytest.mark.slow
def test_zero_turns_the_pass_off(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()[7:20]))
    config = {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "out"),
        "max_steps": 1, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no",
        "max_length": 32, "use_cpu": True, "bf16": False, "report_to": "none", "plot": False,
        "suspected_flips": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    assert not (tmp_path / "out" / SUSPECTED_FLIPS_FILE).exists()
    out = capsys.readouterr().out
    assert "mislabeled" not in out and "Label noise" not in out
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["label_noise"] is None


# --- scores from training's own forwards ------------------------------------------------------------------------
@pytest.mark.slow
def test_training_records_each_pairs_margins_under_its_own_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With a learning rate too small to move a float32 weight (1e-30; 0 is refused as meaningless) the policy
    stays the reference: every recorded margin must equal a plain forward's
    margin of that very row (so rows are never mixed up, whatever the sampler's order), and the step-1 rows of a
    moving run too (the first step's forward runs before any update)."""
    from transformers import AutoModelForCausalLM

    from trl_conservative.testing import train_two_steps

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for lr in (1e-30, 1e-2):
        run = train_two_steps(
            "sigmoid", tmp_path / str(lr), model_dir=tiny_model_dir, max_steps=3, learning_rate=lr, beta=0.5,
        )  # fmt: skip
        trainer = run.trainer
        book = trainer.pair_scores.scores()
        prompt_col, chosen_col, rejected_col = trainer.PAIR_COLUMNS
        rows = trainer.train_dataset
        batch = int(trainer.args.per_device_train_batch_size)
        assert len(book) == min(len(rows), 3 * batch) and len({s.row for s in book}) == len(book)
        assert sorted({s.step for s in book}) == [1, 2, 3]
        for score in book:
            if lr > 1e-20 and score.step > 1:
                continue
            row = rows[score.row]
            margin = _completion_logp(reference, row[prompt_col], row[chosen_col]) - _completion_logp(
                reference, row[prompt_col], row[rejected_col]
            )
            assert score.policy_margin == pytest.approx(margin, abs=1e-4), score
            assert score.reference_margin == pytest.approx(margin, abs=1e-4), score
            assert score.implicit_margin(0.5) == pytest.approx(0.0, abs=1e-4)
            assert score.progress == pytest.approx(score.step / 3)


def _yes_no_rows(n: int, flipped: set[int]) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        chosen, rejected = ("no", "yes") if i in flipped else ("yes", "no")
        rows.append({"prompt": f"Is {i} a number? ", "chosen": chosen, "rejected": rejected})
    return rows


@pytest.mark.slow
def test_default_estimates_planted_flips_without_an_extra_pass(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The embedded default's task for one epoch with 20% of the pairs flipped: the estimate's interval covers the
    planted share and the list holds flipped pairs, from training's own forwards (no extra pass)."""
    from trl_conservative.demo.tasks import DATA_DIR, TRAIN_FILE, flip_labels, read_jsonl

    monkeypatch.setenv("TRL_CONSERVATIVE_CACHE", str(tmp_path_factory.getbasetemp() / "builtin-model-cache"))
    rows, flipped_rows = flip_labels(read_jsonl(DATA_DIR / TRAIN_FILE), 0.2, seed=0)
    flipped = set(flipped_rows)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model_name_or_path": "builtin:tiny-arithmetic", "dataset_name": str(data),
        "output_dir": str(tmp_path / "out"), "loss_type": "cdpo", "beta": 0.3, "label_smoothing": 0.1,
        "learning_rate": 3e-4, "num_train_epochs": 1, "per_device_train_batch_size": 32, "max_length": 16,
        "eval_strategy": "no", "save_strategy": "no", "use_cpu": True, "bf16": False, "report_to": "none",
        "activation_checkpointing": False, "plot": False, "seed": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    noise = json.loads((tmp_path / "out" / "run_summary.json").read_text())["label_noise"]
    assert noise["scored"] == 640 and noise["ranked_by"] == "training"
    assert 0.05 < noise["low"] <= 0.2 <= noise["high"] < 0.35, noise
    flips = read_suspected_flips(tmp_path / "out")
    assert flips is not None and len(flips) == 20  # the default cap
    assert sum(f.index in flipped for f in flips) >= 18, flips  # base rate 0.2
    assert all(f.flip_probability is not None and f.flip_probability > 0.5 for f in flips)
    assert all(f.step is not None and f.margin is not None for f in flips)
    assert "look flipped" in out and "P(flip)" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Label noise, estimated from the policy's margin" in card and "look flipped" in card


@pytest.mark.slow
def test_clean_data_read_as_clean_and_duplicates_are_never_listed(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _yes_no_rows(120, set())  # clean, and every pair alike: no evidence of flips whatever was learned
    rows += [dict(rows[5]) for _ in range(3)]  # a pair repeated: left out, counted once in a warning
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model_name_or_path": str(tiny_model_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "out"),
        "loss_type": "sigmoid", "beta": 0.1, "num_train_epochs": 1, "per_device_train_batch_size": 8,
        "learning_rate": 1e-3, "eval_strategy": "no", "save_strategy": "no", "max_length": 32, "use_cpu": True,
        "bf16": False, "report_to": "none", "activation_checkpointing": False, "plot": False, "seed": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    noise = json.loads((tmp_path / "out" / "run_summary.json").read_text())["label_noise"]
    assert noise["repeated"] == 4 and noise["scored"] == 119 and noise["low"] == 0.0, noise
    assert out.count("4 training pairs occur more than once") == 1
    assert "no evidence of flipped labels" in out
    assert read_suspected_flips(tmp_path / "out") == []


def test_an_undetermined_list_states_no_flip_probability() -> None:
    """The runner's step on a pretrained chat model's recorded scores (clean pairs, tests/flip_scores_fixture.json):
    the interval starts at 0, so the list holds the pairs the policy disagrees with most, by its margin, and gives
    none of them a P(flip) (a probability under a fit the run does not stand behind); the report then has no P(flip)
    column and still shows row, score and answers at 80 columns."""
    from types import SimpleNamespace

    from datasets import Dataset

    from trl_conservative.flips.scores import PairScores
    from trl_conservative.report.formatting import fmt_number
    from trl_conservative.run.label_noise import find_suspected_flips

    runs = json.loads((Path(__file__).with_name("flip_scores_fixture.json")).read_text())["runs"]
    scores = runs["real share=0.0 seed=0"]
    n = len(scores["policy"])
    book = PairScores()
    for row in range(n):
        step = max(1, round(scores["progress"][row] * 16))
        book.record([row], [scores["policy"][row]], [scores["reference"][row]], step=step, max_steps=16)
    columns = ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")
    tokenized = Dataset.from_dict(
        {columns[0]: [[1, row] for row in range(n)], columns[1]: [[2]] * n, columns[2]: [[3]] * n}
    )
    trainer = SimpleNamespace(
        train_dataset=tokenized, PAIR_COLUMNS=columns, pair_scores=book,
        args=SimpleNamespace(max_length=None, truncation_mode="keep_start", beta=0.1),
    )  # fmt: skip
    given = Dataset.from_list(
        [
            {"prompt": f"question {row}?", "chosen": f"right answer {row}", "rejected": f"wrong answer {row}"}
            for row in range(n)
        ]
    )
    noise, flips = find_suspected_flips(trainer, given, top=20, log=lambda _line: None)
    assert noise.verdict == "undetermined" and noise.low == 0.0 and noise.scored == n
    negative = sorted((m, row) for row, m in enumerate(scores["policy"]) if m < 0)[:20]
    assert [f.index for f in flips] == [row for _, row in negative]
    assert [f.score for f in flips] == [round(m, 6) for m, _ in negative]
    assert all(f.flip_probability is None for f in flips)
    text = render_text(RunReport(_summary([f.to_json() for f in flips], noise)), width=80)
    assert "P(flip)" not in text
    first = next(line for line in text.splitlines() if f"answer {negative[0][1]}" in line)
    assert f" {negative[0][1]} " in first and f" {fmt_number(negative[0][0])} " in first
    assert fmt_number(negative[0][0]).startswith("-8.9")  # the score, whole (row 59's margin is -8.908)
