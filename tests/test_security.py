"""Security: YAML is safe-loaded, plugins come only from installed entry points, remote code runs only when asked,
and nothing untrusted is unpickled (checkpoints resume through `torch.load(weights_only=True)`).

See also tests/test_plugin_loading.py (a module on sys.path without an entry point is never imported) and the
`yaml-python-tag` and `model-custom-code` cases of tests/test_bad_inputs.py.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_settings import tiny_run_settings, write_pairs

from trl_conservative.cli import main
from trl_conservative.trainer.trl_compat import TRL_STACK

PACKAGE = Path(__file__).resolve().parents[1] / "trl_conservative"


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                found.append((f"{func.value.id}.{func.attr}", node))
            elif isinstance(func, ast.Name):
                found.append((func.id, node))
    return found


def test_the_package_never_loads_untrusted_data_unsafely() -> None:
    """No unsafe YAML loader, no pickle, no torch.load without weights_only=True, no trust_remote_code=True."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, call in _calls(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{call.lineno} {name}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                offences.append(where)
            if name in ("pickle.load", "pickle.loads", "dill.load", "joblib.load", "marshal.loads"):
                offences.append(where)
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    offences.append(where + " without weights_only=True")
            remote = keywords.get("trust_remote_code")
            if isinstance(remote, ast.Constant) and remote.value is True:
                offences.append(where + " with trust_remote_code=True")
    assert offences == []


def test_yaml_python_tags_are_refused_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    config = tmp_path / "evil.yaml"
    config.write_text(f"output_dir: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert not marker.exists()


def test_a_config_cannot_name_a_plugin_file_to_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plugins load only from installed entry points: no setting takes a path or module to import."""
    evil = tmp_path / "evil_plugin_mod.py"
    evil.write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').write('x')\n")
    for key in ("plugins", "plugin_paths", "loss_plugin"):
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({key: str(evil)}))
        assert main(["run", "--config", str(config)]) == 2
        assert f"Unknown setting {key!r}" in capsys.readouterr().err
    assert "evil_plugin_mod" not in sys.modules and not (tmp_path / "PWNED").exists()


def test_trust_remote_code_is_off_unless_asked() -> None:
    from trl_conservative.run.args import parse_run_args
    from trl_conservative.run.remote_code import remote_code_allowed

    # A DPOConfig field on TRL 1.16 (transformers 5), a ModelConfig one on TRL 0.2x: the run reads either.
    default, asked = parse_run_args([]), parse_run_args(["--trust_remote_code", "true"])
    owner = "training" if hasattr(default.training, "trust_remote_code") else "model"
    assert getattr(default, owner).trust_remote_code is False and remote_code_allowed(default) is False
    assert getattr(asked, owner).trust_remote_code is True and remote_code_allowed(asked) is True


def _custom_code_model(source: Path, target: Path, marker: Path) -> Path:
    """A copy of the tiny model whose config names its own classes (auto_map), recording when its code runs."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "custom-tiny"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomModel",
    }
    (target / "config.json").write_text(json.dumps(config))
    note = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (target / "configuration_custom.py").write_text(
        note + "from transformers import LlamaConfig\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-tiny'\n"
    )
    (target / "modeling_custom.py").write_text(
        note + "from transformers import LlamaForCausalLM\n"
        "from .configuration_custom import CustomConfig\n\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    return target


def _run_config(tmp_path: Path, model: Path, **extra: Any) -> Path:
    data = write_pairs(tmp_path / "pairs.jsonl")
    config = tiny_run_settings(model, data, tmp_path / "out", kl_exact_steps=0, **extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_custom_model_code_runs_only_with_trust_remote_code(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "CODE_RAN"
    model = _custom_code_model(tiny_model_dir, tmp_path / "custom", marker)
    config = _run_config(tmp_path, model)
    assert main(["run", "--config", str(config)]) == 2
    assert "ships its own Python code" in capsys.readouterr().err
    assert not marker.exists()
    assert main(["run", "--config", str(config), "--trust_remote_code", "true"]) == 0, capsys.readouterr().err
    # Asked for: the folder's code runs. TRL 1.16 then builds the model from `architectures`, so only the config's
    # code; on TRL 0.2x the run loads the model itself (TRL 0.24-0.28 could not: they read the config without the
    # flag), through the folder's own model class, as TRL 0.23 does.
    ran = {name.rsplit(".", 1)[-1] for name in marker.read_text().split()}  # module names
    assert "configuration_custom" in ran
    assert ("modeling_custom" in ran) == (TRL_STACK == "dpo_loss")


class _Payload:
    """Unpickling this runs code: what a tampered checkpoint file could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
@pytest.mark.parametrize("tampered", ["optimizer.pt", "rng_state.pth", "scheduler.pt"])
def test_resuming_never_unpickles_a_tampered_checkpoint_file(
    tampered: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    config = _run_config(tmp_path, tiny_model_dir, save_strategy="steps", save_steps=1)
    assert main(["run", "--config", str(config)]) == 0
    checkpoint = tmp_path / "out" / "checkpoint-1"
    marker = tmp_path / "PWNED"
    with open(checkpoint / tampered, "wb") as f:
        pickle.dump({"state": _Payload(marker)}, f)
    with pytest.raises(
        pickle.UnpicklingError
    ):  # what transformers' torch.load(weights_only=True) does with it
        torch.load(checkpoint / tampered, weights_only=True)
    capsys.readouterr()
    rc = main(
        ["run", "--config", str(config), "--max_steps", "2", "--resume_from_checkpoint", str(checkpoint)]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"Checkpoint {str(checkpoint)!r} holds a file that is not plain tensor data" in err
    assert err.count("\n") == 1
    assert not marker.exists()
