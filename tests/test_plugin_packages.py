"""The plugin packages in plugins/: declared, installed through their entry points, and collected by pytest."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from trl_conservative import loss_info
from trl_conservative.registry import get_registry

pytestmark = pytest.mark.core

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def test_the_plugin_packages_are_there() -> None:
    assert {p.name for p in PACKAGES} >= {"trl-conservative-rdpo", "trl-conservative-simpo", "template"}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_declares_an_installed_entry_point_whose_losses_load(package: Path) -> None:
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"]["trl_conservative"]
    assert declared, f"{package.name} declares no entry point in the group trl_conservative"
    installed = {
        ep.name: ep.value
        for ep in importlib.metadata.entry_points(group="trl_conservative")
        if ep.dist is not None and ep.dist.name == project["name"]
    }
    assert installed == declared, f"install it: pip install -e plugins/{package.name} (scripts/setup.sh does)"
    registry = get_registry()
    for plugin in declared:
        assert plugin not in registry.failures, registry.failures[plugin]
        names = [info.name for info in registry.losses.values() if info.plugin == plugin]
        assert names, f"plugin {plugin!r} registered no loss"
        for name in names:
            assert loss_info(name).version == project["version"]
    assert list((package / "tests").glob("test_*.py")), f"{package.name} has no tests"


def test_pytest_collects_plugin_tests_and_their_module_names_are_unique() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "plugins" in config["testpaths"]
    modules = [p.name for p in (ROOT / "tests").glob("test_*.py")]
    modules += [p.name for package in PACKAGES for p in (package / "tests").glob("test_*.py")]
    duplicates = sorted({m for m in modules if modules.count(m) > 1})
    assert not duplicates, f"test module basenames must be unique across tests/ and plugins/: {duplicates}"
