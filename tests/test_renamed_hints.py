"""A setting refused on one TRL line names what replaces it on the installed one (issue 22 item 7)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from trl_conservative.errors import ConfigError
from trl_conservative.run.args import build_parser, parse_run_args
from trl_conservative.run.renamed import LINE_ONLY_SETTINGS, REPLACEMENTS
from trl_conservative.trainer.trl_compat import trl_native_losses

DESTS = {a.dest for a in build_parser()._actions}


def test_every_replacement_is_for_a_line_only_setting() -> None:
    line_only = set().union(*LINE_ONLY_SETTINGS.values())
    assert sorted(set(REPLACEMENTS) - line_only) == []


@pytest.mark.parametrize("key", sorted(k for k in REPLACEMENTS if k not in DESTS))
def test_the_replacement_names_a_setting_the_installed_line_has(key: str) -> None:
    text = REPLACEMENTS[key]
    if key == "rpo_alpha":
        assert "sft" in trl_native_losses() and "loss_weights" in DESTS
    elif text.startswith(("remove it", "give each row")) or "environment variable" in text:
        return
    else:
        named = re.match(r"(?:use|set) (\w+)", text)
        assert named is not None and named.group(1) in DESTS, text


def _config(tmp_path: Path, **extra: object) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n')
    path = tmp_path / "run.yaml"
    settings = {"model_name_or_path": "builtin:tiny-arithmetic", "dataset_name": str(data), "use_cpu": True}
    settings.update(bf16=False, report_to="none", **extra)
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.skipif("logging_dir" in DESTS, reason="the installed transformers still has logging_dir")
def test_logging_dir_names_the_tensorboard_variable_and_the_env_mapping_sets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"TENSORBOARD_LOGGING_DIR environment variable instead \(in the config"):
        parse_run_args(["--config", str(_config(tmp_path, logging_dir="tb"))])
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    parse_run_args(["--config", str(_config(tmp_path, env={"TENSORBOARD_LOGGING_DIR": "tb"}))])
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == "tb"
