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
    SuspectedFlip,
    pair_scores,
    preview,
    rank_suspects,
    read_suspected_flips,
    row_positions,
    write_suspected_flips,
)
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
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert preview(messages) == "user: 2+2? | assistant: 4"
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
    flips = [SuspectedFlip(rank=1, index=7, score=-1.5, margin=None, prompt="p", chosen="ç", rejected="r")]
    path = write_suspected_flips(flips, tmp_path)
    assert path.name == SUSPECTED_FLIPS_FILE
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[0])["index"] == 7
    assert read_suspected_flips(tmp_path) == flips
    assert read_suspected_flips(tmp_path / "nowhere") is None


def _summary(flips: list[dict[str, Any]] | None) -> RunSummary:
    settings = RunSettings(
        loss_type=["cdpo"], loss_weights=[1.0], beta=0.1, label_smoothing=0.1, loss_params={}, model="m",
        dataset="d",
    )  # fmt: skip
    return RunSummary(settings=settings, output_dir="out", suspected_flips=flips, suspected_flips_s=0.25)


def test_report_section() -> None:
    flips = [
        SuspectedFlip(
            rank=r, index=10 + r, score=-float(r), margin=-0.5, prompt="3+4=", chosen="8", rejected="7"
        ).to_json()
        for r in range(1, 13)
    ]
    text = render_text(RunReport(_summary(flips)), width=100)
    assert "Pairs that look mislabeled (10 of 12 in suspected_flips.jsonl; extra pass 0.2 s)" in text
    assert "most negative first" in text and "out/suspected_flips.jsonl" in text
    assert " 11 " in text and " 20 " in text and " 21 " not in text  # 10 rows shown
    assert "mislabeled" not in render_text(RunReport(_summary(None)), width=100)


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
        "drop_bad_rows": True, "suspected_flips": 5, "seed": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    flips = read_suspected_flips(tmp_path / "out")
    assert flips is not None and len(flips) == 5
    assert flips[0].index == PLANTED and flips[0].score < 0, flips
    assert flips[0].margin is not None and flips[0].margin < 0  # the implicit-reward margin agrees
    assert flips[0].chosen == "no" and flips[0].rejected == "yes"
    assert all(f.score > 0 for f in flips[1:])  # only the planted pair is disagreed with
    assert [f.rank for f in flips] == [1, 2, 3, 4, 5]
    # Row 3 was dropped by drop_bad_rows. Row 6's prompt fills max_length: TRL 1.16 drops it; TRL 0.2x keeps it,
    # its keep_end truncation cutting the prompt's start. Every index is the file's row either way.
    assert 3 not in {f.index for f in flips}
    if TRL_STACK == "fused_head":
        assert 6 not in {f.index for f in flips}
    assert all(f.prompt == preview(_rows()[f.index]["prompt"]) for f in flips)
    assert "Pairs that look mislabeled" in out and f"Is {PLANTED} a number?" in out
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["suspected_flips_s"] > 0 and "suspected_flips" not in summary
    assert main(["report", str(tmp_path / "out")]) == 0
    again = capsys.readouterr().out
    assert "Pairs that look mislabeled" in again and f"Is {PLANTED} a number?" in again


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
        "plot": False, "seed": 0,
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path)]) == 0
    flips = read_suspected_flips(tmp_path / "out")
    assert flips is not None and len(flips) == 20  # the default
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
    assert "mislabeled" not in capsys.readouterr().out
