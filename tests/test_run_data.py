"""What `trl-conservative run` loads: local files and folders in every supported form, the builtin data, splits."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trl_conservative import ConfigError
from trl_conservative.demo.tiny import tiny_preference_rows
from trl_conservative.run.data import load_preference_data, resolve_model

ROWS = tiny_preference_rows(10, seed=1)


def script(name: str | Path, **extra: Any) -> SimpleNamespace:
    values: dict[str, Any] = dict(
        dataset_name=str(name), dataset_config=None, dataset_train_split="train", dataset_test_split="test",
        dataset_streaming=False, test_split_size=None,
    )  # fmt: skip
    values.update(extra)
    return SimpleNamespace(**values)


def training(eval_strategy: str = "no", eval_on_start: bool = False) -> SimpleNamespace:
    return SimpleNamespace(eval_strategy=eval_strategy, eval_on_start=eval_on_start, seed=0)


def test_jsonl_json_parquet_csv_files(tmp_path: Path) -> None:
    from datasets import Dataset

    ds = Dataset.from_list(ROWS)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.to_csv(str(tmp_path / "a.csv"), index=False)
    for name in ("a.jsonl", "a.json", "a.parquet", "a.csv"):
        data = load_preference_data(script(tmp_path / name), training())
        assert data.train.to_list() == ROWS, name
        assert data.eval is None


def test_folders_and_splits(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict(train=Dataset.from_list(ROWS[:8]), test=Dataset.from_list(ROWS[8:])).save_to_disk(
        str(tmp_path / "dd")
    )
    data = load_preference_data(script(tmp_path / "dd"), training("steps"))
    assert (data.train.to_list(), data.eval.to_list()) == (ROWS[:8], ROWS[8:])
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))  # a Dataset, not a DatasetDict: "train"
    assert len(load_preference_data(script(tmp_path / "single"), training()).train) == 10
    files = tmp_path / "files"
    files.mkdir()
    (files / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_preference_data(script(files), training()).train.to_list() == ROWS
    # No test split: test_split_size holds out a fraction of train.
    data = load_preference_data(script(files, test_split_size=0.3), training(eval_on_start=True))
    assert (len(data.train), len(data.eval)) == (7, 3)
    assert sorted(map(json.dumps, data.train.to_list() + data.eval.to_list())) == sorted(
        map(json.dumps, ROWS)
    )
    with pytest.raises(ConfigError, match="has no split 'validation' .splits: train, test."):
        load_preference_data(script(tmp_path / "dd", dataset_train_split="validation"), training())


def test_builtin_dataset() -> None:
    data = load_preference_data(script("builtin:arithmetic"), training("steps"))
    assert (len(data.train), len(data.eval)) == (640, 160)
    with pytest.raises(ConfigError, match="The builtin dataset is 'builtin:arithmetic'"):
        load_preference_data(script("builtin:nope"), training())


def test_hub_id_offline_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="Could not load dataset 'no-org/no-such-dataset'"):
        load_preference_data(script("no-org/no-such-dataset"), training())
    with pytest.raises(ConfigError, match="neither a local folder nor in the hub cache"):
        resolve_model("no-org/no-such-model")


def test_unsupported_file_type(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n" * 20)
    with pytest.raises(ConfigError, match="unsupported type '.txt'"):
        load_preference_data(script(tmp_path / "a.txt"), training())


def test_quantization_and_remote_code_reach_the_model_where_the_trl_line_takes_them() -> None:
    from trl_conservative.run.runner import _trainer_kwargs
    from trl_conservative.trainer.trl_compat import TRL_STACK

    quantization = object()  # stands for a BitsAndBytesConfig
    config_field = SimpleNamespace(trust_remote_code=True)  # TRL 1.16: a DPOConfig field TRL reads itself
    spec: Any = SimpleNamespace(training=config_field if TRL_STACK == "fused_head" else SimpleNamespace(),
                                model=SimpleNamespace(trust_remote_code=True))  # fmt: skip
    init: dict[str, Any] = {"dtype": "float32"}
    kwargs = _trainer_kwargs(spec, init, quantization)
    if TRL_STACK == "fused_head":  # a DPOTrainer argument; the config's trust_remote_code is TRL's to pass on
        assert kwargs == {"quantization_config": quantization} and init == {"dtype": "float32"}
    else:  # TRL 0.2x's DPOTrainer takes neither: both go to from_pretrained, as its own `trl dpo` passes them
        assert kwargs == {}
        assert init["quantization_config"] is quantization and "device_map" in init
        assert init["trust_remote_code"] is True
    init = {}
    _trainer_kwargs(spec, init, None)
    assert "quantization_config" not in init and "device_map" not in init
