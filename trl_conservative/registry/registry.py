"""The loss registry: every loss the plugins register (`get_registry`), attributed to its source.

Nothing here runs at import time. The registry is built on first use from the plugin manager (`loading.py`): the
built-in losses register through the public `register_losses` hook, like any installed plugin. In-process plugins
(`registered_plugins`) are for tests.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from trl_conservative.errors import DuplicateLossError, PluginError, UnknownLossError
from trl_conservative.losses.contract import (
    Loss,
    LossParam,
    check_loss_declaration,
    loss_citation,
    loss_needs_reference,
    loss_params,
)

from .loading import BUILTIN_PLUGIN, DISABLE_ENV, get_plugin_manager

logger = logging.getLogger(__name__)

BUILTIN_SOURCE = "trl-conservative (built-in)"


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
    "BUILTIN_SOURCE",
    "LossInfo",
    "LossRegistry",
    "available_losses",
    "build_registry",
    "get_loss",
    "get_registry",
    "loss_info",
    "registered_plugins",
    "reset_registry",
]
