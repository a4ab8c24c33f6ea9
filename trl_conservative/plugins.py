"""The plugin manager and the loss registry built from it.

Nothing here runs at import time. The registry is built on first use: the built-in losses register through
the public `register_losses` hook, then every installed entry point in the group `trl_conservative` is
loaded (minus those named in `TRL_CONSERVATIVE_DISABLE_PLUGINS`, comma-separated). A plugin that fails to
import, misspells a hook or raises in its hook is recorded with its error and skipped: the other losses keep
working, and asking for one of its losses raises an error that names the failure.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateLossError, PluginError, UnknownLossError
from .losses.contract import Loss, LossParam, loss_citation, loss_needs_reference, loss_params

DISABLE_ENV = "TRL_CONSERVATIVE_DISABLE_PLUGINS"
BUILTIN_SOURCE = "trl-conservative (built-in)"


@dataclass(frozen=True)
class LossInfo:
    """A registered loss and where it came from."""

    name: str
    loss: Loss
    source: str
    version: str | None = None

    @property
    def citation(self) -> str | None:
        return loss_citation(self.loss)

    @property
    def params(self) -> tuple[LossParam, ...]:
        return loss_params(self.loss)

    @property
    def needs_reference(self) -> bool:
        return loss_needs_reference(self.loss)


@dataclass
class LossRegistry:
    """Losses by name, plus the plugins that failed to load (name -> error text)."""

    losses: dict[str, LossInfo] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.losses)

    def get(self, name: str) -> LossInfo:
        try:
            return self.losses[name]
        except KeyError:
            raise UnknownLossError(self.unknown_message(name)) from None

    def unknown_message(self, name: str, extra_valid: Iterable[str] = ()) -> str:
        valid = sorted(set(self.losses) | set(extra_valid))
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        failed = ""
        if self.failures:
            failed = " Plugins that failed to load: " + "; ".join(
                f"{plugin}: {error}" for plugin, error in sorted(self.failures.items())
            )
        return f"Unknown loss {name!r}.{hint} Available losses: {', '.join(valid)}.{failed}"


def disabled_plugins() -> set[str]:
    """Plugin names blocked through the TRL_CONSERVATIVE_DISABLE_PLUGINS environment variable."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


@dataclass
class LoadedPlugins:
    """A plugin manager, the plugins that failed to load (name -> error) and each entry point's distribution."""

    manager: pluggy.PluginManager
    failures: dict[str, str]
    dists: dict[str, Any]


def get_plugin_manager(extra_plugins: Iterable[tuple[str, object]] = ()) -> LoadedPlugins:
    """A plugin manager with the built-ins, the installed entry points and `extra_plugins` registered."""
    from .losses import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    loaded = LoadedPlugins(manager=pm, failures={}, dists={})
    failures = loaded.failures
    blocked = disabled_plugins()
    _register_checked(pm, builtin, "builtin", failures)
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
        if ep.name in blocked or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            failures[ep.name] = f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}"
            continue
        if _register_checked(pm, plugin, ep.name, failures):
            loaded.dists[ep.name] = ep.dist
    for name, plugin in extra_plugins:
        if name not in blocked:
            _register_checked(pm, plugin, name, failures)
    return loaded


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str, failures: dict[str, str]) -> bool:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        known = [n for n in dir(pm.hook) if not n.startswith("_")]
        failures[name] = f"{exc}. Hooks a plugin may implement: {', '.join(known)}."
        return False
    return True


def build_registry(extra_plugins: Iterable[tuple[str, object]] = ()) -> LossRegistry:
    """Call every plugin's `register_losses` and collect the losses, attributed to their source."""
    loaded = get_plugin_manager(extra_plugins)
    registry = LossRegistry(failures=loaded.failures)
    for impl in loaded.manager.hook.register_losses.get_hookimpls():  # registration order
        plugin_name = impl.plugin_name
        dist = loaded.dists.get(plugin_name)
        if plugin_name == "builtin":
            source, version = BUILTIN_SOURCE, _own_version()
        elif dist is not None:
            source, version = f"{dist.metadata['Name']} (plugin {plugin_name!r})", dist.version
        else:
            source, version = f"plugin {plugin_name!r}", None
        pending: list[LossInfo] = []

        def register(loss: Loss, _pending: list[LossInfo] = pending, _src: str = source, _v: str | None = version) -> None:
            _check_loss_object(loss, _src)
            _pending.append(LossInfo(name=loss.name, loss=loss, source=_src, version=_v))

        try:
            kwargs = {"register": register}
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except PluginError:
            raise
        except Exception as exc:
            registry.failures[plugin_name] = f"its register_losses hook raised {type(exc).__name__}: {exc}"
            continue
        for info in pending:
            if info.name in registry.losses:
                other = registry.losses[info.name]
                raise DuplicateLossError(
                    f"Loss {info.name!r} is registered twice: by {other.source} and by {info.source}. "
                    f"Uninstall one of them, or block one with {DISABLE_ENV}=<plugin name>."
                )
            registry.losses[info.name] = info
    return registry


def _check_loss_object(loss: object, source: str) -> None:
    name = getattr(loss, "name", None)
    if not isinstance(name, str) or not name or not callable(loss):
        raise PluginError(
            f"{source} registered {loss!r}, which is not a loss: a loss needs a non-empty str `name` and "
            "`__call__(inputs: LossInputs) -> LossOutput`."
        )
    for param in loss_params(loss):  # type: ignore[arg-type]
        if not isinstance(param, LossParam):
            raise PluginError(f"{source}: loss {name!r} declares {param!r} in `params`; use trl_conservative.LossParam.")


def _own_version() -> str | None:
    try:
        return importlib.metadata.version("trl-conservative")
    except importlib.metadata.PackageNotFoundError:
        return None


_REGISTRY: LossRegistry | None = None
_EXTRA: list[tuple[str, object]] = []


def get_registry() -> LossRegistry:
    """The process-wide loss registry, built on first call."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(_EXTRA)
    return _REGISTRY


def reset_registry() -> None:
    """Forget the built registry, so the next use reloads plugins (after installing one, or in tests)."""
    global _REGISTRY
    _REGISTRY = None


@contextlib.contextmanager
def registered_plugins(*plugins: tuple[str, object]) -> Iterator[LossRegistry]:
    """Register in-process plugins (name, module-or-object) for the duration of a `with` block.

    Meant for tests and notebooks; installed packages should expose an entry point instead.
    """
    _EXTRA.extend(plugins)
    reset_registry()
    try:
        yield get_registry()
    finally:
        for plugin in plugins:
            _EXTRA.remove(plugin)
        reset_registry()


def available_losses() -> list[str]:
    """Names of every registered loss (built-in and plugin), sorted."""
    return get_registry().names()


def get_loss(name: str) -> Loss:
    """The loss registered under `name`; an unknown name raises `UnknownLossError` listing the valid ones."""
    return get_registry().get(name).loss


def loss_info(name: str) -> LossInfo:
    """The registered loss with its source, version, parameters and citation."""
    return get_registry().get(name)


__all__ = [
    "DISABLE_ENV",
    "LossInfo",
    "LoadedPlugins",
    "LossRegistry",
    "available_losses",
    "build_registry",
    "get_loss",
    "get_plugin_manager",
    "get_registry",
    "loss_info",
    "registered_plugins",
    "reset_registry",
]
