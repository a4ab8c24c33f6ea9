"""The plugin manager: the built-ins, then every installed entry point of the group `trl_conservative`.

Entry points blocked through `TRL_CONSERVATIVE_DISABLE_PLUGINS` (comma-separated entry-point or distribution
names) are never imported (pluggy's own block list). Only installed entry points are loaded: there is no setting
that imports a module from a path, so code runs only if a package in the environment declares it. A plugin that
fails to import, misspells a hook or breaks the hook contract is recorded (name -> error) and skipped.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs

__all__ = [
    "BUILTIN_PLUGIN",
    "DISABLE_ENV",
    "LoadedPlugins",
    "blocks",
    "disabled_plugins",
    "get_plugin_manager",
    "normalize_dist_name",
]

DISABLE_ENV = "TRL_CONSERVATIVE_DISABLE_PLUGINS"
BUILTIN_PLUGIN = "builtin"


def disabled_plugins() -> set[str]:
    """Plugin names blocked through the TRL_CONSERVATIVE_DISABLE_PLUGINS environment variable."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def normalize_dist_name(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


def blocks(name: str, ep: importlib.metadata.EntryPoint) -> bool:
    """Whether the block-list entry `name` blocks the entry point `ep`: its entry-point name, or its distribution's
    name in any spelling (`My_Plugin` blocks the distribution `my-plugin`)."""
    dist = ep.dist.name if ep.dist is not None else None
    return name == ep.name or (dist is not None and normalize_dist_name(name) == normalize_dist_name(dist))


@dataclass
class LoadedPlugins:
    """A plugin manager, the plugins that failed to load (name -> error), each entry point's distribution."""

    manager: pluggy.PluginManager
    failures: dict[str, str]
    dists: dict[str, Any]
    disabled: list[str] = field(default_factory=list)


def get_plugin_manager(extra_plugins: Iterable[tuple[str, object]] = ()) -> LoadedPlugins:
    """A plugin manager with the built-ins, the installed entry points and `extra_plugins` registered."""
    from trl_conservative.losses import builtin

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    loaded = LoadedPlugins(manager=pm, failures={}, dists={})
    failures = loaded.failures
    blocked = disabled_plugins()
    _register_checked(pm, builtin, BUILTIN_PLUGIN, failures)
    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
        dist_name = ep.dist.name if ep.dist is not None else None
        if any(blocks(name, ep) for name in blocked):
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
