"""The ``gentk`` command line: run, check, show, list, plugins, data, eval, sample, compare.

Each subcommand is a small function taking the parsed arguments and the loaded plugins.
User errors (`GentkError`) print one paragraph and exit with code 2, without a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from gentk import __version__, dist
from gentk.console import command
from gentk.errors import DuplicateNameError, GentkError, ResultsNotSaved, TrainingInterrupted
from gentk.options import option_docs
from gentk.plugins import Plugins, load_plugins
from gentk.recipe import load_recipe
from gentk.registry import KINDS


def _add_recipe_args(p: argparse.ArgumentParser, many: bool = False, profile_help: str = "apply the recipe's [profiles.NAME] table") -> None:
    p.add_argument("recipe", nargs="+" if many else None, help="recipe TOML file" + ("s" if many else ""))
    p.add_argument("--profile", default=None, metavar="NAME", help=f"{profile_help} (before --set)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a recipe value; VALUE is TOML (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gentk",
        description="Latent-variable generative image models (PixelGAN autoencoders and baselines) from TOML recipes.",
    )
    parser.add_argument("--version", action="version", version=f"gentk {__version__}")
    parser.add_argument(
        "-p",
        dest="plugin_args",
        action="append",
        default=[],
        metavar="NAME",
        help="load plugin module NAME, or disable a plugin with no:NAME (repeatable)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="train a recipe and write a run directory")
    _add_recipe_args(p)
    p.add_argument("--out", default="runs", help="directory that holds run directories (default: runs)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: the recipe's train.device)")
    p.add_argument(
        "--resume", default=None, metavar="auto|PATH", help="continue the latest run of this recipe (auto) or the run directory / checkpoint PATH"
    )
    p.add_argument("--force", action="store_true", help="resume even if the recipe changed")
    p.add_argument("--offline", action="store_true", help="never download data; say which files are missing instead")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        metavar="N",
        help="a wall-clock budget: stop at N minutes, save and run the final evaluation (same as --set train.minutes=N)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate recipes and build their models, each profile too; trains nothing")
    _add_recipe_args(p, many=True, profile_help="check only this profile of each recipe (default: each recipe as written and every profile it has)")
    p.add_argument(
        "--offline", action="store_true", help="never download data a check needs (a dataset whose image shape is known without its files needs none)"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="print the fully resolved recipe (extends, --set and defaults applied)")
    _add_recipe_args(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="list registered components by kind, with their plugin")
    p.add_argument("kind", nargs="?", help=f"one of: {', '.join(KINDS)}")
    p.add_argument("name", nargs="?", help="a component name: show its options")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plugins", help="list loaded plugins, their versions and failures")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of failed plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("data", help="datasets: what is registered and present, and preparing them")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("list", help="registered datasets, where their files are and the cache state")
    q.add_argument("--root", default=None, help="data directory (default: $GENTK_DATA, else the user cache)")
    q.set_defaults(func=cmd_data_list)
    q = data_sub.add_parser("prepare", help="download (if allowed), verify and convert a dataset")
    q.add_argument("name")
    q.add_argument("--root", default=None, help="data directory (default: $GENTK_DATA, else the user cache)")
    q.add_argument("--offline", action="store_true", help="never download; say which files are missing")
    q.set_defaults(func=cmd_data_prepare)

    p = sub.add_parser("eval", help="evaluate a finished or interrupted run: writes eval.json, prints a table")
    p.add_argument("run_dir", help="a run directory (runs/NAME-TIME)")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="NAME",
        help="registered metrics to compute (default: the recipe's eval.metrics); `gentk list metrics`",
    )
    p.add_argument(
        "--option", dest="options", action="append", default=[], metavar="METRIC.KEY=VALUE", help="a metric option, e.g. iwae.k=5000 (repeatable)"
    )
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest", help="which checkpoint to evaluate (default: latest)")
    p.add_argument("--split", default="test", choices=("test", "validation", "train"), help="split to evaluate (default: test)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N", help="evaluate on at most N examples")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: the recipe's train.device)")
    p.add_argument("--offline", action="store_true", help="never download data")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="sample a grid of images from a run's model (cached PixelCNN sampler) and time it")
    p.add_argument("run_dir", help="a run directory (runs/NAME-TIME)")
    p.add_argument("-n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--out", default="samples.png", help="PNG file to write (default: samples.png)")
    p.add_argument(
        "--per-category",
        action="store_true",
        help="one row per category of the categorical latent (the paper's Fig. 6), labelled with its validation images' majority label",
    )
    p.add_argument("--scale", type=int, default=3, help="enlarge each pixel N times, sharp (default: 3)")
    p.add_argument(
        "--no-means", action="store_true", help="leave out the mean images (P(pixel = 1)) that a Bernoulli decoder's grid has beside its samples"
    )
    p.add_argument(
        "--label-examples",
        type=int,
        default=None,
        metavar="N",
        help="label --per-category rows from N validation images (default: the recipe's eval.max_examples, else all)",
    )
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest", help="which checkpoint (default: latest)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default: 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the decoder (default: 1.0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: the recipe's train.device)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("compare", help="train recipes over seeds on the same data and budget; write a side-by-side report")
    _add_recipe_args(p, many=True, profile_help="apply each recipe's [profiles.NAME] table, e.g. small")
    p.add_argument(
        "--set-for",
        dest="overrides_for",
        nargs=2,
        action="append",
        default=[],
        metavar=("RECIPE", "KEY.PATH=VALUE"),
        help="override a value of one recipe, named as in the report (its `name`), after --set (repeatable)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train N runs at once, each in its own process with the cores shared among them unless the recipe sets train.threads (default: 1)",
    )
    p.add_argument("--name", default=None, help="study name (default: the recipe names joined by '-')")
    p.add_argument("--out", default="compare", help="directory holding studies (default: compare)")
    p.add_argument("--device", default=None, help="device for every run (default: each recipe's train.device)")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="NAME",
        help="metrics evaluated on the test split after training (default: each recipe's eval.metrics)",
    )
    p.add_argument(
        "--option", dest="options", action="append", default=[], metavar="METRIC.KEY=VALUE", help="a metric option, e.g. iwae.k=50 (repeatable)"
    )
    p.add_argument("--offline", action="store_true", help="never download data")
    p.set_defaults(func=cmd_compare)
    return parser


# --------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    overrides = list(args.overrides) + ([f"train.minutes={args.minutes!r}"] if args.minutes is not None else [])
    recipe = load_recipe(args.recipe, overrides, profile=args.profile, plugins=plugins)
    from gentk.train import train

    result = train(recipe, plugins=plugins, out=args.out, device=args.device, resume=args.resume, force=args.force, offline=args.offline)
    if result.run_dir is not None:  # None on ranks other than 0 under torchrun
        _say_results(result, recipe, args, plugins)
    return 0


def _say_results(result, recipe, args: argparse.Namespace, plugins: Plugins) -> None:
    """The end of `gentk run`: the test metrics of the final weights (evaluated now, unless the run's own evaluations
    were on the test split), the last sample grid and the run directory."""
    from gentk.evaluate import categorical_latent, evaluate_run
    from gentk.report import format_table

    run_dir = result.run_dir
    final = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
    split = "test" if any(k.startswith("eval/test/") for k in final) else None
    if split is None:
        try:
            record = evaluate_run(
                run_dir, split="test", max_examples=recipe.eval.test_examples, device=args.device, plugins=plugins, offline=args.offline
            )
            final, split = record["metrics"], "test"
        except ResultsNotSaved as exc:
            final, split = exc.record["metrics"], "test"
            print(f"gentk: warning: {exc}")
        except GentkError as exc:  # no test split: the last evaluation's own split
            split = next(iter(final), "eval/validation/").split("/")[1]
            print(f"gentk: no test metrics ({exc}); the final evaluation's, on the {split} split:")
    examples = "all" if recipe.eval.test_examples is None else f"the first {recipe.eval.test_examples}"
    print(f"\n{split} metrics of {recipe.name} at step {result.step} ({examples} {split} examples):")
    prefix = f"eval/{split}/"
    print(format_table(["metric", "value"], [[k.removeprefix(prefix), f"{v:.6g}"] for k, v in final.items() if k.startswith(prefix)]))
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    if grids:
        latent = categorical_latent(recipe.model.latents)
        layout = f"one row per category of latent '{latent}', labelled by its majority label" if latent else "a square of samples"
        print(f"samples: {grids[-1]} ({layout})")
    print(f"run directory: {run_dir}")


def cmd_check(args: argparse.Namespace, plugins: Plugins) -> int:
    """Check every recipe given, as written and with each of its profiles (or only --profile's), then report every
    failure (exit 2 if any); when there is one check only, its error is raised as it is."""
    from gentk.model import check_model
    from gentk.recipe import recipe_profiles

    checks: list[tuple[str, str | None]] = []
    for path in args.recipe:
        if args.profile is not None:
            checks.append((path, args.profile))
            continue
        try:
            profiles = recipe_profiles(path)
        except GentkError:
            profiles = []  # the recipe's own check below reports why it cannot be read
        checks += [(path, None)] + [(path, name) for name in profiles]
    failed = []
    for path, profile in checks:
        what = path if profile is None else f"{path} --profile {profile}"
        try:
            recipe = load_recipe(path, args.overrides, profile=profile, plugins=plugins)
            summary = check_model(recipe, plugins=plugins, offline=args.offline)
        except GentkError as exc:
            if len(checks) == 1:
                raise  # one check: its error is the one paragraph
            failed.append(what)
            print(f"{what}: FAILED\n{textwrap.indent(str(exc), '  ')}", file=sys.stderr)
            continue
        print(f"{what}: ok ({summary})")
    if failed:
        raise GentkError(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)} (each error is above).")
    return 0


def cmd_show(args: argparse.Namespace, plugins: Plugins) -> int:
    recipe = load_recipe(args.recipe, args.overrides, profile=args.profile, plugins=plugins)
    sys.stdout.write(f"# resolved from {args.recipe}{f' --profile {args.profile}' if args.profile else ''}\n" + recipe.to_toml())
    return 0


def cmd_list(args: argparse.Namespace, plugins: Plugins) -> int:
    kinds = [plugins.registries[args.kind].kind] if args.kind else plugins.registries.kinds()
    if args.name:
        entry = plugins.registries[args.kind].get(args.name)
        print(f"{entry.kind[:-1]} '{entry.name}' (plugin {entry.plugin}): {entry.doc}")
        rows = option_docs(entry.config)
        if not rows:
            print("  no options")
        for name, tp, default, doc in rows:
            print(f"  {name:<20} {tp:<28} default {default:<14} {doc}")
        return 0
    for kind in kinds:
        registry = plugins.registries[kind]
        print(f"{kind}:")
        if not len(registry):
            print("  (none)")
        width = max((len(e.name) for e in registry), default=0)
        plugin_width = max((len(e.plugin) for e in registry), default=0)
        for entry in registry:
            print(f"  {entry.name:<{width}}  [{entry.plugin:<{plugin_width}}]  {entry.doc}")
    if not args.kind:
        print(f"\n`{command()} list KIND NAME` shows a component's options.")
    return 0


def cmd_plugins(args: argparse.Namespace, plugins: Plugins) -> int:
    print("loaded plugins:")
    for info in plugins.loaded:
        print(f"  {info.name:<24} {info.package} {info.version} ({info.source})")
    if plugins.failures:
        print("failed plugins (disabled):")
        for failure in plugins.failures:
            print("  " + failure.describe())
            if args.verbose:
                print(textwrap.indent(failure.details.rstrip(), "    "))
    if plugins.clashes:
        print("name clashes (the second plugin is dropped; other commands refuse to run until one is disabled):")
        for clash in plugins.clashes:
            print("  " + clash)
    return 0


def cmd_data_list(args: argparse.Namespace, plugins: Plugins) -> int:
    from gentk.data import describe_datasets

    print(describe_datasets(plugins, root=args.root))
    return 0


def cmd_data_prepare(args: argparse.Namespace, plugins: Plugins) -> int:
    from gentk.data import prepare_dataset

    print(prepare_dataset(args.name, plugins, root=args.root, offline=args.offline))
    return 0


def cmd_eval(args: argparse.Namespace, plugins: Plugins) -> int:
    from gentk.evaluate import evaluate_run, parse_options
    from gentk.report import format_table

    if args.max_examples is not None and args.max_examples < 1:
        raise GentkError("--max-examples must be at least 1.")
    try:
        record, unsaved = (
            evaluate_run(
                args.run_dir,
                names=args.metrics,
                which=args.checkpoint,
                split=args.split,
                max_examples=args.max_examples,
                options=parse_options(args.options),
                device=args.device,
                plugins=plugins,
                offline=args.offline,
            ),
            None,
        )
    except ResultsNotSaved as exc:  # a read-only run: print the results, then say why they were not written
        record, unsaved = exc.record, exc
    prefix = f"eval/{args.split}/"
    rows = [(k.removeprefix(prefix), v) for k, v in record["metrics"].items()]
    print(f"{args.run_dir}: {record['checkpoint']} at step {record['step']} of {record['steps']}, {args.split} split, {record['seconds']:.1f} s")
    print(format_table(["metric", "value"], [[k, f"{v:.6g}"] for k, v in rows]))
    if unsaved is not None:
        raise unsaved
    print(f"written to {args.run_dir.rstrip('/')}/eval.json")
    return 0


def cmd_sample(args: argparse.Namespace, plugins: Plugins) -> int:
    from pathlib import Path

    from gentk.evaluate import load_run, write_run_grid

    if args.n < 1:
        raise GentkError("-n must be at least 1.")
    if args.scale < 1:
        raise GentkError(f"--scale {args.scale}: give a whole number of at least 1 (3 shows a 28-pixel digit at 84 pixels).")
    run = load_run(args.run_dir, which=args.checkpoint, device=args.device, plugins=plugins)
    grid = write_run_grid(
        run,
        Path(args.out),
        args.n,
        per_category=args.per_category,
        seed=args.seed,
        label_examples=args.label_examples,
        means=not args.no_means,
        scale=args.scale,
        temperature=args.temperature,
    )
    print(
        f"sampled {grid.images} images in {grid.seconds:.2f} s ({grid.images / grid.seconds:.1f} images/s; "
        f"{type(run.model.decoder).__name__}.sample on {run.device}); wrote {grid.path}" + (f"; {grid.rows}" if grid.rows else "")
    )
    return 0


def cmd_compare(args: argparse.Namespace, plugins: Plugins) -> int:
    from gentk.compare import compare, parse_seeds
    from gentk.evaluate import parse_options

    study = compare(
        args.recipe,
        seeds=parse_seeds(args.seeds),
        overrides=args.overrides,
        profile=args.profile,
        overrides_for=args.overrides_for,
        name=args.name,
        out=args.out,
        device=args.device,
        offline=args.offline,
        plugins=plugins,
        metrics=args.metrics,
        options=parse_options(args.options),
        jobs=args.jobs,
        plugin_args=args.plugin_args,
    )
    print(f"report: {study / 'report.md'} and {study / 'report.html'}")
    return 0


# --------------------------------------------------------------------------- entry point


def _plugin_options(values: Sequence[str]) -> tuple[list[str], list[str]]:
    load = [v for v in values if not v.startswith("no:")]
    disable = [v for v in values if v.startswith("no:")]
    return load, disable


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load, disable = _plugin_options(args.plugin_args)
        plugins = load_plugins(plugins=load, disable=disable, clashes="keep")
        if args.func is not cmd_plugins:
            for failure in plugins.failures:
                print(f"gentk: warning: {failure.describe()}; it is disabled (`{command()} plugins -v` shows why).", file=sys.stderr)
            if plugins.clashes and args.func is not cmd_list:  # which component a name means would be a guess
                raise DuplicateNameError(plugins.clashes[0])
            for clash in plugins.clashes:
                print(f"gentk: warning: {clash}", file=sys.stderr)
        return args.func(args, plugins)
    except TrainingInterrupted as exc:
        # a stop asked for (Ctrl-C, SIGTERM), not an error; every rank stops at the same step with the same message: rank 0 says it
        if dist.from_environment().is_main:
            print(f"gentk: stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    except GentkError as exc:
        print(f"gentk: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gentk: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        from gentk.rundir import is_storage_error, storage_error

        if not is_storage_error(exc):
            raise
        print(f"gentk: error: {storage_error(exc)}", file=sys.stderr)  # a full disk, a read-only place
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
