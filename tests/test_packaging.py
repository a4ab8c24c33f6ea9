"""What a wheel ships (issue 22): the licence and metadata, one version, the recipes addressable without a checkout,
`trl-conservative env`, and the version check the resolver matrix (scripts/check_resolver.py) feeds pip's answers to.
The built wheel itself is installed and run from another folder by .ci/run (scripts/check_wheel.sh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from trl_conservative import __version__
from trl_conservative.cli import main
from trl_conservative.errors import ConfigError
from trl_conservative.model_card.data import TRL_CONSERVATIVE_CITATION
from trl_conservative.recipes import RECIPES_DIR, copy_recipes, recipe_names, resolve_config
from trl_conservative.trainer.trl_compat import stack_problem

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [ROOT, *sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))]


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_every_distribution_declares_its_licence_by_spdx_and_ships_the_file(project: Path) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    meta = pyproject["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]
    assert (project / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert any(r.startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
    assert meta["authors"] == [{"name": "trl-conservative contributors"}] and meta["keywords"]
    pythons = {c.rsplit(" ", 1)[1] for c in meta["classifiers"] if c.startswith("Programming Language :: Python :: 3.")}
    assert pythons == {"3.10", "3.11", "3.12", "3.13"}


def test_the_version_is_written_once() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "trl_conservative._version.__version__"}
    assert f"version = {{{__version__}}}" in TRL_CONSERVATIVE_CITATION


def test_citation_cff_and_the_bibtex_entry_agree() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == "Apache-2.0" and cff["authors"] == [{"name": "trl-conservative contributors"}]
    assert f"{{{{{cff['title']}}}}}" in TRL_CONSERVATIVE_CITATION


def test_examples_folder_links_to_the_packaged_recipes_only() -> None:
    """One copy of each recipe: every YAML under examples/ is reached through a link into the package."""
    examples = ROOT / "examples"
    for entry in examples.iterdir():
        if entry.suffix == ".py":
            continue
        assert entry.is_symlink(), f"{entry} is a copy; link it to trl_conservative/recipes/ instead"
        assert entry.resolve().is_relative_to(RECIPES_DIR)
    linked = {p.resolve() for p in examples.glob("*.yaml")} | {p.resolve() for p in examples.glob("*/*.yaml")}
    assert linked == {p.resolve() for p in RECIPES_DIR.rglob("*.yaml")}


def test_builtin_recipe_names_resolve_and_unknown_ones_list_the_shipped() -> None:
    assert "losses/cdpo" in recipe_names() and "accelerate/multi_gpu" in recipe_names()
    assert resolve_config("builtin:losses/cdpo") == RECIPES_DIR / "losses" / "cdpo.yaml"
    assert resolve_config("my.yaml") == Path("my.yaml")
    with pytest.raises(ConfigError, match="No shipped recipe is named 'builtin:nope'. Shipped: .*losses/cdpo"):
        resolve_config("builtin:nope")
    with pytest.raises(ConfigError, match="accelerate config, not a run config"):
        resolve_config("builtin:accelerate/multi_gpu")


def test_examples_command_lists_prints_paths_and_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["examples"]) == 0
    listed = capsys.readouterr().out
    assert "trl-conservative run --config builtin:losses/cdpo" in listed
    assert main(["examples", "path", "accelerate/multi_gpu"]) == 0
    assert Path(capsys.readouterr().out.strip()) == RECIPES_DIR / "accelerate" / "multi_gpu.yaml"
    assert main(["examples", "copy", "losses/ipo", "--to", str(tmp_path)]) == 0
    assert (tmp_path / "losses" / "ipo.yaml").read_text() == (RECIPES_DIR / "losses" / "ipo.yaml").read_text()
    assert main(["examples", "copy", "losses/ipo", "--to", str(tmp_path)]) == 2  # never overwrites
    assert "Not overwriting" in capsys.readouterr().err
    written = copy_recipes([], tmp_path / "all")
    assert len(written) == len(recipe_names())


def test_env_prints_what_trl_env_does_and_ours(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for label in ("Platform", "Python version", "TRL version", "PyTorch version", "accelerator(s)",
                  "Transformers version", "Accelerate config", "PEFT version", "vLLM version"):  # fmt: skip
        assert f"- {label}:" in out
    assert f"- trl-conservative version: {__version__}" in out
    assert "- TRL line in use: fused_head" in out or "- TRL line in use: dpo_loss" in out
    assert "- Loss plugins:" in out and "- Cache folder:" in out


@pytest.mark.parametrize(
    ("trl", "transformers", "runs"),
    [
        ("0.23.0", "4.56.1", True),
        ("0.28.0", "4.57.6", True),
        ("0.28.0", "5.20.2", False),  # TRL 0.2x cannot import beside transformers 5
        ("1.16.0", "4.57.6", True),  # TRL 1.16's own floor is 4.56.2
        ("1.16.0", "4.56.1", False),
        ("1.16.0", "5.24.0", True),
        ("1.15.0", "5.24.0", False),
    ],
)
def test_stack_problem_is_the_import_check_over_versions(trl: str, transformers: str, runs: bool) -> None:
    problem = stack_problem(trl, transformers)
    assert (problem is None) == runs, problem
    if problem is not None:
        assert "Fix: pip install" in problem and "\n" not in problem
