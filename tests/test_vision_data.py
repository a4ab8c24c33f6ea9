"""Image columns beside a text-only model are refused in one line before the model's weights load (issue 20): TRL
refuses them only once the model is loaded, minutes into a large model's start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_settings import tiny_run_settings

from trl_conservative.cli import main
from trl_conservative.demo.tiny import tiny_preference_rows


@pytest.mark.parametrize("column", ["images", "image"])
def test_image_columns_with_a_text_only_model_are_refused_before_the_weights_load(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], column: str
) -> None:
    from PIL import Image
    from transformers import AutoModelForCausalLM

    Image.new("RGB", (4, 4)).save(tmp_path / "cat.png")
    rows = tiny_preference_rows(8, seed=0)
    for row in rows:
        row[column] = [str(tmp_path / "cat.png")] if column == "images" else str(tmp_path / "cat.png")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_settings(tiny_model_dir, data, tmp_path / "out", eval_on_start=False)))

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model's weights were loaded before the refusal")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    # The tokenizer's class name differs between transformers 4 and 5.
    tail = err[0].rsplit(")", 1)[1]
    assert err[0].startswith(
        f"trl-conservative: error: dataset {str(data)!r} has the column {column!r} (TRL trains it as a vision "
        f"dataset), but {str(tiny_model_dir)!r} is a text-only model: it has no image processor ("
    ), err[0]
    assert tail == f". Use a vision-language model, or remove the {column!r} column.", err[0]
    assert not (tmp_path / "out").exists()
