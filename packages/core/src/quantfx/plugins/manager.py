"""The plugin manager: loads backend plugins and gives each hook a typed method.

Core code asks this facade ("which backends exist", "what is backend X's config
after every plugin extended it") and never touches ``pm.hook`` itself.

Entry points of the group ``quantfx.backends`` are loaded one at a time, so a
broken plugin is recorded by name with its cause while the others keep working
(pluggy's ``load_setuptools_entrypoints`` would let the first ImportError escape).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from quantfx.errors import PluginLoadError, QuantfxError, UnknownBackendError, ValidationError
from quantfx.plugins import hookspecs
from quantfx.plugins.backend import KNOWN_BACKEND_PACKAGES, Backend

if TYPE_CHECKING:
    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV_VAR",
    "PluginInfo",
    "PluginLoadFailure",
    "QuantfxPluginManager",
]

logger = logging.getLogger("quantfx.plugins")

#: The entry-point group backend packages declare in their pyproject.toml.
ENTRY_POINT_GROUP = "quantfx.backends"
#: Comma-separated entry-point names to load; unset loads all. Core's own
#: ``reference`` backend is always loaded.
PLUGINS_ENV_VAR = "QUANTFX_PLUGINS"

_CORE_DISTRIBUTION = "quantfx-core"
_BUILTIN_PLUGIN_NAME = "reference"
_BUILTIN_PLUGIN_MODULE = "quantfx.reference_backend"
_BACKEND_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin: where it came from and which hooks it implements."""

    name: str
    distribution: str | None
    version: str | None
    source: Literal["entry_point", "builtin", "in_process"]
    hooks: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginLoadFailure:
    """A plugin that could not be used, kept so users see its name and cause."""

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None
    cause: str
    error: PluginLoadError
    missing_dependency: bool = False

    @property
    def message(self) -> str:
        """The full sentence, as raised: names the plugin, distribution and cause."""
        return str(self.error)


def _normalize_dist(name: str | None) -> str | None:
    return None if name is None else re.sub(r"[-_.]+", "-", name).lower()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _selected_plugins() -> frozenset[str] | None:
    raw = os.environ.get(PLUGINS_ENV_VAR)
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)


class QuantfxPluginManager:
    """Typed facade over a pluggy `PluginManager` for project ``quantfx``.

    Loading is lazy (on the first question), so ``import quantfx`` stays cheap.
    `load_entry_points=False` gives a manager with only the built-in
    ``reference`` backend plus whatever is `register`-ed in process.
    """

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager("quantfx")
        self._pm.add_hookspecs(hookspecs)
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._lock = threading.RLock()
        self._infos: dict[str, PluginInfo] = {}
        self._load_failures: list[PluginLoadFailure] = []
        self._hook_failures: list[PluginLoadFailure] = []
        self._skipped: dict[str, str | None] = {}  # filtered out by QUANTFX_PLUGINS
        self._selected: frozenset[str] | None = None
        self._backends: dict[str, Backend] | None = None
        self._owners: dict[str, str] = {}

    # ------------------------------------------------------------------ loading

    @property
    def pluggy_manager(self) -> pluggy.PluginManager:
        """The underlying pluggy manager, for tools that introspect hooks."""
        self._ensure_loaded()
        return self._pm

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if self._load_entry_points:
                self._load_from_entry_points()
            self._register_builtin_fallback()
            self._loaded = True

    def _load_from_entry_points(self) -> None:
        self._selected = _selected_plugins()
        eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))

        def dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
            dist = getattr(ep, "dist", None)
            if dist is None:
                return None, None
            return dist.metadata["Name"], dist.version

        def is_core(ep: importlib.metadata.EntryPoint) -> bool:
            return _normalize_dist(dist_of(ep)[0]) == _CORE_DISTRIBUTION

        # core's own entry points first, so a built-in name is never lost to a
        # third party; then a stable order independent of sys.path.
        eps.sort(key=lambda ep: (not is_core(ep), ep.name, dist_of(ep)[0] or ""))
        for ep in eps:
            dist_name, version = dist_of(ep)
            if self._selected is not None and not is_core(ep) and ep.name not in self._selected:
                self._skipped[ep.name] = dist_name
                logger.debug("Skipping plugin %r: not listed in %s", ep.name, PLUGINS_ENV_VAR)
                continue
            self._load_one(ep, dist_name, version)
        if self._selected is not None:
            found = {ep.name for ep in eps}
            missing = sorted(self._selected - found)
            if missing:
                logger.warning(
                    "%s names plugin(s) that are not installed: %s (installed: %s)",
                    PLUGINS_ENV_VAR,
                    ", ".join(missing),
                    ", ".join(sorted(found)) or "none",
                )

    def _load_one(
        self, ep: importlib.metadata.EntryPoint, dist_name: str | None, version: str | None
    ) -> None:
        def fail(cause: str, exc: BaseException, *, missing_dependency: bool = False) -> None:
            error = PluginLoadError(
                f"Error importing plugin '{ep.name}' (distribution {dist_name or 'unknown'}): {cause}"
            )
            error.__cause__ = exc
            self._load_failures.append(
                PluginLoadFailure(
                    name=ep.name,
                    distribution=dist_name,
                    version=version,
                    entry_point=ep.value,
                    cause=cause,
                    error=error,
                    missing_dependency=missing_dependency,
                )
            )
            logger.debug("%s", error, exc_info=exc)

        if self._pm.has_plugin(ep.name):
            other = self._infos.get(ep.name)
            other_dist = other.distribution if other else None
            fail(
                f"plugin name '{ep.name}' is already taken by distribution "
                f"{other_dist or 'unknown'}; uninstall one of them",
                ValueError(ep.name),
            )
            return
        try:
            plugin = ep.load()
        except ImportError as exc:
            # A missing runtime (tensorrt, openvino ...) is the common case; the
            # plugin's own module missing, or a name missing from quantfx (version
            # mismatch), is a broken install instead.
            missing = getattr(exc, "name", None)
            own = missing is not None and (ep.module == missing or ep.module.startswith(missing + "."))
            fail(_describe(exc), exc, missing_dependency=isinstance(exc, ModuleNotFoundError) and not own)
            return
        except (Exception, SystemExit) as exc:
            fail(_describe(exc), exc)
            return
        if self._pm.is_registered(plugin):
            logger.debug("Plugin %r: %s is already registered", ep.name, ep.value)
            return
        try:
            self._pm.register(plugin, name=ep.name)
        except Exception as exc:  # pluggy.PluginValidationError: hookimpl signature wrong
            fail(_describe(exc), exc)
            return
        self._record(plugin, ep.name, dist_name, version, "entry_point")

    def _register_builtin_fallback(self) -> None:
        """Register the reference backend directly when no package metadata exposed it."""
        import importlib

        module = importlib.import_module(_BUILTIN_PLUGIN_MODULE)
        if self._pm.is_registered(module):
            return
        name = _BUILTIN_PLUGIN_NAME
        if self._pm.has_plugin(name):
            name = _BUILTIN_PLUGIN_MODULE
        try:
            version: str | None = importlib.metadata.version(_CORE_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = None
        logger.debug(
            "Entry point %r of %s not loaded; registering %s directly",
            _BUILTIN_PLUGIN_NAME,
            _CORE_DISTRIBUTION,
            _BUILTIN_PLUGIN_MODULE,
        )
        self._pm.register(module, name=name)
        self._record(module, name, _CORE_DISTRIBUTION, version, "builtin")

    def _record(
        self,
        plugin: object,
        name: str,
        dist_name: str | None,
        version: str | None,
        source: Literal["entry_point", "builtin", "in_process"],
    ) -> None:
        callers = self._pm.get_hookcallers(plugin) or []
        for caller in callers:
            if not caller.has_spec():
                logger.warning(
                    "Plugin %r implements %r, which is not a quantfx hook (typo?); known hooks: %s",
                    name,
                    caller.name,
                    ", ".join(h for h in hookspecs.__all__ if h != "hookspec"),
                )
        self._infos[name] = PluginInfo(
            name=name,
            distribution=dist_name,
            version=version,
            source=source,
            hooks=tuple(sorted(c.name for c in callers)),
        )

    # -------------------------------------------------------- in-process plugins

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register `plugin` in process (tests, notebooks); returns its plugin name.

        The plugin's backends are checked at once, so a duplicate backend name
        raises here, naming both plugins, and the plugin is not kept.
        """
        self._ensure_loaded()
        with self._lock:
            if name is None:
                name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
            if self._pm.has_plugin(name):
                raise ValidationError(
                    f"A quantfx plugin named '{name}' is already registered; "
                    f"pass another name= or unregister it first"
                )
            if self._pm.is_registered(plugin):
                raise ValidationError(
                    f"{plugin!r} is already registered as plugin '{self._pm.get_name(plugin)}'"
                )
            try:
                self._pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:
                raise ValidationError(f"Plugin '{name}' has an invalid hook implementation: {exc}") from exc
            self._record(plugin, name, None, None, "in_process")
            self._backends = None
            self._compute_backends()
            failure = next((f for f in self._hook_failures if f.name == name), None)
            if failure is not None:
                self._unregister(plugin)
                original = failure.error.__cause__
                if isinstance(original, QuantfxError):
                    raise original
                raise failure.error
            return name

    def unregister(self, plugin: object | str) -> object:
        """Remove a plugin (object or plugin name); returns the plugin object."""
        self._ensure_loaded()
        with self._lock:
            obj = self._pm.get_plugin(plugin) if isinstance(plugin, str) else plugin
            if obj is None or not self._pm.is_registered(obj):
                raise ValidationError(
                    f"{plugin!r} is not a registered quantfx plugin; registered: "
                    f"{', '.join(sorted(self._infos)) or 'none'}"
                )
            self._unregister(obj)
            return obj

    def _unregister(self, plugin: object) -> None:
        name = self._pm.get_name(plugin)
        self._pm.unregister(plugin)
        self._infos.pop(name or "", None)
        self._backends = None

    # --------------------------------------------------------------- questions

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin, built-in and in-process ones included."""
        self._ensure_loaded()
        return list(self._infos.values())

    def plugin_info(self, plugin_name: str) -> PluginInfo | None:
        """Where plugin `plugin_name` came from, or None if it is not registered."""
        self._ensure_loaded()
        return self._infos.get(plugin_name)

    def load_errors(self) -> list[PluginLoadFailure]:
        """Plugins that failed to import or to register their backends."""
        self.backends()
        return [*self._load_failures, *self._hook_failures]

    def skipped_plugins(self) -> dict[str, str | None]:
        """Entry points not loaded because QUANTFX_PLUGINS does not list them (name -> distribution)."""
        self._ensure_loaded()
        return dict(self._skipped)

    def backends(self) -> dict[str, Backend]:
        """Every registered backend by name."""
        self._ensure_loaded()
        with self._lock:
            if self._backends is None:
                self._compute_backends()
            assert self._backends is not None
            return dict(self._backends)

    def backend_plugin(self, backend_name: str) -> str:
        """The name of the plugin that registered `backend_name`."""
        self.get_backend(backend_name)
        return self._owners[backend_name]

    def _compute_backends(self) -> None:
        registry: dict[str, Backend] = {}
        owners: dict[str, str] = {}
        self._hook_failures = []
        caller = self._pm.hook.quantfx_register_backends
        # Registration order: the plugin registered first keeps a contested name.
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                logger.warning(
                    "Plugin %r wraps quantfx_register_backends; wrappers are ignored there",
                    impl.plugin_name,
                )
                continue
            plugin_name = impl.plugin_name
            added: list[str] = []
            open_ = [True]

            def register(
                backend: Backend,
                *,
                _plugin: str = plugin_name,
                _added: list[str] = added,
                _open: list[bool] = open_,
            ) -> None:
                if not _open[0]:
                    raise ValidationError(
                        f"Plugin '{_plugin}' called register() after quantfx_register_backends "
                        f"returned; register backends inside the hook"
                    )
                if not isinstance(backend, Backend):
                    raise ValidationError(
                        f"Plugin '{_plugin}' registered {backend!r}, which is not a "
                        f"quantfx.plugins.Backend instance"
                    )
                bname = backend.name
                if not isinstance(bname, str) or not _BACKEND_NAME_RE.match(bname):
                    raise ValidationError(
                        f"Plugin '{_plugin}' registered {backend!r} with an invalid name "
                        f"{bname!r}: set the class attribute `name` to an identifier such as 'fbgemm'"
                    )
                if bname in registry:
                    raise ValidationError(
                        f"Backend '{bname}' is registered by both plugin '{owners[bname]}' "
                        f"and plugin '{_plugin}'; uninstall or unregister one of them"
                    )
                registry[bname] = backend
                owners[bname] = _plugin
                _added.append(bname)

            kwargs: dict[str, Any] = {"register": register}
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:
                for bname in added:
                    registry.pop(bname, None)
                    owners.pop(bname, None)
                info = self._infos.get(plugin_name)
                dist = info.distribution if info else None
                error = PluginLoadError(
                    f"Plugin '{plugin_name}' (distribution {dist or 'unknown'}) failed to "
                    f"register its backends: {_describe(exc)}"
                )
                error.__cause__ = exc
                self._hook_failures.append(
                    PluginLoadFailure(
                        name=plugin_name,
                        distribution=dist,
                        version=info.version if info else None,
                        entry_point=None,
                        cause=_describe(exc),
                        error=error,
                    )
                )
                logger.debug("%s", error, exc_info=exc)
            finally:
                open_[0] = False
        by_plugin: dict[str, list[str]] = {}
        for bname, pname in owners.items():
            by_plugin.setdefault(pname, []).append(bname)
        logger.debug(
            "Registered backends from %d plugin(s): %s",
            len(by_plugin),
            ", ".join(f"{p} ({', '.join(sorted(b))})" for p, b in by_plugin.items()),
        )
        self._backends = registry
        self._owners = owners

    def get_backend(self, name: str) -> Backend:
        """The backend called `name`; `UnknownBackendError` says what is installed and how to get it."""
        backends = self.backends()
        try:
            return backends[name]
        except (KeyError, TypeError):
            raise self._unknown_backend_error(name, backends) from None

    def _unknown_backend_error(self, name: str, backends: dict[str, Backend]) -> UnknownBackendError:
        installed = ", ".join(sorted(backends)) or "none"
        pip_name = KNOWN_BACKEND_PACKAGES.get(name)
        norm_pip = _normalize_dist(pip_name)
        failures = [
            f
            for f in self.load_errors()
            if f.name == name or (norm_pip is not None and _normalize_dist(f.distribution) == norm_pip)
        ]
        parts = [f"Unknown backend {name!r}."]
        if failures:
            parts.append(
                "Its plugin is installed but failed to load: "
                + "; ".join(f.message for f in failures)
                + "."
            )
        skipped = [
            p
            for p, dist in self._skipped.items()
            if p == name or (norm_pip is not None and _normalize_dist(dist) == norm_pip)
        ]
        if skipped:
            parts.append(
                f"Its plugin '{skipped[0]}' is installed but not loaded: "
                f"{PLUGINS_ENV_VAR}={os.environ.get(PLUGINS_ENV_VAR, '')!r} does not list it."
            )
        parts.append(f"Installed: {installed}.")
        close = difflib.get_close_matches(name, list(backends), n=1) if isinstance(name, str) else []
        if close:
            parts.append(f"Did you mean {close[0]!r}?")
        if pip_name and not failures and not skipped:
            parts.append(f"Install it with: pip install {pip_name}")
        elif not pip_name and not failures and not skipped and not close:
            parts.append(
                f"Backends come from packages with a {ENTRY_POINT_GROUP!r} entry point, e.g. "
                + ", ".join(sorted(set(KNOWN_BACKEND_PACKAGES.values())))
                + "."
            )
        return UnknownBackendError(" ".join(parts))

    # ------------------------------------------------------------- typed hooks

    def _call_hook(self, hook_name: str, /, **kwargs: Any) -> Any:
        caller = getattr(self._pm.hook, hook_name)
        try:
            return caller(**kwargs)
        except Exception as exc:
            implementers = ", ".join(impl.plugin_name for impl in caller.get_hookimpls())
            _add_note(
                exc,
                f"raised in quantfx hook {hook_name} for backend '{kwargs.get('backend_name')}' "
                f"(implemented by plugins: {implementers})",
            )
            raise

    def backend_config(self, name: str) -> BackendConfig:
        """Backend `name`'s BackendConfig after every `quantfx_extend_backend_config` hook.

        Each call builds a fresh copy, so extensions never leak into the
        backend's own config nor into another manager.
        """
        backend = self.get_backend(name)
        config = backend.get_backend_config().copy()
        self._call_hook(
            "quantfx_extend_backend_config", backend_name=name, backend_config=config
        )
        return config

    def lowering_rules(self, name: str) -> tuple[Any, ...]:
        """Every lowering rule plugins registered for backend `name`."""
        self.get_backend(name)
        rules: list[Any] = []
        self._call_hook(
            "quantfx_register_lowering_rules", backend_name=name, register=rules.append
        )
        return tuple(rules)

    def default_qconfig_mapping(self, name: str, is_qat: bool = False) -> QConfigMapping:
        """Backend `name`'s default QConfigMapping, unless a plugin overrides it."""
        backend = self.get_backend(name)
        override = self._call_hook(
            "quantfx_default_qconfig_mapping", backend_name=name, is_qat=is_qat
        )
        if override is not None:
            return override
        return backend.get_default_qconfig_mapping(is_qat=is_qat)
