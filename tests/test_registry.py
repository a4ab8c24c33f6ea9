"""The loss registry: built-ins through the public hook, duplicates, unknown names, lazy loading, public API."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest

import trl_conservative
from trl_conservative import (
    DuplicateLossError,
    UnknownLossError,
    available_losses,
    get_loss,
    hookimpl,
    loss_info,
)
from trl_conservative.registry import hookspecs, registered_plugins
from trl_conservative.registry.registry import BUILTIN_SOURCE

pytestmark = pytest.mark.core


def test_builtins_are_registered_with_source_and_citation() -> None:
    assert {"sigmoid", "cdpo", "ipo"} <= set(available_losses())
    assert available_losses() == sorted(available_losses())
    for name, cite in [("sigmoid", "2305.18290"), ("cdpo", "cdpo.pdf"), ("ipo", "2310.12036")]:
        info = loss_info(name)
        assert info.source == BUILTIN_SOURCE
        assert info.citation is not None and cite in info.citation
        assert info.needs_reference


def test_builtins_use_the_public_hook() -> None:
    from trl_conservative.losses import builtin

    collected: list[str] = []
    builtin.register_losses(lambda loss: collected.append(loss.name))
    assert collected == ["sigmoid", "cdpo", "ipo"]
    assert hasattr(builtin.register_losses, "trl_conservative_impl")  # marked with our hookimpl


def test_unknown_loss_lists_available_and_suggests() -> None:
    with pytest.raises(UnknownLossError) as err:
        get_loss("cdp")
    msg = str(err.value)
    assert "'cdp'" in msg and "Did you mean 'cdpo'" in msg
    for name in available_losses():
        assert name in msg


class _Loss:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, inputs):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _plugin(*names: str) -> types.SimpleNamespace:
    @hookimpl
    def register_losses(register):  # type: ignore[no-untyped-def]
        for n in names:
            register(_Loss(n))

    return types.SimpleNamespace(register_losses=register_losses)


def test_in_process_plugin_registers_and_is_forgotten_after() -> None:
    with registered_plugins(("extra", _plugin("extra_loss"))) as registry:
        assert "extra_loss" in available_losses()
        assert registry.get("extra_loss").source == "plugin 'extra'"
    assert "extra_loss" not in available_losses()


def test_duplicate_name_is_an_error_naming_both_sources() -> None:
    with pytest.raises(DuplicateLossError) as err:
        with registered_plugins(("clash", _plugin("cdpo"))):
            pass
    assert BUILTIN_SOURCE in str(err.value) and "plugin 'clash'" in str(err.value)


def test_hook_specs_are_documented_with_params() -> None:
    specs = [
        f
        for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(f, "trl_conservative_spec")
    ]
    assert specs, "no hook specs found"
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        assert "Args:" in doc, spec.__name__
        for arg in inspect.signature(spec).parameters:
            assert f"{arg}:" in doc, (spec.__name__, arg)


def test_import_loads_no_plugin() -> None:
    code = (
        "import sys, trl_conservative, trl_conservative.registry.registry as p;"
        "assert p._REGISTRY is None, 'registry built at import';"
        "assert 'trl_conservative.losses.builtin' not in sys.modules, 'builtin plugin imported at import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_all_is_complete_and_sorted() -> None:
    exported = set(trl_conservative.__all__)
    lazy = set(trl_conservative._LAZY)
    assert lazy <= exported
    eager = {
        name
        for name, obj in vars(trl_conservative).items()
        if not name.startswith("_")
        and not isinstance(obj, types.ModuleType)
        and name not in {"TYPE_CHECKING", "Any"}
    }
    assert eager - lazy <= exported | {"annotations"}
    assert list(trl_conservative.__all__) == sorted(trl_conservative.__all__)
    for name in trl_conservative.__all__:
        assert getattr(trl_conservative, name) is not None, name
    with pytest.raises(AttributeError):
        trl_conservative.not_a_name  # noqa: B018


def test_import_is_light() -> None:
    code = "import sys, trl_conservative; assert 'trl' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
