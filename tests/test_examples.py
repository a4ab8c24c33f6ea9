"""The shipped recipes (`examples/` links to them): every YAML parses with the CLI parser; the small ones and the drop-in script run a few steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_conservative.cli import main
from trl_conservative.recipes import RECIPES_DIR
from trl_conservative.run.args import parse_run_args
from trl_conservative.run.settings import loss_settings

# The recipes ship inside the package; the repository's examples/ links to them (tests/test_packaging.py).
EXAMPLES = RECIPES_DIR
RUN_CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if "accelerate" not in p.relative_to(EXAMPLES).parts)
SMALL_CONFIGS = sorted((EXAMPLES / "losses").glob("*.yaml"))


def test_there_is_one_small_config_per_builtin_loss() -> None:
    from trl_conservative.registry import get_registry
    from trl_conservative.registry.registry import BUILTIN_SOURCE

    builtin = sorted(n for n, info in get_registry().losses.items() if info.source == BUILTIN_SOURCE)
    assert [p.stem for p in SMALL_CONFIGS] == builtin


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_config_parses(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    # The GPU recipes ask for bf16, which the parser only accepts on a CPU machine together with use_cpu.
    spec = parse_run_args(["--config", str(path), "--use_cpu", "true"])
    assert loss_settings(spec.training)["loss_type"] == [raw["loss_type"]]  # TRL 0.2x keeps a lone name as a str
    assert spec.training.beta == raw["beta"] and spec.training.label_smoothing == raw["label_smoothing"]
    assert spec.model.model_name_or_path == raw["model_name_or_path"]
    assert spec.training.learning_rate == raw["learning_rate"]


def test_seed_recipes() -> None:
    lora = parse_run_args(["--config", str(EXAMPLES / "llama31_8b_cdpo_lora.yaml"), "--use_cpu", "true"])
    full = parse_run_args(["--config", str(EXAMPLES / "llama31_8b_cdpo_full.yaml"), "--use_cpu", "true"])
    for spec in (lora, full):
        assert spec.model.model_name_or_path == "meta-llama/Llama-3.1-8B-Instruct"
        assert loss_settings(spec.training)["loss_type"] == ["cdpo"]
        assert spec.training.bf16 and spec.model.dtype == "bfloat16"
        # a tenth of the steps warm up: transformers 5 reads warmup_steps 0.1 so, transformers 4 as warmup_ratio
        assert getattr(spec.training, "warmup_ratio", None) or spec.training.warmup_steps == 0.1
        assert getattr(spec.training, "warmup_ratio", 0.1) == 0.1
        assert 5e-7 <= spec.training.learning_rate <= 5e-6
    assert lora.model.use_peft and lora.model.lora_r == 16
    assert not full.model.use_peft


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_load(name: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(EXAMPLES / "accelerate" / name))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    assert str(config.distributed_type).endswith("MULTI_GPU" if name == "multi_gpu.yaml" else "DEEPSPEED")


@pytest.mark.slow
@pytest.mark.parametrize("path", SMALL_CONFIGS, ids=lambda p: p.stem)
def test_small_config_runs(
    path: Path, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["run", "--config", str(path), "--model_name_or_path", str(tiny_model_dir), "--max_steps", "2"]
    rc = main([*args, "--eval_steps", "2", "--output_dir", str(out), "--plot", "false"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "run_summary.json").is_file()
    assert f"loss       {path.stem}" in capsys.readouterr().out


@pytest.mark.slow
def test_dropin_script(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {
        **os.environ,
        "TRL_CONSERVATIVE_CACHE": str(tmp_path_factory.getbasetemp() / "builtin-model-cache"),  # as test_cli
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / "examples" / "dropin.py"),
        "--max-steps",
        "2",
        "--output-dir",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out reward accuracy: 0.000 before" in proc.stdout
    assert (tmp_path / "o" / "model.safetensors").is_file()
