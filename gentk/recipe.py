"""Recipes: TOML files that assemble and train a model, validated before anything runs.

A recipe is a tree of tables (docs/architecture.md, "The recipe tree"). A table that
picks a component has a ``name`` key naming a registered component; its other keys are
that component's options, declared by the component as an attrs class whose fields use
`gentk.options.option` (type, default, range, one-line doc). The fixed tables
(``[data]``, ``[model]``, ``[train]``, ``[eval]``) are the attrs classes below.

Reading a recipe:
1. parse the TOML file; ``extends = "base.toml"`` (or a list) deep-merges the named files
   first (tables merge, arrays and values replace; paths relative to the recipe);
2. apply the profile chosen with ``--profile NAME``: the ``[profiles.NAME]`` table, whose
   keys are key paths as ``--set`` takes them, merged over the recipe as step 1 merges;
3. apply ``--set key.path=VALUE`` overrides (VALUE parsed as TOML; a bare word is a string);
4. structure the merged tree into `Recipe`, checking every key, type and range.

Every error raised here is a `RecipeError` naming the file the offending key came from,
its key path, what was expected, what was found and the closest valid key.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from gentk import contracts
from gentk.errors import RecipeError, RegistryError, closest, did_you_mean

# The declaration API lives in gentk.options; these names stay importable from here.
from gentk.options import (  # noqa: F401
    REQUIRED,
    ComponentSpec,
    OptionValueError,
    component,
    describe_type,
    internal,
    option,
    option_docs,
    registered_names,
    unstructure,
)
from gentk.plugins import plugins_or_default

# --------------------------------------------------------------------------- the recipe tables

PHASES = ("reconstruction", "regularization", "supervised")


@attrs.frozen
class DataOptions:
    """Options of the ``[data]`` table shared by every dataset."""

    batch_size: int = option(100, "training examples per step (global: split across DDP ranks)", ge=1)
    labeled: int = option(0, "labeled training examples for semi-supervised runs, balanced across classes (0: unsupervised)", ge=0)
    labeled_batch_size: int | None = option(None, "examples per labeled batch (default: batch_size)", ge=1)
    validation: int | None = option(None, "examples held out of train for validation (default: the dataset's own)", ge=0)
    root: str | None = option(None, "directory holding the dataset files (default: $GENTK_DATA, else the user cache)")
    download: bool = option(True, "download missing files (with checksums) when a network is available")
    on_device: Literal["auto"] | bool = option(
        "auto", "keep the training split on the GPU and gather batches there (auto: on CUDA or MPS when it takes at most a tenth of the free memory)"
    )


def _categorical_if_supervised(instance, attribute, value) -> None:
    """Labels supervise a head through its logits, which only a categorical head has."""
    if value and instance.head != "categorical":
        raise OptionValueError(attribute.name, f"only a categorical head can be supervised by labels; this latent's head is '{instance.head}'.")


@attrs.frozen
class LatentSpec:
    """One named latent: its size, the encoder head that produces it, its prior and regularizer."""

    size: int = option(REQUIRED, "dimension (Gaussian) or number of categories (categorical)", ge=1)
    head: Literal["deterministic", "gaussian", "categorical"] = option(
        "deterministic", "encoder output: deterministic (linear), gaussian (mean, log-variance), categorical (softmax)"
    )
    prior: ComponentSpec = component("priors", "the prior p(z) this latent is matched to", default={"name": "standard_normal"})
    regularizer: ComponentSpec = component("regularizers", "how q(z) is matched to p(z): kl, adversarial or none", default={"name": "none"})
    supervised: bool = option(
        False, "also train this head with cross-entropy on labeled examples (categorical heads)", validator=_categorical_if_supervised
    )


@attrs.frozen
class ModelSpec:
    """The ``[model]`` table: an encoder, named latents and a decoder."""

    encoder: ComponentSpec | None = component("encoders", "the recognition network (absent for a plain PixelCNN)", optional=True)
    latents: dict[str, LatentSpec] = option(factory=dict, doc="the named latents, each [model.latents.NAME]")
    decoder: ComponentSpec = component("decoders", "the likelihood model p(x|z)")


@attrs.frozen
class OptimizerOptions:
    """Options every optimizer table accepts."""

    part_lr: dict[str, float] = option(factory=dict, doc="learning rates for parts of the model, e.g. { encoder = 1e-4 }", gt=0)


@attrs.frozen
class PhaseSpec:
    """One training phase's optimizer and schedule."""

    optimizer: ComponentSpec = component("optimizers", "the optimizer of this phase", default={"name": "adam"}, common=OptimizerOptions)
    schedule: ComponentSpec = component("schedules", "the learning-rate schedule", default={"name": "constant"})
    clip_grad: float | None = option(None, "clip the gradient norm to this value", gt=0)


@attrs.frozen
class TrainSpec:
    """The ``[train]`` table."""

    steps: int = option(10000, "training steps (each runs every phase once)", ge=1)
    minutes: float | None = option(
        None,
        "wall-clock budget in minutes, counted over resumes: training stops at the first step past it, saves and runs the final evaluation "
        "(steps stays the upper bound and sets the schedules' length)",
        gt=0,
    )
    log_every: int = option(50, "steps between logged scalars", ge=1)
    checkpoint_every: int = option(1000, "steps between checkpoints", ge=1)
    keep_last: int = option(3, "periodic checkpoints kept besides latest and best", ge=1)
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    amp: Literal["none", "bf16", "fp16"] = option("none", "automatic mixed precision on CUDA")
    compile: bool = option(False, "torch.compile the model")
    deterministic: bool = option(False, "use deterministic algorithms (slower on GPU)")
    ema: float = option(0.0, "decay of an exponential moving average of the weights used for evaluation (0: off)", ge=0.0, lt=1.0)
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)", ge=1)
    phases: dict[Literal["reconstruction", "regularization", "supervised"], PhaseSpec] = option(factory=dict, doc="optimizer and schedule per phase")
    phase_defaults: dict[str, PhaseSpec] = internal(attrs.Factory(dict))  # a phase without a table, filled in when the recipe loads

    def phase(self, name: str) -> PhaseSpec:
        """Phase `name`'s optimizer, schedule and clipping: its ``[train.phases.NAME]`` table, else the format's defaults."""
        spec = self.phases.get(name) or self.phase_defaults.get(name)
        if spec is None:
            raise RecipeError(
                f"train.phases.{name}: this recipe has no such table, and its defaults were not filled in (a TrainSpec built by hand, not by "
                "gentk.load_recipe). Add the table, or load the recipe with gentk.load_recipe."
            )
        return spec


@attrs.frozen
class EvalSpec:
    """The ``[eval]`` table."""

    every: int = option(1000, "steps between evaluations", ge=1)
    metrics: list[str] = registered_names("metrics", "metrics computed at each evaluation")
    samples: int = option(64, "images in each sample grid (0: none)", ge=0)
    max_examples: int | None = option(None, "examples of each evaluation during training (default: all)", ge=1)
    test_examples: int | None = option(
        None, "test examples of the final test metrics (gentk run's closing table, gentk compare's results; default: all)", ge=1
    )


def _one_path_component(instance, attribute, value) -> None:
    """A name that becomes a folder under --out: it must not be empty, leave --out or nest."""
    bad = not isinstance(value, str) or value.strip() in ("", ".", "..") or any(c in value for c in "/\\\0") or value != value.strip()
    if bad:
        raise OptionValueError(
            attribute.name,
            f"expected one folder name (letters, digits, '-', '_', '.'), found {value!r}: the run directory is --out/NAME-TIME, so a name must "
            "not be empty, '.' or '..', contain '/', '\\' or a NUL byte, or start or end with a space. For example name = \"aae_mnist\".",
        )


@attrs.frozen
class Recipe:
    """A whole recipe, validated."""

    name: str = option(REQUIRED, "the run's name (default: the file's stem); one folder name", validator=_one_path_component)
    seed: int = option(0, "seed of every random number generator", ge=0)
    description: str = option("", "a line saying what this recipe reproduces")
    data: ComponentSpec = component("datasets", "the dataset and how it is batched", common=DataOptions)
    model: ModelSpec = option(REQUIRED, "the model's parts")
    train: TrainSpec = option(factory=TrainSpec, doc="the training budget and optimizers")
    eval: EvalSpec = option(factory=EvalSpec, doc="what is measured during and after training")
    source: str | None = internal()
    profile: str | None = internal()  # the [profiles.NAME] applied, if any
    profiles: tuple[str, ...] = internal(())  # the profiles the recipe file offers

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain TOML-ready data (defaults filled, None omitted)."""
        return unstructure(self)

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


# --------------------------------------------------------------------------- reading TOML


def read_toml(path: str | Path, *, what: str = "recipe") -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a `RecipeError`."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            match = closest(path.name, [p.name for p in path.parent.glob("*.toml")])
            hint = f" Did you mean '{path.parent / match}'?" if match else ""
        raise RecipeError(f"{what} file '{path}' does not exist.{hint}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}. Fix the syntax there (strings need quotes, tables [name], arrays [1, 2]).") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file; a recipe is a TOML text file.") from None


def _record_origins(tree: Mapping[str, Any], origin: str, prefix: tuple, origins: dict[tuple, str]) -> None:
    for key, value in tree.items():
        origins[prefix + (key,)] = origin
        if isinstance(value, Mapping):
            _record_origins(value, origin, prefix + (key,), origins)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `top` over `base`: tables merge, everything else (arrays too) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_extends(path: str | Path, origins: dict[tuple, str] | None = None, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and the recipes it extends, merged; fills `origins` (key path -> file)."""
    path = Path(path)
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(str(p) for p in _stack + (real,))
        raise RecipeError(f"{path}: 'extends' forms a cycle: {chain}. Remove one of these 'extends' lines.")
    origins = {} if origins is None else origins
    tree = read_toml(path, what="recipe" if not _stack else f"recipe '{_stack[-1]}' extends a")
    parents = tree.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(f"{path}: extends: expected a file name or an array of file names, found {parents!r}.")
    if "profiles" in tree:
        tree["profiles"] = _profile_tables(tree["profiles"], path)
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
        if not parent_path.is_file():
            raise RecipeError(
                f"{path}: extends: the file '{parent}' (looked for at {parent_path}) does not exist. Paths in 'extends' are relative to the "
                "recipe that names them."
            )
        merged = _merge(merged, resolve_extends(parent_path, origins, _stack + (real,)))
    _record_origins(tree, str(path), (), origins)
    return _merge(merged, tree)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


def parse_override(
    text: str, *, flag: str = "--set", form: str = "KEY.PATH", example: str = "train.steps=500", path_example: str = "model.decoder.layers"
) -> tuple[tuple[str, ...], Any]:
    """Parse ``KEY.PATH=VALUE`` as given to `flag`: the dotted key path and the value.

    VALUE is TOML; a plain word (not true/false) is taken as a string. The one parser of
    the command line's ``KEY=VALUE`` arguments (``--set``, ``gentk eval --option``).
    """
    if "=" not in text:
        raise RecipeError(f"{flag} {text}: expected {form}=VALUE, for example {flag} {example}.")
    key, _, raw = text.partition("=")
    path = tuple(part.strip() for part in key.strip().split("."))
    if not all(_BARE_KEY.match(p) for p in path):
        raise RecipeError(f"{flag} {text}: '{key}' is not a dotted key path such as {path_example}.")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if _PLAIN_WORD.match(raw) and raw not in ("true", "false"):
            value = raw
        else:
            raise RecipeError(
                f"{flag} {text}: cannot parse '{raw}' as a TOML value. Write numbers as 3 or 1e-3, booleans as true/false, "
                "strings as a plain word or in quotes ('\"two words\"'), arrays as [1, 2], tables as {a = 1}."
            ) from None
    return path, value


def apply_overrides(tree: dict[str, Any], overrides: Iterable[str], origins: dict[tuple, str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a merged recipe tree (returns a new tree)."""
    tree = _merge({}, tree)
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise RecipeError(f"--set {text}: '{where}' is a value ({child!r}), not a table, so it has no key '{path[depth + 1]}'.")
            else:
                child = node[part] = dict(child)
            node = child
        node[path[-1]] = value
        origins[path] = f"--set {text}"
        if isinstance(value, Mapping):
            _record_origins(value, f"--set {text}", path, origins)
    return tree


def load_recipe(path: str | Path, overrides: Iterable[str] = (), *, profile: str | None = None, plugins=None) -> Recipe:
    """Read, merge and validate a recipe file, with its ``[profiles.NAME]`` `profile` and then the ``--set`` `overrides` applied.

    `plugins` defaults to `gentk.load_plugins()`.
    """
    origins: dict[tuple, str] = {}
    tree = resolve_extends(path, origins)
    if profile is not None:
        tree = apply_profile(tree, profile, origins, str(path))
    tree = apply_overrides(tree, overrides, origins)
    tree.setdefault("name", Path(path).stem)
    return recipe_from_dict(tree, plugins=plugins, source=str(path), origins=origins, profile=profile)


def recipe_from_dict(
    tree: Mapping[str, Any], *, plugins=None, source: str | None = None, origins: dict[tuple, str] | None = None, profile: str | None = None
) -> Recipe:
    """Validate a recipe given as a dict (as parsed from TOML); its ``profiles`` table, if any, is checked and kept by name only."""
    plugins = plugins_or_default(plugins)
    ctx = _Context(plugins.registries, origins or {}, source or "<recipe>")
    tree = dict(tree)
    profiles = _profile_tables(tree.pop("profiles", {}), ctx.where(("profiles",)))
    recipe = ctx.structure(Recipe, tree, ())
    recipe = attrs.evolve(recipe, source=source, train=_with_phase_defaults(recipe.train, ctx), profile=profile, profiles=tuple(sorted(profiles)))
    check_recipe(recipe, ctx)
    return recipe


# --------------------------------------------------------------------------- profiles


def _profile_tables(profiles: Any, where: str | Path) -> dict[str, dict[str, Any]]:
    """Check a ``[profiles]`` table (a table of tables) and spell each profile's dotted keys as nested tables.

    ``"model.decoder.layers" = 2`` (a quoted key path, as ``--set`` takes it) and
    ``model.decoder.layers = 2`` (TOML's dotted keys) both become
    ``{"model": {"decoder": {"layers": 2}}}``, so that a profile of a recipe and the same
    profile of a recipe it extends merge key by key whichever spelling each file uses.
    """
    if not isinstance(profiles, Mapping):
        raise RecipeError(f"{where}: profiles: expected a table of [profiles.NAME] tables, found {describe_value(profiles)}.")
    out = {}
    for name, table in profiles.items():
        if not isinstance(table, Mapping):
            raise RecipeError(
                f"{where}: profiles.{name}: expected a table of overrides such as [profiles.{name}] with train.steps = 200, "
                f"found {describe_value(table)}."
            )
        nested: dict[str, Any] = {}
        for key, value in table.items():
            path = tuple(part.strip() for part in key.split("."))
            if not all(_BARE_KEY.match(part) for part in path):
                raise RecipeError(f"{where}: profiles.{name}: '{key}' is not a dotted key path such as model.decoder.layers.")
            if path[0] in ("extends", "profiles"):
                raise RecipeError(f"{where}: profiles.{name}.{key}: a profile overrides recipe values; it cannot hold '{path[0]}'.")
            for part in reversed(path[1:]):
                value = {part: value}
            nested = _merge(nested, {path[0]: value})
        out[name] = nested
    return out


def recipe_profiles(path: str | Path) -> list[str]:
    """The names of the ``[profiles.NAME]`` tables a recipe file offers, its `extends` included."""
    return sorted(resolve_extends(path).get("profiles", {}))


def apply_profile(tree: Mapping[str, Any], name: str, origins: dict[tuple, str], source: str) -> dict[str, Any]:
    """Merge profile `name` of a merged recipe tree over it (tables merge, values and arrays replace); the
    profile's keys keep the file they came from, marked with the profile, for error messages."""
    profiles = tree.get("profiles", {})
    if name not in profiles:
        if not profiles:
            raise RecipeError(
                f"{source}: --profile {name}: this recipe has no profiles. Remove --profile, or add a [profiles.{name}] table of overrides "
                "(keys as --set takes them, e.g. train.steps = 200) to the recipe."
            )
        raise RecipeError(
            f"{source}: --profile {name}: no profile '{name}'. Its profiles: {', '.join(sorted(profiles))}.{did_you_mean(name, profiles)}"
        )
    table = profiles[name]
    marked: dict[tuple, str] = {}
    _record_origins(table, "", (), marked)
    for path in marked:
        origins[path] = f"{origins.get(('profiles', name) + path, source)} [profiles.{name}]"
    return _merge(dict(tree), table)


def _with_phase_defaults(train: TrainSpec, ctx: _Context) -> TrainSpec:
    """Resolve each phase without a ``[train.phases.NAME]`` table to `PhaseSpec`'s defaults (Adam, a constant rate).

    They stay out of `Recipe.to_dict`: the resolved recipe a run writes lists the tables
    the recipe has, as before.
    """
    defaults = {phase: ctx.structure(PhaseSpec, {}, ("train", "phases", phase)) for phase in PHASES if phase not in train.phases}
    return attrs.evolve(train, phase_defaults=defaults)


def check_recipe(recipe: Recipe, ctx: _Context | None = None) -> None:
    """Checks that span several tables."""
    ctx = ctx or _Context(None, {}, recipe.source or "<recipe>")
    model = recipe.model
    if model.latents and model.encoder is None:
        ctx.fail(
            ("model", "encoder"),
            f'the model has latents ({", ".join(model.latents)}) but no encoder. Add a [model.encoder] table, for example name = "conv".',
        )
    if not model.latents and model.encoder is not None:
        ctx.fail(
            ("model", "latents"),
            "the model has an encoder but no latents. Add a [model.latents.NAME] table, or remove [model.encoder] for a plain decoder.",
        )
    for name, latent in model.latents.items():
        if latent.supervised and recipe.data.common.labeled == 0:
            ctx.fail(
                ("data", "labeled"),
                f"latent '{name}' is supervised but data.labeled is 0. Set data.labeled to the number of labeled examples (e.g. 100).",
            )
        if ctx.registries is not None:
            _check_latent_parts(name, latent, ctx)


def _check_latent_parts(name: str, latent: LatentSpec, ctx: _Context) -> None:
    """A head must suit its prior and regularizer, as the components declare by class attributes:
    a prior's ``support`` (`contracts.support_problem`) and a regularizer's ``heads`` (the
    head kinds it accepts)."""
    path = ("model", "latents", name, "head")
    prior = ctx.registries["priors"].get(latent.prior.name).factory
    problem = contracts.support_problem(latent.head, prior, what=f"prior '{latent.prior.name}'")
    if problem is not None:
        ctx.fail(path, problem)
    regularizer = ctx.registries["regularizers"].get(latent.regularizer.name).factory
    heads = contracts.heads(regularizer)
    if heads is not None and latent.head not in heads:
        ctx.fail(path, f"regularizer '{latent.regularizer.name}' needs a head among {', '.join(map(repr, heads))}, found '{latent.head}'.")


# --------------------------------------------------------------------------- structuring


def describe_value(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}
    kind = next((v for k, v in kinds.items() if type(value) is k), type(value).__name__)
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"


class _Context:
    """Carries the registries and key origins through structuring; formats errors."""

    def __init__(self, registries, origins: dict[tuple, str], default_file: str) -> None:
        self.registries = registries
        self.origins = origins
        self.default_file = default_file

    def where(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):
            origin = self.origins.get(tuple(path[:n]))
            if origin is not None:
                return origin
        return self.default_file

    def fail(self, path: tuple, message: str) -> typing.NoReturn:
        dotted = ".".join(str(p) for p in path) or "(top level)"
        raise RecipeError(f"{self.where(path)}: {dotted}: {message}")

    # -- classes

    def structure(self, cls: type, table: Any, path: tuple, extra_valid: Iterable[str] = ()) -> Any:
        if not isinstance(table, Mapping):
            self.fail(path, f"expected a table, found {describe_value(table)}.")
        fields = {f.name: f for f in attrs.fields(attrs.resolve_types(cls)) if not f.metadata.get("internal")}
        valid = sorted(set(fields) | set(extra_valid))
        for key in table:
            if key not in fields:
                what = "top-level key" if not path else "key"
                self.fail(path + (key,), f"unknown {what} '{key}'. Valid keys: {', '.join(valid)}.{did_you_mean(key, valid)}")
        kwargs = {}
        for name, field in fields.items():
            if name in table:
                kwargs[name] = self.value(table[name], field.type, path + (name,), field)
            elif "component" in field.metadata:
                default = field.metadata["default_table"]
                if default is not None:
                    kwargs[name] = self.component(dict(default), field.metadata["component"], field.metadata["common"], path + (name,))
                elif not field.metadata["optional"]:
                    self.missing(path, name, field)
            elif field.default is REQUIRED:
                self.missing(path, name, field)
        try:
            return cls(**kwargs)
        except OptionValueError as exc:
            self.fail(path + (exc.field,), exc.message)

    def missing(self, path: tuple, name: str, field: attrs.Attribute) -> typing.NoReturn:
        doc = field.metadata.get("doc", "")
        self.fail(path + (name,), f"missing required key '{name}' ({describe_type(field.type)}{': ' + doc if doc else ''}).")

    # -- components

    def component(self, table: Any, kind: str, common: type | None, path: tuple) -> ComponentSpec:
        if not isinstance(table, Mapping):
            self.fail(path, f'expected a table naming a {kind[:-1]}, such as {{ name = "..." }}, found {describe_value(table)}.')
        known = self.registries[kind].names() if self.registries is not None else []
        if "name" not in table:
            self.fail(path + ("name",), f"missing required key 'name': which {kind[:-1]} to use. Known {kind}: {', '.join(known) or '(none)'}.")
        name = table["name"]
        if not isinstance(name, str):
            self.fail(path + ("name",), f"expected the name of a {kind[:-1]} (a string), found {describe_value(name)}.")
        try:
            entry = self.registries[kind].get(name)
        except RegistryError as exc:
            self.fail(path + ("name",), str(exc))
        own_fields = [f.name for f in attrs.fields(entry.config)] if entry.config is not None else []
        common_fields = [f.name for f in attrs.fields(common)] if common is not None else []
        rest = {k: v for k, v in table.items() if k != "name"}
        valid = sorted(set(own_fields) | set(common_fields) | {"name"})
        for key in rest:
            if key not in own_fields and key not in common_fields:
                self.fail(path + (key,), f"unknown key '{key}' for {kind[:-1]} '{name}'. Valid keys: {', '.join(valid)}.{did_you_mean(key, valid)}")
        shared = self.structure(common, {k: v for k, v in rest.items() if k in common_fields}, path) if common is not None else None
        config = self.structure(entry.config, {k: v for k, v in rest.items() if k in own_fields}, path) if entry.config is not None else None
        return ComponentSpec(kind=kind, name=name, config=config, common=shared)

    # -- values

    def value(self, value: Any, tp: Any, path: tuple, field: attrs.Attribute | None = None) -> Any:
        meta = field.metadata if field is not None else {}
        if "component" in meta:
            return self.component(value, meta["component"], meta["common"], path)
        if "registered" in meta:
            names = self.value(value, list[str], path)
            if self.registries is not None:
                registry = self.registries[meta["registered"]]
                for i, item in enumerate(names):
                    if item not in registry:
                        known = ", ".join(registry.names()) or "(none registered)"
                        self.fail(path + (i,), f"unknown {meta['registered'][:-1]} '{item}'. Known: {known}.{did_you_mean(item, registry.names())}")
            return names
        return self.convert(value, tp, path)

    def convert(self, value: Any, tp: Any, path: tuple) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (types.UnionType, typing.Union):
            options = [a for a in args if a is not type(None)]
            errors = []
            for option_type in options:
                try:
                    return self.convert(value, option_type, path)
                except RecipeError as exc:
                    errors.append(exc)
            if len(options) == 1:
                raise errors[0]
            self.fail(path, f"expected {describe_type(tp)}, found {describe_value(value)}.")
        if origin is Literal:
            if value not in args or type(value) is bool:
                self.fail(
                    path, f"expected one of {', '.join(map(repr, args))}, found {describe_value(value)}.{did_you_mean(str(value), map(str, args))}"
                )
            return value
        if tp is bool:
            if type(value) is not bool:
                self.fail(path, f"expected true or false, found {describe_value(value)}.")
            return value
        if tp is int:
            if type(value) is not int:
                hint = " Write whole numbers without a decimal point." if isinstance(value, float) and value.is_integer() else ""
                self.fail(path, f"expected an integer, found {describe_value(value)}.{hint}")
            return value
        if tp is float:
            if type(value) not in (int, float):
                self.fail(path, f"expected a number, found {describe_value(value)}.")
            return float(value)
        if tp is str:
            if type(value) is not str:
                self.fail(path, f"expected a string, found {describe_value(value)}. Put strings in quotes.")
            return value
        if origin in (list, tuple):
            if not isinstance(value, list):
                self.fail(path, f"expected {describe_type(tp)}, found {describe_value(value)}.")
            item_type = args[0] if args else Any
            items = [self.convert(v, item_type, path + (i,)) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if not isinstance(value, Mapping):
                self.fail(path, f"expected {describe_type(tp)}, found {describe_value(value)}.")
            key_type, item_type = args if args else (str, Any)
            out = {}
            for k, v in value.items():
                if typing.get_origin(key_type) is Literal and k not in typing.get_args(key_type):
                    valid = typing.get_args(key_type)
                    self.fail(path + (k,), f"unknown key '{k}'. Valid keys: {', '.join(valid)}.{did_you_mean(k, valid)}")
                out[k] = self.value(v, item_type, path + (k,))
            return out
        if attrs.has(tp):
            return self.structure(tp, value, path)
        raise TypeError(
            f"gentk.recipe cannot check values of type {tp!r} (at {'.'.join(map(str, path))}); use int, float, str, bool, list, dict, Literal "
            "or an attrs class"
        )
