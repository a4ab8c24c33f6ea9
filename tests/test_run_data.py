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


def test_eval_on_start_alone_evaluates_and_says_so(tmp_path: Path) -> None:
    """`eval_on_start` with `eval_strategy: no` evaluates (`training_args.evaluates`, the KL monitor's rule too)."""
    from trl_conservative.kl.monitor import auto_metric

    files = tmp_path / "files"
    files.mkdir()
    (files / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(ConfigError, match="^eval_on_start is True but dataset .* has no split 'test'"):
        load_preference_data(script(files), training(eval_on_start=True))
    with pytest.raises(ConfigError, match="^eval_strategy is 'steps' but dataset .* has no split 'test'"):
        load_preference_data(script(files), training("steps"))
    args = SimpleNamespace(eval_strategy="no", eval_on_start=True, kl_sequence_prompts=8)
    assert auto_metric(args) == "eval_kl/sequence"


def test_test_split_size_range_is_the_settings_check_one(tmp_path: Path) -> None:
    """The loader refuses a fraction outside (0, 1) in the words `run`'s settings check uses."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    for bad in (1.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match=rf"^test_split_size must be a fraction in \(0, 1\), got {bad}\."):
            load_preference_data(script(files, test_split_size=bad), training("steps"))


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
    from trl_conservative.run.plan import _trainer_kwargs
    from trl_conservative.trainer.trl_compat import TRL_STACK

    quantization = object()  # stands for a BitsAndBytesConfig
    config_field = SimpleNamespace(trust_remote_code=True)  # TRL 1.16: a DPOConfig field TRL reads itself
    training = config_field if TRL_STACK == "fused_head" else SimpleNamespace()
    init: dict[str, Any] = {"dtype": "float32"}
    kwargs = _trainer_kwargs(training, init, quantization, trust_remote_code=True)
    if TRL_STACK == "fused_head":  # a DPOTrainer argument; the config's trust_remote_code is TRL's to pass on
        assert kwargs == {"quantization_config": quantization} and init == {"dtype": "float32"}
    else:  # TRL 0.2x's DPOTrainer takes neither: both go to from_pretrained, as its own `trl dpo` passes them
        assert kwargs == {}
        assert init["quantization_config"] is quantization and "device_map" in init
        assert init["trust_remote_code"] is True
    init = {}
    _trainer_kwargs(training, init, None, trust_remote_code=True)
    assert "quantization_config" not in init and "device_map" not in init


# --- issue 20 family 6: files named for what they are not, byte order marks, folders whose files differ ------------
def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _csv(rows: list[dict[str, Any]]) -> bytes:
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import io

    from datasets import Dataset

    buffer = io.BytesIO()
    Dataset.from_list(rows).to_parquet(buffer)
    return buffer.getvalue()


BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize(
    "name, data",
    [
        ("a.jsonl", BOM + _jsonl(ROWS)),
        ("a.json", BOM + json.dumps(ROWS).encode()),
        ("a.csv", BOM + _csv(ROWS)),  # the mark is not part of the first column's name
    ],
)
def test_a_utf8_byte_order_mark_is_read_as_datasets_reads_it(tmp_path: Path, name: str, data: bytes) -> None:
    (tmp_path / name).write_bytes(data)
    assert load_preference_data(script(tmp_path / name), training()).train.to_list() == ROWS


def test_compressed_files_are_read_by_their_name(tmp_path: Path) -> None:
    import bz2
    import gzip
    import lzma

    files = {
        "a.jsonl.gz": gzip.compress(BOM + _jsonl(ROWS)),
        "a.json.bz2": bz2.compress(json.dumps(ROWS).encode()),
        "a.csv.xz": lzma.compress(_csv(ROWS)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert load_preference_data(script(tmp_path / name), training()).train.to_list() == ROWS, name
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(_jsonl(ROWS) + b"{oops\n"))
    with pytest.raises(ConfigError, match=r"bad.jsonl.gz' line 11, column 2 is not valid JSON"):
        load_preference_data(script(tmp_path / "bad.jsonl.gz"), training())
    (tmp_path / "empty.jsonl.gz").write_bytes(gzip.compress(b"\n"))
    with pytest.raises(ConfigError, match=r"empty.jsonl.gz' is empty"):
        load_preference_data(script(tmp_path / "empty.jsonl.gz"), training())


def _compressed(kind: str, data: bytes) -> bytes:
    import bz2
    import gzip
    import lzma

    return {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind](data)


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("p.jsonl", _compressed("gzip", _jsonl(ROWS)), "is gzip-compressed, not JSON lines text .* Rename it to 'p.jsonl.gz'"),
        ("p.json", _compressed("bzip2", _jsonl(ROWS)), "is bzip2-compressed, not JSON text .* Rename it to 'p.json.bz2'"),
        ("p.csv", _compressed("xz", _csv(ROWS)), "is xz-compressed, not CSV text .* Rename it to 'p.csv.xz'"),
        ("p.jsonl.gz", _jsonl(ROWS), r"is named .gz but is not compressed .* Rename it to 'p.jsonl'"),
        ("p.jsonl.gz", _compressed("bzip2", _jsonl(ROWS)), r"is named .gz but is a bzip2 file .*'p.jsonl' plus '.bz2'"),
        ("p.jsonl", b"PK\x03\x04" + bytes(40), "is a zip archive, not a data file: extract it"),
        ("p.jsonl.zst", b"\x28\xb5\x2f\xfd" + bytes(40), "is zstd-compressed, which cannot be read here"),
        ("p.jsonl", b"PAR1" + bytes(40), "is a parquet file, not JSON lines text .* Rename it to 'p.parquet'"),
        ("p.parquet", _jsonl(ROWS), "is not a parquet file: it does not start with the parquet magic bytes"),
        ("p.parquet", _compressed("gzip", b"PAR1" + bytes(40)), "is gzip-compressed, not a parquet file .* Decompress"),
    ],
    ids=["gz-as-jsonl", "bz2-as-json", "xz-as-csv", "gz-not-gzip", "gz-is-bz2", "zip", "zstd", "parquet-as-jsonl",
         "text-as-parquet", "gz-as-parquet"],
)  # fmt: skip
def test_a_file_whose_bytes_are_not_what_its_name_says_is_named_by_its_magic_bytes(
    tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_preference_data(script(tmp_path / name), training())
    assert "\n" not in str(caught.value) and "not UTF-8" not in str(caught.value)
    folder = tmp_path / "folder"  # the same check for each file of a folder
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(_jsonl(ROWS))
    (folder / f"test{name[1:]}").write_bytes(data)
    with pytest.raises(ConfigError, match=expected.replace("'p.", "'test.")):
        load_preference_data(script(folder), training())


CHAT_ROWS = [
    {
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "chosen": [{"role": "assistant", "content": r["chosen"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]}],
    }
    for r in ROWS
]


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"train.jsonl": _jsonl(ROWS), "test.jsonl": _jsonl(CHAT_ROWS)},
         r"column 'prompt' holds text in 'train.jsonl' \(line 1\) but chat messages in 'test.jsonl' \(line 1\)"),
        ({"train-1.jsonl": _jsonl(ROWS), "train-2.jsonl": _jsonl(CHAT_ROWS)},
         "holds text in 'train-1.jsonl' .* but chat messages in 'train-2.jsonl'"),
        ({"train.jsonl": _jsonl(ROWS), "test.jsonl": _jsonl([{**r, "source": 1} for r in ROWS])},
         "'test.jsonl' has column 'source' that 'train.jsonl' lacks"),
        ({"train.jsonl": _jsonl(ROWS), "test.jsonl": _jsonl([{"chosen": r["chosen"], "rejected": r["rejected"]}
                                                           for r in ROWS])},
         "'train.jsonl' has column 'prompt' that 'test.jsonl' lacks"),
        ({"train.jsonl": _jsonl(ROWS), "test.jsonl": _jsonl([{**r, "chosen": 5} for r in ROWS])},
         "column 'chosen' holds text in 'train.jsonl' .* but a number in 'test.jsonl'"),
        ({"train.jsonl": _jsonl(ROWS), "test.csv": _csv(ROWS)},
         r"holds data files of different types: 'train.jsonl' \(JSON\), 'test.csv' \(CSV\)"),
        ({"train.jsonl": _jsonl(ROWS), "test.jsonl": _jsonl(ROWS[:2] + CHAT_ROWS[2:])},
         r"'test.jsonl' mixes text \(line 1\) and chat messages \(line 3\) in column 'prompt'"),
        ({"train.json": json.dumps(ROWS).encode(), "test.json": json.dumps(CHAT_ROWS).encode()},
         r"column 'prompt' holds text in 'train.json' \(row 0\) but chat messages in 'test.json' \(row 0\)"),
        ({"train.parquet": _parquet(ROWS), "test.parquet": _parquet(CHAT_ROWS)},
         r"column 'prompt' holds text in 'train.parquet' \(its schema\) but chat messages in 'test.parquet'"),
        ({"train.csv": _csv(ROWS), "test.csv": _csv([{"chosen": "a", "rejected": "b"}])},
         "'train.csv' has column 'prompt' that 'test.csv' lacks"),
    ],
    ids=["text-and-chat-splits", "text-and-chat-files-of-a-split", "extra-column", "missing-column", "number-for-text",
         "jsonl-and-csv", "a-file-mixing-formats", "json-documents", "parquet", "csv"],
)  # fmt: skip
def test_folder_files_that_differ_in_format_are_named_with_the_difference(
    tmp_path: Path, files: dict[str, bytes], expected: str
) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_preference_data(script(tmp_path), training())
    message = str(caught.value)
    assert "DatasetGenerationError" not in message and "\n" not in message
    assert message.startswith(f"Dataset folder {str(tmp_path)!r}")


def test_folder_files_that_agree_load(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress(_jsonl(CHAT_ROWS[:8])))
    (tmp_path / "test.jsonl.gz").write_bytes(gzip.compress(_jsonl(CHAT_ROWS[8:])))
    (tmp_path / "README.md").write_text("not data")
    data = load_preference_data(script(tmp_path), training("steps"))
    assert (data.train.to_list(), data.eval.to_list()) == (CHAT_ROWS[:8], CHAT_ROWS[8:])


def test_a_bad_row_is_numbered_as_in_the_file_after_test_split_size_shuffles_the_split(tmp_path: Path) -> None:
    from trl_conservative.run.validate import validate_preference_data

    rows = [dict(r) for r in ROWS]
    rows[6]["rejected"] = rows[6]["chosen"]
    (tmp_path / "a.jsonl").write_bytes(_jsonl(rows))
    data = load_preference_data(script(tmp_path / "a.jsonl", test_split_size=0.3), training(eval_on_start=True))
    part = next(p for p in (data.train, data.eval) if rows[6] in p.to_list())
    assert part.to_list().index(rows[6]) != 6  # shuffled
    with pytest.raises(ConfigError, match="'chosen' is identical to 'rejected' in row 6 "):
        validate_preference_data(part)
