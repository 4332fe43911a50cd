"""The plugin manager: built-in modules and third-party packages, registered alike.

Follows pytest's design: hook specs live in `gentk.hookspecs`; the host registers its own
component modules (`BUILTIN`) exactly like third-party plugins, which are found through
the ``gentk`` entry-point group of installed packages. A plugin that fails (on import,
on a misspelled hook, or inside a hook) is recorded with its package name and removed,
together with whatever it had registered, and the others keep working;
``GENTK_STRICT_PLUGINS=1`` turns such a failure into an error.

Each call of `load_plugins` makes a fresh manager and fresh registries: there is no
module-global state to reset between tests.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import attrs
import pluggy

from gentk import contracts, hookspecs
from gentk.errors import DuplicateNameError, PluginError
from gentk.registry import KINDS, Registries

hookimpl = pluggy.HookimplMarker("gentk")

ENTRY_POINT_GROUP = "gentk"

# Built-in component modules, registered through the same hooks as any plugin.
BUILTIN: tuple[str, ...] = (
    "gentk.optim",
    "gentk.data.datasets",
    "gentk.encoders",
    "gentk.priors",
    "gentk.regularizers",
    "gentk.decoders",
    "gentk.pixelcnn",
    "gentk.metrics",
)


@attrs.define
class PluginInfo:
    """A plugin as `gentk plugins` reports it."""

    name: str  # entry-point name, or module name for built-ins and -p modules
    module: str
    package: str  # distribution name ("gentk" for built-ins)
    version: str
    source: str  # "builtin", "entry point" or "-p"


@attrs.define
class PluginFailure:
    """A plugin that was dropped, and why."""

    name: str
    package: str
    stage: str  # "import", "validation" or the hook's name
    error: str
    details: str  # the traceback, for `gentk plugins -v`

    def describe(self) -> str:
        return f"plugin '{self.name}' (package {self.package}) failed during {self.stage}: {self.error}"


class _Manager(pluggy.PluginManager):
    """Accepts unmarked ``gentk_*`` functions as hook implementations, as pytest does."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("gentk_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


@attrs.define
class Plugins:
    """A plugin manager with its registries filled, plus what loaded and what failed."""

    pm: pluggy.PluginManager
    registries: Registries
    loaded: list[PluginInfo] = attrs.Factory(list)
    failures: list[PluginFailure] = attrs.Factory(list)
    clashes: list[str] = attrs.Factory(list)  # names registered twice (load_plugins(clashes="keep"))

    def get(self, kind: str, name: str):
        """Shortcut for ``registries[kind].get(name)``."""
        return self.registries[kind].get(name)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _disabled_names(disable: Iterable[str]) -> set[str]:
    """Names from ``-p no:NAME`` arguments and plain names."""
    out = set()
    for item in disable:
        out.add(item[3:] if item.startswith("no:") else item)
    return out


def load_plugins(
    *,
    plugins: Iterable[str | ModuleType | object] = (),
    disable: Iterable[str] = (),
    autoload: bool | None = None,
    strict: bool | None = None,
    builtin: Iterable[str] | None = None,
    clashes: str = "raise",
) -> Plugins:
    """Build a fresh plugin manager and fill fresh registries.

    plugins: extra plugins, as module names (like ``gentk -p MODULE``) or objects.
    disable: names to skip (``"NAME"`` or ``"no:NAME"``): an entry-point name, a package
        name, or a built-in module's name (``gentk.pixelcnn`` or just ``pixelcnn``).
    autoload: load the ``gentk`` entry points; default: unless GENTK_DISABLE_PLUGIN_AUTOLOAD.
    strict: raise `PluginError` on the first failure; default: GENTK_STRICT_PLUGINS.
    builtin: the built-in modules to register (default: `BUILTIN`).
    clashes: "raise": a name registered twice raises `DuplicateNameError`; "keep": the
        second plugin is dropped and the clash recorded in ``Plugins.clashes``, so that
        `gentk plugins` and `gentk list` can still show it.
    """
    autoload = not _env_flag("GENTK_DISABLE_PLUGIN_AUTOLOAD") if autoload is None else autoload
    strict = _env_flag("GENTK_STRICT_PLUGINS") if strict is None else strict
    off = _disabled_names(disable)
    extra = list(plugins) + [m for m in os.environ.get("GENTK_PLUGINS", "").split(",") if m.strip()]

    pm = _Manager("gentk")
    pm.add_hookspecs(hookspecs)
    host = Plugins(pm=pm, registries=Registries(KINDS))

    def fail(name: str, package: str, stage: str, exc: BaseException) -> None:
        failure = PluginFailure(name, package, stage, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if strict:
            raise PluginError(failure.describe() + " (GENTK_STRICT_PLUGINS is set; unset it to skip failing plugins).") from exc
        host.failures.append(failure)

    candidates: list[tuple[PluginInfo, Any]] = []  # (info, loader)
    for module in BUILTIN if builtin is None else builtin:
        short = module.rsplit(".", 1)[-1]
        if module in off or short in off:
            continue
        candidates.append((PluginInfo(module, module, "gentk", _version("gentk"), "builtin"), module))
    if autoload:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            package = ep.dist.name if ep.dist is not None else "?"
            if ep.name in off or package in off:
                continue
            version = ep.dist.version if ep.dist is not None else "?"
            candidates.append((PluginInfo(ep.name, ep.value, package, version, "entry point"), ep))
    for item in extra:
        if isinstance(item, str):
            item = item.strip()
            if item in off:
                continue
            candidates.append((PluginInfo(item, item, item.split(".")[0], "?", "-p"), item))
        else:
            name = getattr(item, "__name__", repr(item))
            candidates.append((PluginInfo(name, name, name.split(".")[0], "?", "-p"), item))

    for info, loader in candidates:
        try:
            if isinstance(loader, importlib.metadata.EntryPoint):
                plugin = loader.load()
            elif isinstance(loader, str):
                plugin = importlib.import_module(loader)
            else:
                plugin = loader
        except Exception as exc:  # a broken third-party package must not take gentk down
            fail(info.name, info.package, "import", exc)
            continue
        if pm.is_registered(plugin):
            continue  # the same module reached twice (e.g. an entry point and -p)
        try:
            pm.register(plugin, name=info.name)
            pm.check_pending()  # a misspelled gentk_* hook is an error, not a silent no-op
        except Exception as exc:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
            fail(info.name, info.package, "validation", exc)
            continue
        if not _register_components(host, plugin, info, fail, keep_clashes=clashes == "keep"):
            continue
        host.loaded.append(info)
    return host


def plugins_or_default(plugins: Plugins | None) -> Plugins:
    """`plugins` itself, or a fresh `load_plugins()`: what every function taking ``plugins=None`` uses."""
    return plugins if plugins is not None else load_plugins()


def _register_components(host: Plugins, plugin: object, info: PluginInfo, fail, *, keep_clashes: bool = False) -> bool:
    """Call the plugin's register hooks; on failure undo what it registered and drop it.

    A name registered twice is not a plugin failure but an error: which component a recipe
    means must never depend on the order plugins happen to load in.
    """
    owner = info.package if info.source == "entry point" else info.name
    for kind in KINDS:
        hook_name = f"gentk_register_{kind}"
        registry = host.registries[kind]
        for impl in getattr(host.pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue

            def register(name, factory, *, config=None, doc=None, _registry=registry):
                contracts.check_factory(_registry.kind, name, factory, owner)  # a missing member drops the plugin, named
                return _registry.register(name, factory, plugin=owner, config=config, doc=doc)

            try:
                impl.function(register=register)
            except DuplicateNameError as exc:
                way_out = f"To run without plugin '{owner}': gentk -p no:{owner} COMMAND ..."
                if not keep_clashes:
                    raise DuplicateNameError(f"{exc} {way_out}") from None
                _drop(host, plugin, owner)
                host.clashes.append(f"{exc} {way_out} (`gentk plugins` shows every clash.)")
                return False
            except Exception as exc:
                _drop(host, plugin, owner)
                fail(info.name, info.package, hook_name, exc)
                return False
    return True


def _drop(host: Plugins, plugin: object, owner: str) -> None:
    for registry in host.registries:
        registry.unregister_plugin(owner)
    host.pm.unregister(plugin)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        from gentk import __version__

        return __version__
