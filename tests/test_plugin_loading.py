"""Loading plugins through real entry points: a `*.dist-info` with an `entry_points.txt` on sys.path.

Each test writes a tiny distribution into a temporary site directory, so `importlib.metadata` finds it exactly
as it finds an installed package; nothing is mocked.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trl_conservative import (
    ConservativeDPOConfig,
    DuplicateLossError,
    UnknownLossError,
    available_losses,
    loss_info,
)
from trl_conservative.registry import DISABLE_ENV, get_registry, reset_registry
from trl_conservative.registry.registry import BUILTIN_SOURCE

_GOOD = '''
import torch.nn.functional as F
from trl_conservative import LossOutput, LossParam, hookimpl

class SquaredHinge:
    """Squared hinge on the DPO margin (a test loss)."""

    name = "{loss}"
    params = (LossParam(name="margin", type=float, default=1.0, help="the hinge margin"),)

    def __call__(self, inputs):
        h = inputs.chosen_logratios - inputs.rejected_logratios
        return LossOutput(
            losses=F.relu(inputs.params["margin"] - inputs.beta * h) ** 2,
            chosen_rewards=inputs.beta * inputs.chosen_logratios.detach(),
            rejected_rewards=inputs.beta * inputs.rejected_logratios.detach(),
        )

@hookimpl
def register_losses(register):
    register(SquaredHinge())
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Install fake distributions into a fresh directory on sys.path; the registry is rebuilt around the test."""
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    modules: list[str] = []

    def install(
        dist: str, entry_points: dict[str, str], sources: dict[str, str], version: str = "1.2.3"
    ) -> None:
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text("[trl_conservative]\n" + lines)
        for module, source in sources.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        reset_registry()

    reset_registry()
    yield install
    for module in modules:
        sys.modules.pop(module, None)
    reset_registry()


def test_an_installed_entry_point_registers_its_loss_with_dist_name_and_version(site: Any) -> None:
    site("fake-hinge", {"sqhinge": "fake_hinge_mod"}, {"fake_hinge_mod": _GOOD.format(loss="sq_hinge")})
    assert "sq_hinge" in available_losses()
    info = loss_info("sq_hinge")
    assert (info.source, info.version, info.plugin) == ("fake-hinge (plugin 'sqhinge')", "1.2.3", "sqhinge")
    assert info.description == "Squared hinge on the DPO margin (a test loss)."
    assert [(p.name, p.type, p.default, p.help) for p in info.params] == [
        ("margin", float, 1.0, "the hinge margin")
    ]
    cfg = ConservativeDPOConfig(
        output_dir="unused", use_cpu=True, report_to="none", loss_type="sq_hinge", loss_params={"margin": 2}
    )
    assert cfg.loss_params == {"margin": 2}


def test_a_plugin_that_fails_to_import_is_reported_once_and_the_rest_keeps_working(
    site: Any, caplog: pytest.LogCaptureFixture
) -> None:
    site(
        "fake-broken",
        {"broken": "fake_broken_mod"},
        {"fake_broken_mod": "import not_a_module_anywhere_xyz\n"},
    )
    with caplog.at_level(logging.WARNING, logger="trl_conservative.registry"):
        registry = get_registry()
        reset_registry()
        get_registry()  # rebuilt: not logged again
    error = registry.failures["broken"]
    assert "failed to import 'fake_broken_mod'" in error and "'fake-broken'" in error
    assert "ModuleNotFoundError" in error and "not_a_module_anywhere_xyz" in error
    warnings = [r for r in caplog.records if "'broken'" in r.getMessage()]
    assert len(warnings) == 1 and "not_a_module_anywhere_xyz" in warnings[0].getMessage()
    assert {"sigmoid", "cdpo", "ipo"} <= set(available_losses())
    # A run asking for a loss that is not there names the failed plugin and its error.
    with pytest.raises(UnknownLossError) as err:
        ConservativeDPOConfig(output_dir="unused", use_cpu=True, report_to="none", loss_type="broken_loss")
    assert "plugin 'broken'" in str(err.value) and "not_a_module_anywhere_xyz" in str(err.value)


def test_a_hook_that_raises_registers_nothing_and_is_reported(site: Any) -> None:
    source = _GOOD.format(loss="half_done") + textwrap.dedent(
        """
        @hookimpl(specname="register_losses")
        def also(register):
            raise RuntimeError("the GPU is on fire")
        """
    )
    site("fake-raiser", {"raiser": "fake_raiser_mod"}, {"fake_raiser_mod": source})
    registry = get_registry()
    assert registry.failures["raiser"] == "its register_losses hook raised RuntimeError: the GPU is on fire"
    assert "sigmoid" in registry.losses


def test_a_misspelled_hook_is_caught_and_the_valid_hooks_listed(site: Any) -> None:
    source = _GOOD.format(loss="typo_loss").replace("def register_losses", "def register_loss")
    site("fake-typo", {"typo": "fake_typo_mod"}, {"fake_typo_mod": source})
    registry = get_registry()
    assert "register_loss" in registry.failures["typo"]
    assert (
        "Did you mean 'register_losses'? Hooks a plugin may implement: register_losses"
        in registry.failures["typo"]
    )
    assert "typo_loss" not in registry.losses


def test_a_hook_with_a_wrong_argument_name_is_caught(site: Any) -> None:
    source = _GOOD.format(loss="argname_loss").replace(
        "def register_losses(register):", "def register_losses(reg):"
    )
    source = source.replace("    register(SquaredHinge())", "    reg(SquaredHinge())")
    site("fake-argname", {"argname": "fake_argname_mod"}, {"fake_argname_mod": source})
    assert "reg" in get_registry().failures["argname"]
    assert "argname_loss" not in available_losses()


def test_a_bad_parameter_declaration_is_reported_against_the_plugin(site: Any) -> None:
    source = _GOOD.format(loss="bad_param").replace("default=1.0", 'default="one"')
    site("fake-badparam", {"badparam": "fake_badparam_mod"}, {"fake_badparam_mod": source})
    error = get_registry().failures["badparam"]
    assert "fake-badparam (plugin 'badparam')" in error and "default 'one' of parameter 'margin'" in error
    assert "bad_param" not in available_losses()


@pytest.mark.parametrize("blocked", ["blockme", "fake-blocked", "sigmoid_other, blockme"])
def test_disabled_plugins_are_not_even_imported(
    site: Any, monkeypatch: pytest.MonkeyPatch, blocked: str
) -> None:
    # Importing this module would fail loudly, so a failure entry would prove it was imported.
    site(
        "fake-blocked",
        {"blockme": "fake_blocked_mod"},
        {"fake_blocked_mod": "raise SystemError('imported')\n"},
    )
    monkeypatch.setenv(DISABLE_ENV, blocked)
    reset_registry()
    registry = get_registry()
    assert "blockme" not in registry.failures and "fake_blocked_mod" not in sys.modules
    assert registry.disabled == ("blockme",)
    monkeypatch.delenv(DISABLE_ENV)
    reset_registry()
    assert "SystemError: imported" in get_registry().failures["blockme"]


def test_disabling_an_installed_plugin_removes_its_loss_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "simpo")
    reset_registry()
    try:
        assert "simpo" not in available_losses() and "sigmoid" in available_losses()
        with pytest.raises(UnknownLossError, match=f"Plugins blocked by {DISABLE_ENV}: simpo"):
            loss_info("simpo")
    finally:
        monkeypatch.delenv(DISABLE_ENV)
        reset_registry()


def test_a_module_on_sys_path_without_an_entry_point_is_never_loaded(site: Any, tmp_path: Path) -> None:
    site("fake-empty", {}, {"fake_unlisted_mod": _GOOD.format(loss="unlisted")})
    assert "unlisted" not in available_losses()
    assert "fake_unlisted_mod" not in sys.modules


def test_a_plugin_reusing_a_builtin_name_is_a_duplicate_error_naming_both(site: Any) -> None:
    site("fake-dup", {"dup": "fake_dup_mod"}, {"fake_dup_mod": _GOOD.format(loss="cdpo")})
    with pytest.raises(DuplicateLossError) as err:
        get_registry()
    assert BUILTIN_SOURCE in str(err.value) and "fake-dup (plugin 'dup')" in str(err.value)
    assert DISABLE_ENV in str(err.value)


def test_two_distributions_with_one_entry_point_name_report_the_second(site: Any) -> None:
    site("fake-first", {"same": "fake_first_mod"}, {"fake_first_mod": _GOOD.format(loss="first_loss")})
    site("fake-second", {"same": "fake_second_mod"}, {"fake_second_mod": _GOOD.format(loss="second_loss")})
    registry = get_registry()
    assert len([n for n in ("first_loss", "second_loss") if n in registry.losses]) == 1
    assert "already taken" in registry.failures["same"]


def test_description_is_the_docstrings_first_line_never_a_dataclass_signature() -> None:
    import dataclasses

    from trl_conservative.registry import LossInfo

    @dataclasses.dataclass
    class Undocumented:
        name: str = "undocumented"

        def __call__(self, inputs: Any) -> Any:
            raise NotImplementedError

    class Described(Undocumented):
        """First line.

        More.
        """

    assert LossInfo(name="u", loss=Undocumented(), source="s").description == ""
    assert LossInfo(name="d", loss=Described(), source="s").description == "First line."
    assert loss_info("simpo").description.startswith("SimPO: reference-free")
