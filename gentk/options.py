"""Declaring options: the attrs fields of component configs and recipe tables, and their docs.

A component declares the keys a recipe may set as an attrs class (its ``Config``) whose
fields use `option`: a type, a default, a range or choices, and a one-line doc. That class
is the one place each option is declared: the recipe loader (`gentk.recipe`) validates a
table against it, `option_docs` shows it in ``gentk list`` and the docs, and the component
is built with an instance of it (`configured`). A recipe table that picks a registered
component is declared with `component`; its validated value is a `ComponentSpec`.

This module imports neither torch nor the recipe loader, so a plugin that declares options
pulls in nothing heavy.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from gentk.errors import did_you_mean

REQUIRED = attrs.NOTHING


class OptionValueError(ValueError):
    """Raised by option validators; the recipe loader adds the file and key path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _range_validator(ge=None, gt=None, le=None, lt=None, choices=None):
    def check(instance, attribute, value):
        if value is None:
            return
        if choices is not None and value not in choices:
            raise OptionValueError(
                attribute.name, f"expected one of {', '.join(map(repr, choices))}, found {value!r}.{did_you_mean(str(value), map(str, choices))}"
            )
        if ge is not None and not value >= ge:
            raise OptionValueError(attribute.name, f"expected a value >= {ge}, found {value!r}")
        if gt is not None and not value > gt:
            raise OptionValueError(attribute.name, f"expected a value > {gt}, found {value!r}")
        if le is not None and not value <= le:
            raise OptionValueError(attribute.name, f"expected a value <= {le}, found {value!r}")
        if lt is not None and not value < lt:
            raise OptionValueError(attribute.name, f"expected a value < {lt}, found {value!r}")

    return check


def option(default: Any = REQUIRED, doc: str = "", *, ge=None, gt=None, le=None, lt=None, choices=None, validator=None, factory=None):
    """A recipe-settable option of a component or recipe table.

    ``doc`` is the one-line description shown by ``gentk list`` and docs/recipes.md. Range
    arguments (``ge``, ``gt``, ``le``, ``lt``, ``choices``) are checked on load; without a
    default the key is required. Element-wise checks (``ge`` on a list) apply to each item.
    """
    validators = []
    if any(v is not None for v in (ge, gt, le, lt, choices)):
        inner = _range_validator(ge, gt, le, lt, choices)

        def each(instance, attribute, value):
            if isinstance(value, (list, tuple)):
                for item in value:
                    inner(instance, attribute, item)
            elif isinstance(value, dict):
                for item in value.values():
                    inner(instance, attribute, item)
            else:
                inner(instance, attribute, value)

        validators.append(each)
    if validator is not None:
        validators.append(validator)
    metadata = {"doc": doc}
    if factory is not None:
        return attrs.field(factory=factory, validator=validators, metadata=metadata, kw_only=True)
    return attrs.field(default=default, validator=validators, metadata=metadata, kw_only=True)


def configured(config_class: type, config: Any = None, options: Mapping[str, Any] | None = None) -> Any:
    """The validated config a component is built with: `config` itself, or `options` validated into `config_class`.

    gentk builds a component with its config, ``factory(config=..., **context)``. Called
    from Python, a component may take keyword options instead (``KLRegularizer(size=2,
    prior=prior, head="gaussian", weight=0.5)``), which become the same config class, so
    that each default and range is written once, in the config.
    """
    if config is None:
        return config_class(**(options or {}))
    if options:
        raise TypeError(f"give a {config_class.__qualname__} or keyword options, not both (got a config and {', '.join(options)})")
    if not isinstance(config, config_class):
        raise TypeError(f"expected a {config_class.__qualname__}, got {type(config).__qualname__}")
    return config


@attrs.frozen
class ComponentSpec:
    """A validated component table: the registered ``name``, its options and shared options.

    ``config`` is an instance of the component's config class (None when it has none);
    ``common`` holds the options the host table declares for every component of its slot
    (for example ``batch_size`` in ``[data]``), or None.
    """

    kind: str
    name: str
    config: Any = None
    common: Any = None

    def options(self) -> dict[str, Any]:
        """The component's own options as keyword arguments."""
        return attrs.asdict(self.config, recurse=False) if self.config is not None else {}


def component(kind: str, doc: str = "", *, default: Mapping[str, Any] | None = None, optional: bool = False, common: type | None = None):
    """A table that picks a registered component of `kind` by ``name``.

    default: the table used when the key is absent (e.g. ``{"name": "none"}``).
    optional: the key may be absent, leaving None.
    common: an attrs class of options every component of this slot accepts.
    """
    metadata = {"doc": doc, "component": kind, "common": common, "default_table": default, "optional": optional}
    return attrs.field(default=None, metadata=metadata, kw_only=True)


def registered_names(kind: str, doc: str = "", *, default=()):
    """A list of names that must each be registered in the `kind` registry (e.g. metrics)."""
    return attrs.field(factory=lambda: list(default), metadata={"doc": doc, "registered": kind}, kw_only=True)


def internal(default=None):
    """A field that is not part of the TOML (bookkeeping such as the source path)."""
    return attrs.field(default=default, metadata={"internal": True}, kw_only=True, eq=False, repr=False)


# --------------------------------------------------------------------------- describing options


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (types.UnionType, typing.Union):
        members = [a for a in args if a is not type(None)]
        if all(a is bool or typing.get_origin(a) is Literal for a in members):  # true, false or 'auto'
            words = [w for a in members for w in (["true", "false"] if a is bool else map(repr, typing.get_args(a)))]
            return ", ".join(words[:-1]) + " or " + words[-1]
        return " or ".join(describe_type(a) for a in members)
    if origin in (list, tuple):
        return f"an array of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "an array"
    if origin is dict:
        return f"a table of {describe_type(args[1])}" if args else "a table"
    if attrs.has(tp):
        return "a table"
    if tp is ComponentSpec:
        return "a table with a 'name' key"
    return getattr(tp, "__name__", str(tp))


def unstructure(obj: Any) -> Any:
    """Recipe objects to plain TOML-ready data: attrs -> tables, None omitted, tuples -> arrays."""
    if isinstance(obj, ComponentSpec):
        out = {"name": obj.name}
        if obj.common is not None:
            out.update(unstructure(obj.common))
        if obj.config is not None:
            out.update(unstructure(obj.config))
        return out
    if attrs.has(type(obj)):
        out = {}
        for field in attrs.fields(type(obj)):
            if field.metadata.get("internal"):
                continue
            value = getattr(obj, field.name)
            if value is not None:
                out[field.name] = unstructure(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): unstructure(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    return obj


def option_docs(config: type | None) -> list[tuple[str, str, str, str]]:
    """(name, type, default, doc) for each option of a config class, for `gentk list` and docs."""
    if config is None:
        return []
    rows = []
    for field in attrs.fields(attrs.resolve_types(config)):
        if field.metadata.get("internal"):
            continue
        if "component" in field.metadata:
            tp = f"{field.metadata['component'][:-1]} table"
        else:
            tp = describe_type(field.type)
        if field.default is REQUIRED:
            default = "required"
        elif isinstance(field.default, attrs.Factory):
            default = repr(unstructure(field.default.factory())) if not field.default.takes_self else "-"
        elif "default_table" in field.metadata and field.metadata["default_table"]:
            default = repr(dict(field.metadata["default_table"]))
        else:
            default = repr(field.default)
        rows.append((field.name, tp, default, field.metadata.get("doc", "")))
    return rows
