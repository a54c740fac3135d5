"""Every hook a quantfx plugin can implement, in one place.

Plugins implement these with `quantfx.plugins.hookimpl`; core never calls
``pm.hook.*`` directly but goes through `QuantfxPluginManager`, which gives each
hook a typed method. Hooks are called with keyword arguments, so an
implementation may accept any subset of a hook's arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from quantfx.backend_config import BackendConfig
    from quantfx.plugins.backend import Backend
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = [
    "hookspec",
    "quantfx_register_backends",
    "quantfx_extend_backend_config",
    "quantfx_register_lowering_rules",
    "quantfx_default_qconfig_mapping",
]

hookspec = pluggy.HookspecMarker("quantfx")


@hookspec
def quantfx_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the backends this plugin provides: call ``register(backend)`` once per `Backend`.

    Backend names are global: registering a name another plugin already took
    raises `quantfx.errors.ValidationError` naming both plugins, and this
    plugin's backends are dropped (the other plugins keep working).
    """


@hookspec
def quantfx_extend_backend_config(backend_name: str, backend_config: BackendConfig) -> None:
    """Add or replace pattern configs of an existing backend, without forking it.

    Called each time a backend config is requested, on a fresh copy of the
    backend's own config: mutate `backend_config` in place (e.g.
    ``backend_config.set_backend_pattern_config(...)`` for a third-party fusion
    pattern); the return value is ignored. Check `backend_name` and do nothing
    for backends you do not extend.
    """


@hookspec
def quantfx_register_lowering_rules(backend_name: str, register: Callable[[Any], None]) -> None:
    """Add lowering rules for `backend_name`: call ``register(rule)`` once per rule.

    A rule is opaque to core; the backend's `Backend.lower` receives them all as
    ``lowering_rules`` and defines what they mean (e.g. ``(pattern, callable)``
    pairs). Do nothing for backends you do not extend.
    """


@hookspec(firstresult=True)
def quantfx_default_qconfig_mapping(backend_name: str, is_qat: bool) -> QConfigMapping | None:
    """Override the default QConfigMapping of `backend_name` (PTQ, or QAT when `is_qat`).

    Optional: return None to keep the backend's own default. The first non-None
    result wins (later-registered plugins are asked first, as in every pluggy hook).
    """
