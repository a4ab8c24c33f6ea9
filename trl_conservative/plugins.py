"""The plugin manager and the loss registry built from it.

Nothing here runs at import time. The registry is built on first use: the built-in losses register through
the public `register_losses` hook, then every installed entry point in the group `trl_conservative` is
loaded, minus those blocked through `TRL_CONSERVATIVE_DISABLE_PLUGINS` (comma-separated entry-point or
distribution names).

Only installed entry points are loaded: there is no setting that imports a module from a path, so code runs
only if a package in the environment declares it. In-process plugins (`registered_plugins`) are for tests.

A plugin that fails to import, misspells a hook, breaks the hook contract or raises in its hook is recorded in
`LossRegistry.failures` (plugin name -> error), logged once as a warning and skipped: the other losses keep
working, and asking for a loss that is not registered raises an error that names the failed plugins. Two
sources registering one loss name is an error (`DuplicateLossError`) naming both: never a silent overwrite.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import inspect
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateLossError, PluginError, UnknownLossError
from .losses.contract import Loss, LossParam, loss_citation, loss_needs_reference, loss_params

logger = logging.getLogger(__name__)

DISABLE_ENV = "TRL_CONSERVATIVE_DISABLE_PLUGINS"
BUILTIN_SOURCE = "trl-conservative (built-in)"
BUILTIN_PLUGIN = "builtin"


@dataclass(frozen=True)
class LossInfo:
    """A registered loss and where it came from (what `trl-conservative losses` lists).

    Args:
        name: the name to put in `loss_type`.
        loss: the loss object.
        source: who registered it, e.g. `trl-conservative-simpo (plugin 'simpo')`.
        version: the registering distribution's version, when known.
        plugin: the plugin (entry-point) name, the one `TRL_CONSERVATIVE_DISABLE_PLUGINS` takes.
    """

    name: str
    loss: Loss
    source: str
    version: str | None = None
    plugin: str = BUILTIN_PLUGIN

    @property
    def citation(self) -> str | None:
        return loss_citation(self.loss)

    @property
    def params(self) -> tuple[LossParam, ...]:
        return loss_params(self.loss)

    @property
    def needs_reference(self) -> bool:
        return loss_needs_reference(self.loss)

    @property
    def description(self) -> str:
        """One line: the loss's `description` attribute, else the first line of its class docstring."""
        text = str(getattr(self.loss, "description", None) or inspect.getdoc(type(self.loss)) or "").strip()
        if text.startswith(f"{type(self.loss).__name__}("):  # the signature a dataclass uses as its docstring
            return ""
        return text.splitlines()[0] if text else ""


@dataclass
class LossRegistry:
    """Losses by name, the plugins that failed to load (name -> error text) and those blocked by the user."""

    losses: dict[str, LossInfo] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    disabled: tuple[str, ...] = ()

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
            failed = (
                " It may come from a plugin that failed to load: "
                + "; ".join(f"plugin {plugin!r}: {error}" for plugin, error in sorted(self.failures.items()))
                + ". Fix or reinstall that plugin."
            )
        blocked = ""
        if self.disabled:
            blocked = f" Plugins blocked by {DISABLE_ENV}: {', '.join(self.disabled)}."
        return f"Unknown loss {name!r}.{hint} Available losses: {', '.join(valid)}.{failed}{blocked}"


def disabled_plugins() -> set[str]:
    """Plugin names blocked through the TRL_CONSERVATIVE_DISABLE_PLUGINS environment variable."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _normalize(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


@dataclass
class LoadedPlugins:
    """A plugin manager, the plugins that failed to load (name -> error), each entry point's distribution."""

    manager: pluggy.PluginManager
    failures: dict[str, str]
    dists: dict[str, Any]
    disabled: list[str] = field(default_factory=list)


def get_plugin_manager(extra_plugins: Iterable[tuple[str, object]] = ()) -> LoadedPlugins:
    """A plugin manager with the built-ins, the installed entry points and `extra_plugins` registered."""
    from .losses import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    loaded = LoadedPlugins(manager=pm, failures={}, dists={})
    failures = loaded.failures
    blocked = disabled_plugins()
    blocked_dists = {_normalize(name) for name in blocked}
    _register_checked(pm, builtin, BUILTIN_PLUGIN, failures)
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
        dist_name = ep.dist.name if ep.dist is not None else None
        if ep.name in blocked or (dist_name is not None and _normalize(dist_name) in blocked_dists):
            loaded.disabled.append(ep.name)
            continue
        if pm.has_plugin(ep.name):
            if ep.name not in failures and not _same_dist(loaded.dists.get(ep.name), ep.dist):
                other = loaded.dists.get(ep.name)
                failures[ep.name] = (
                    f"entry point name {ep.name!r} of {dist_name or ep.value!r} is already taken by "
                    f"{other.name if other is not None else 'trl-conservative'!r}; rename one entry point"
                )
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            where = f" (distribution {dist_name!r})" if dist_name else ""
            failures[ep.name] = f"failed to import {ep.value!r}{where}: {type(exc).__name__}: {exc}"
            continue
        if _register_checked(pm, plugin, ep.name, failures):
            loaded.dists[ep.name] = ep.dist
    for name, plugin in extra_plugins:
        if name not in blocked:
            _register_checked(pm, plugin, name, failures)
        else:
            loaded.disabled.append(name)
    return loaded


def _same_dist(a: Any, b: Any) -> bool:
    # The same distribution can be visible twice on sys.path (e.g. an editable install plus a build dir).
    return a is not None and b is not None and a.name == b.name


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str, failures: dict[str, str]) -> bool:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()  # a hook name no spec declares, e.g. a misspelled `register_loss`
    except (pluggy.PluginValidationError, ValueError) as exc:
        unknown = []
        if pm.is_registered(plugin):
            unknown = [c.name for c in pm.get_hookcallers(plugin) or [] if c.spec is None]
            pm.unregister(plugin)
        known = sorted(
            n for n in vars(hookspecs) if hasattr(getattr(hookspecs, n), f"{hookspecs.PROJECT_NAME}_spec")
        )
        hints = [
            f" Did you mean {close[0]!r}?"
            for n in unknown
            if (close := difflib.get_close_matches(n, known, n=1))
        ]
        failures[name] = f"{exc}.{''.join(hints)} Hooks a plugin may implement: {', '.join(known)}"
        return False
    return True


def build_registry(extra_plugins: Iterable[tuple[str, object]] = ()) -> LossRegistry:
    """Call every plugin's `register_losses` and collect the losses, attributed to their source."""
    loaded = get_plugin_manager(extra_plugins)
    registry = LossRegistry(failures=loaded.failures, disabled=tuple(loaded.disabled))
    for impl in loaded.manager.hook.register_losses.get_hookimpls():  # registration order
        plugin_name = impl.plugin_name
        dist = loaded.dists.get(plugin_name)
        if plugin_name == BUILTIN_PLUGIN:
            source, version = BUILTIN_SOURCE, _own_version()
        elif dist is not None:
            source, version = f"{dist.metadata['Name']} (plugin {plugin_name!r})", dist.version
        else:
            source, version = f"plugin {plugin_name!r}", None
        pending: list[LossInfo] = []

        def register(
            loss: Loss,
            _pending: list[LossInfo] = pending,
            _src: str = source,
            _v: str | None = version,
            _plugin: str = plugin_name,
        ) -> None:
            check_loss_declaration(loss, _src)
            _pending.append(LossInfo(name=loss.name, loss=loss, source=_src, version=_v, plugin=_plugin))

        try:
            kwargs = {"register": register}
            impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except Exception as exc:  # the plugin is broken, the registry is not: record it and go on
            if plugin_name == BUILTIN_PLUGIN:
                raise
            registry.failures[plugin_name] = (
                str(exc)
                if isinstance(exc, PluginError)
                else f"its register_losses hook raised {type(exc).__name__}: {exc}"
            )
            continue
        for info in pending:
            if info.name in registry.losses:
                other = registry.losses[info.name]
                raise DuplicateLossError(
                    f"Loss {info.name!r} is registered twice: by {other.source} and by {info.source}. "
                    f"Uninstall one of them, or block one with {DISABLE_ENV}=<plugin name>."
                )
            registry.losses[info.name] = info
    _warn_failures(registry.failures)
    return registry


def check_loss_declaration(loss: object, source: str = "this plugin") -> None:
    """Raise `PluginError` unless `loss` has a usable name, is callable and declares its params properly."""
    name = getattr(loss, "name", None)
    if not isinstance(name, str) or not name or not callable(loss):
        raise PluginError(
            f"{source} registered {loss!r}, which is not a loss: a loss needs a non-empty str `name` and "
            "`__call__(inputs: LossInputs) -> LossOutput`."
        )
    if name != name.strip() or any(ch in name for ch in ", \t\n[]'\""):
        raise PluginError(
            f"{source}: loss name {name!r} cannot be used in `loss_type`; "
            "use letters, digits, '_', '-' or '.'."
        )
    needs_reference = getattr(loss, "needs_reference", True)
    if not isinstance(needs_reference, bool):
        raise PluginError(
            f"{source}: loss {name!r} has needs_reference={needs_reference!r}; it must be True or False."
        )
    seen: set[str] = set()
    for param in loss_params(loss):  # type: ignore[arg-type]
        if not isinstance(param, LossParam):
            raise PluginError(
                f"{source}: loss {name!r} declares {param!r} in `params`; use trl_conservative.LossParam."
            )
        if not param.name.isidentifier():
            raise PluginError(
                f"{source}: loss {name!r} declares parameter name {param.name!r}; use an identifier."
            )
        if param.name in seen:
            raise PluginError(f"{source}: loss {name!r} declares parameter {param.name!r} twice.")
        seen.add(param.name)
        if not isinstance(param.type, type):
            raise PluginError(
                f"{source}: parameter {param.name!r} of loss {name!r} has type {param.type!r}, not a type."
            )
        try:
            param.coerce(param.default)
        except TypeError as exc:
            raise PluginError(
                f"{source}: the default {param.default!r} of parameter {param.name!r} of loss {name!r} "
                f"is invalid: {exc}."
            ) from None


_WARNED: set[tuple[str, str]] = set()


def _warn_failures(failures: dict[str, str]) -> None:
    """Log each plugin failure once per process, however often the registry is rebuilt."""
    for plugin, error in sorted(failures.items()):
        if (plugin, error) not in _WARNED:
            _WARNED.add((plugin, error))
            logger.warning(
                "trl-conservative: loss plugin %r was not loaded: %s. The other losses are available; "
                "block it with %s=%s to silence this.",
                plugin,
                error,
                DISABLE_ENV,
                plugin,
            )


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
    "BUILTIN_PLUGIN",
    "BUILTIN_SOURCE",
    "DISABLE_ENV",
    "LoadedPlugins",
    "LossInfo",
    "LossRegistry",
    "available_losses",
    "build_registry",
    "check_loss_declaration",
    "disabled_plugins",
    "get_loss",
    "get_plugin_manager",
    "get_registry",
    "loss_info",
    "registered_plugins",
    "reset_registry",
]
