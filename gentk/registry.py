"""Registries: one per kind of component, each mapping a name to a factory.

An entry binds a name (what a recipe writes in ``name = "..."``) to a factory (usually a
class) and its config class: an attrs class whose fields declare, validate and document
the keys a recipe may set (see `gentk.options.option`). Building a component calls
``factory(config=config, **context)``: the config is the validated instance of that class
(its defaults when the recipe sets nothing), the context what the host knows and the
recipe does not (an image shape, a latent size); each kind documents its context in
`gentk.hookspecs`. A factory without a ``config`` parameter (a plugin written for gentk
before this convention) gets the config's fields as keyword arguments instead.

Registries are filled by plugins through the ``gentk_register_<kind>`` hooks, built-in
components included, so the core never imports a component by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from gentk.contracts import check_built
from gentk.errors import DuplicateNameError, RegistryError, did_you_mean

KINDS = (
    "encoders",
    "decoders",
    "priors",
    "regularizers",
    "datasets",
    "metrics",
    "optimizers",
    "schedules",
)


def first_line(text: str | None) -> str:
    """The first non-empty line of a docstring, stripped."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@attrs.frozen
class Entry:
    """A registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type | None  # attrs class of recipe-settable options, None for "no options"
    plugin: str  # the plugin that registered it (a package or built-in module name)
    doc: str

    def build(self, config: Any = None, **context: Any) -> Any:
        """Call the factory with the validated config (None: the config's defaults) and the
        host's context; the component must meet its kind's contract (`gentk.contracts`)."""
        if takes_config(self.factory):
            if config is None and self.config is not None:
                config = self.config()
            component = self.factory(config=config, **context)
        else:  # the older convention: the options as keyword arguments
            fields = attrs.asdict(config, recurse=False) if config is not None else {}
            component = self.factory(**fields, **context)
        check_built(self.kind, self.name, component, self.plugin)
        return component


def takes_config(factory: Callable[..., Any]) -> bool:
    """Whether a factory has a ``config`` parameter, to receive its validated config."""
    try:
        return "config" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


class Registry:
    """Names of one kind of component, each bound to a factory and a config class."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        plugin: str = "<unknown>",
        config: type | None = None,
        doc: str | None = None,
    ) -> Entry:
        """Bind `name` to `factory`.

        The config class is `config`, else ``factory.Config``; a factory without options
        may have neither. Registering a name twice is an error that names both plugins.
        """
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind}: a component name must be a non-empty string, got {name!r} (from plugin {plugin}).")
        if name in self._entries:
            old = self._entries[name]
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered twice: by plugin '{old.plugin}' and by plugin '{plugin}'. "
                f"Rename one of them, or disable one plugin with `gentk -p no:NAME` or GENTK_DISABLE_PLUGIN_AUTOLOAD=1."
            )
        config = config if config is not None else getattr(factory, "Config", None)
        if config is not None and not attrs.has(config):
            raise RegistryError(
                f"{self.kind} '{name}' from plugin '{plugin}': its config {config!r} is not an attrs class. "
                "Declare the options with @attrs.define and gentk.options.option()."
            )
        entry = Entry(self.kind, name, factory, config, plugin, doc if doc is not None else first_line(factory.__doc__))
        self._entries[name] = entry
        return entry

    def unregister_plugin(self, plugin: str) -> list[str]:
        """Remove every entry a plugin added (used when a plugin fails half-way)."""
        removed = [n for n, e in self._entries.items() if e.plugin == plugin]
        for n in removed:
            del self._entries[n]
        return removed

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none registered)"
            raise RegistryError(
                f"unknown {self.kind[:-1]} '{name}'. Known {self.kind}: {known}.{did_you_mean(name, self._entries)}"
                " Run `gentk list` to see every component and its plugin."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


class Registries:
    """One `Registry` per kind, reachable as attributes (``registries.priors``) or by key."""

    def __init__(self, kinds: tuple[str, ...] = KINDS) -> None:
        self._by_kind = {kind: Registry(kind) for kind in kinds}

    def __getattr__(self, kind: str) -> Registry:
        try:
            return self.__dict__["_by_kind"][kind]
        except KeyError:
            raise AttributeError(kind) from None

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise RegistryError(
                f"unknown kind of component '{kind}'. Kinds: {', '.join(self._by_kind)}.{did_you_mean(kind, self._by_kind)}"
            ) from None

    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._by_kind.values())
