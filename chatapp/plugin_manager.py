"""The pluggy plugin manager: built-ins from ``plugins.DEFAULT_PLUGINS``, then the ``chatapp``
entry-point group, minus anything named in ``CHATAPP_DISABLED_PLUGINS``."""
from __future__ import annotations

import importlib
import logging
from typing import Any, Iterable

import pluggy

from chatapp import hookspecs

log = logging.getLogger(__name__)


def make_plugin_manager(disabled: Iterable[str] = (), extra_plugins: Iterable[Any] = (),
                        modules: Iterable[str] = ()) -> pluggy.PluginManager:
    """A fresh manager per app, so tests and processes never share registrations.

    ``modules`` are extra plugin modules to import by dotted name (``CHATAPP_PLUGINS``), for
    operators who keep a plugin in their deployment instead of a package.
    """
    from plugins import DEFAULT_PLUGINS

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(disabled)
    for name in blocked:
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if module_name not in blocked:
            pm.register(importlib.import_module(module_name), name=module_name)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for module_name in modules:
        if module_name not in blocked and pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None)
        if name not in blocked:
            pm.register(plugin, name=name)
    return pm


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """What ``GET /-/plugins`` shows: each plugin's name, hooks and distribution."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = dists.get(id(plugin))
        out.append({
            "name": name,
            "hooks": hooks,
            "version": getattr(dist, "version", None) if dist else None,
            "package": dist.project_name if dist is not None and hasattr(dist, "project_name") else None,
        })
    return sorted(out, key=lambda p: p["name"])
