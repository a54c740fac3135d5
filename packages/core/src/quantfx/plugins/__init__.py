"""quantfx's plugin system: backends are pluggy plugins found by entry point.

A backend package declares::

    [project.entry-points."quantfx.backends"]
    fbgemm = "quantfx_fbgemm.plugin"

and its plugin module implements hooks from `quantfx.plugins.hookspecs`::

    from quantfx.plugins import Backend, hookimpl

    @hookimpl
    def quantfx_register_backends(register):
        register(FbgemmBackend())

`register(obj)` adds a plugin in process (tests, notebooks) without packaging.
"""

from __future__ import annotations

import threading

import pluggy

from quantfx.plugins.backend import KNOWN_BACKEND_PACKAGES, Availability, Backend
from quantfx.plugins.manager import (
    ENTRY_POINT_GROUP,
    PLUGINS_ENV_VAR,
    PluginInfo,
    PluginLoadFailure,
    QuantfxPluginManager,
)

__all__ = [
    "hookimpl",
    "register",
    "unregister",
    "get_plugin_manager",
    "load_errors",
    "Backend",
    "Availability",
    "KNOWN_BACKEND_PACKAGES",
    "QuantfxPluginManager",
    "PluginInfo",
    "PluginLoadFailure",
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV_VAR",
]

hookimpl = pluggy.HookimplMarker("quantfx")

_plugin_manager: QuantfxPluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager() -> QuantfxPluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first use."""
    global _plugin_manager
    if _plugin_manager is None:
        with _lock:
            if _plugin_manager is None:
                _plugin_manager = QuantfxPluginManager()
    return _plugin_manager


def register(plugin: object, name: str | None = None) -> str:
    """Register an in-process plugin (an object or module with hookimpls); returns its name.

    Backend lists and configs are recomputed afterwards; a backend name that
    another plugin already provides raises `quantfx.errors.ValidationError`.
    """
    return get_plugin_manager().register(plugin, name)


def unregister(plugin: object | str) -> object:
    """Remove an in-process (or any) plugin, given the object or its plugin name."""
    return get_plugin_manager().unregister(plugin)


def load_errors() -> list[PluginLoadFailure]:
    """Plugins that failed to import or register, each with its name, distribution and cause."""
    return get_plugin_manager().load_errors()
