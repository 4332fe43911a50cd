"""Evaluation: loading a trained run, computing its held-out losses and metrics, sampling it.

Everything that evaluates a model lives here, for the engine and for the command line alike:

- `load_trained` / `load_run` rebuild a model from a checkpoint's own recipe, with the EMA
  weights when the run kept them (`model_from_checkpoint`, the one place that copies them);
- `build_metric` builds a registered metric (``eval.metrics``) with validated options,
  `evaluate` calls a list of them, `parse_options` reads ``--option METRIC.KEY=VALUE``
  (with the recipe's ``--set`` rules, `gentk.recipe.parse_override`);
- `held_out_losses` averages ``Model.eval_losses`` over a split (all ranks together);
- `run_evaluation` is what the engine does every ``eval.every`` steps: held-out losses,
  the recipe's metrics and a sample grid, without moving any random-number generator;
- `evaluate_run` is ``gentk eval``: a run directory's checkpoint, evaluated and merged
  into its eval.json;
- `sample_images` / `write_samples` draw a grid: one row per category of a categorical
  latent (Makhzani & Frey 2017, Fig. 6), else a square; `write_sample_grid` draws the
  readable one of ``gentk sample`` and the reports: enlarged, rows ordered and labelled by
  their cluster's majority label, the mean images beside the samples.

The metrics themselves (pure functions and registered metric components) are in
`gentk.metrics`; this module sits above them and below the engine (`gentk.train`).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from einops import rearrange

from gentk import checkpoint, dist, rundir
from gentk.console import watched
from gentk.contracts import bernoulli_probs
from gentk.data import build_data, evaluation_split
from gentk.errors import GentkError, ResultsNotSaved, did_you_mean
from gentk.grid import compose
from gentk.metrics import majority_labels
from gentk.model import build_model
from gentk.plugins import plugins_or_default
from gentk.recipe import Recipe, parse_override, recipe_from_dict
from gentk.seeding import seed_everything

# --------------------------------------------------------------------------- loading a trained run


def model_from_checkpoint(state: Mapping[str, Any], recipe: Recipe, *, plugins, ema: bool = True, source: str | Path = "the checkpoint"):
    """The model `recipe` describes with the checkpoint's weights: the EMA ones when the run kept them and `ema`.

    Built for the checkpoint's ``image_shape``, on the CPU, in training mode. Weights that
    do not fit are a clear error naming `source` (`checkpoint.load_weights`).
    """
    model = build_model(recipe, image_shape=tuple(state["image_shape"]), plugins=plugins)
    checkpoint.load_weights(model, state, source, ema=ema)
    return model


def load_trained(path: str | Path, *, plugins=None, which: str = "latest", ema: bool = True, device: str | torch.device = "cpu"):
    """A trained model from a run directory or checkpoint file: ``(recipe, model, checkpoint)``.

    which: "latest" or "best" (for a run directory). ema: use the EMA weights when the run
    kept them. The model is rebuilt from the checkpoint's own recipe, in eval mode; the
    dataset is not loaded (``recipe.data`` says which it was).
    """
    plugins = plugins_or_default(plugins)
    path = Path(path)
    if path.is_dir() and which == "best":
        path = path / "checkpoints" / checkpoint.BEST if (path / "checkpoints").is_dir() else path / checkpoint.BEST
    state = checkpoint.load(checkpoint.find(path), map_location=device)
    recipe = recipe_from_dict(state["recipe"], plugins=plugins, source=str(path))
    model = model_from_checkpoint(state, recipe, plugins=plugins, ema=ema, source=path)
    return recipe, model.to(device).eval(), state


@attrs.frozen
class LoadedRun:
    """A run directory's recipe, data and model with a checkpoint's weights (the EMA ones if any)."""

    run_dir: Path
    checkpoint: Path
    step: int
    recipe: Any
    data: Any
    model: Any
    device: torch.device


def load_run(run_dir: str | Path, *, which: str = "latest", device: str | None = None, plugins=None, offline: bool = False) -> LoadedRun:
    """Rebuild a finished or interrupted run from its checkpoint (``which``: latest or best).

    The recipe comes from the checkpoint itself, so it is the one that wrote the weights.
    When the run kept an EMA of the weights, the model gets the EMA weights, as the engine's
    own evaluations do. Unlike `load_trained` it also builds the run's data.
    """
    plugins = plugins_or_default(plugins)
    run_dir = Path(run_dir)
    if which not in ("latest", "best"):
        raise GentkError(f"--checkpoint must be 'latest' or 'best', not '{which}'.")
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        if not run_dir.is_dir():
            raise GentkError(f"'{run_dir}' is not a directory. Pass a run directory such as runs/NAME-TIME.")
        present = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
        hint = f"; it has {', '.join(present)}: try --checkpoint latest" if present else "; the run stopped before its first checkpoint"
        raise GentkError(f"{run_dir} has no checkpoints/{which}.pt{hint}.")
    state = checkpoint.load(path)
    recipe = recipe_from_dict(state["recipe"], plugins=plugins, source=str(path))
    chosen = dist.choose_device(device or recipe.train.device)
    data = build_data(recipe.data, plugins, seed=recipe.seed, offline=offline)
    model = model_from_checkpoint(state, recipe, plugins=plugins, source=path)
    model.to(chosen).eval()
    return LoadedRun(run_dir, path, int(state["step"]), recipe, data, model, chosen)


# --------------------------------------------------------------------------- metrics


def parse_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["iwae.k=50", "code_space.plot=false"]`` -> {"iwae": {"k": 50}, ...}; values as in ``--set``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        path, value = parse_override(item, flag="--option", form="METRIC.KEY", example="iwae.k=50", path_example="iwae.k")
        if len(path) != 2:
            raise GentkError(f"--option '{item}': expected METRIC.KEY=VALUE, e.g. iwae.k=50.")
        metric, name = path
        out.setdefault(metric, {})[name] = value
    return out


def build_metric(plugins, name: str, options: Mapping[str, Any] | None = None):
    """A registered metric built with its defaults updated by `options` (validated by its Config)."""
    entry = plugins.get("metrics", name)
    options = dict(options or {})
    if entry.config is None:
        if options:
            raise GentkError(f"metric '{name}' has no options; got {', '.join(options)}.")
        return entry.build(None)
    fields = [f.name for f in attrs.fields(entry.config)]
    for key in options:
        if key not in fields:
            raise GentkError(f"metric '{name}' has no option '{key}'. Its options: {', '.join(fields) or 'none'}.{did_you_mean(key, fields)}")
    try:
        config = entry.config(**options)
    except (TypeError, ValueError) as exc:
        raise GentkError(f"metric '{name}': {exc}. `gentk list metrics {name}` shows its options.") from None
    return entry.build(config)


def evaluate(
    model,
    data,
    names: Sequence[str],
    *,
    plugins,
    device,
    split: str = "test",
    batch_size: int = 100,
    max_examples: int | None = None,
    seed: int = 0,
    run_dir: Path | None = None,
    step: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    log_image: Callable[[str, Path], None] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Call each named metric on `split` under ``torch.no_grad()``; returns {key: float} (keys unprefixed).

    log_image: given to each metric, which calls ``log_image(tag, path)`` for each image it
    writes under `run_dir` (the engine passes the ``gentk_log_image`` hook; default: nothing).
    progress: a bar over each pass a metric makes through the data, on a terminal (`console.watched`).
    """
    log_image = log_image or (lambda tag, path: None)
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise GentkError(
            f"--option for {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not among the metrics evaluated ({', '.join(names)})."
        )
    metrics = [build_metric(plugins, name, options.get(name)) for name in names]  # every option error before any work
    results: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        for name, metric in zip(names, metrics):
            values = metric(
                model=model,
                data=watched(data, name, progress),
                device=device,
                split=split,
                batch_size=batch_size,
                max_examples=max_examples,
                seed=seed,
                run_dir=run_dir,
                step=step,
                log_image=log_image,
            )
            results.update({k: float(v) for k, v in (values or {}).items()})
    return results


def held_out_losses(model, data, split: str, recipe: Recipe, device, info, *, progress: bool = False) -> dict[str, float]:
    """``Model.eval_losses`` averaged over the split's examples (all ranks together, a rank without examples too); `progress`: a bar on a terminal."""
    sums: dict[str, float] = {}
    count = 0
    for batch in watched(data, "losses", progress).eval_batches(
        split, recipe.data.common.batch_size, max_examples=recipe.eval.max_examples, rank=info.rank, world_size=info.world_size
    ):
        batch = batch.to(device)
        n = batch.x.shape[0]
        for key, value in model.eval_losses(batch).items():
            sums[key] = sums.get(key, 0.0) + float(value) * n
        count += n
    keys = sorted(set().union(*dist.gather_objects(sorted(sums), info)))  # a rank with no examples (fewer than ranks) has no keys
    totals = dist.sum_tensor(torch.tensor([sums.get(k, 0.0) for k in keys] + [float(count)], dtype=torch.float64, device=device), info).tolist()
    return {f"eval/{split}/{k}": v / max(totals[-1], 1.0) for k, v in zip(keys, totals[:-1])}


# --------------------------------------------------------------------------- during training


def run_evaluation(model, ema, data, recipe: Recipe, plugins, device, info, run_dir: Path, step: int) -> dict[str, float]:
    """Held-out losses, the recipe's metrics and a sample grid, without moving any RNG.

    The engine's evaluation every ``eval.every`` steps, on the validation split when there
    is one, else the test split (`gentk.data.evaluation_split`): with the EMA weights when
    `ema` is given, the metrics and samples on rank 0 only (then broadcast: `dist.on_rank0`), each image
    written passed to the ``gentk_log_image`` hook, the model back in training mode afterwards.
    """
    model.eval()
    try:
        with checkpoint.preserved_rng(device), torch.no_grad(), ema.applied(model) if ema else contextlib.nullcontext():
            split = evaluation_split(data)
            metrics = held_out_losses(model, data, split, recipe, device, info, progress=info.is_main)
            # rank 0 alone (the others wait for it, however long it takes)
            metrics.update(dist.on_rank0(lambda: metrics_and_samples(model, data, split, recipe, plugins, device, run_dir, step), info))
    finally:
        model.train()
    return metrics


def metrics_and_samples(model, data, split: str, recipe: Recipe, plugins, device, run_dir: Path, step: int) -> dict[str, float]:
    """The recipe's metrics on `split` and its sample grid (rank 0's share of `run_evaluation`)."""

    def log_image(tag: str, path: Path) -> None:
        plugins.pm.hook.gentk_log_image(run_dir=run_dir, step=step, tag=tag, path=path)

    found = evaluate(
        model,
        data,
        recipe.eval.metrics,
        plugins=plugins,
        device=device,
        split=split,
        batch_size=recipe.data.common.batch_size,
        max_examples=recipe.eval.max_examples,
        seed=recipe.seed,
        run_dir=run_dir,
        step=step,
        log_image=log_image,
        progress=True,
    )
    if recipe.eval.samples > 0:
        log_image("samples", write_samples(model, data, recipe, device, run_dir / "samples" / f"step-{step:08d}.png"))
    return {f"eval/{split}/{k}": v for k, v in found.items()}


# --------------------------------------------------------------------------- a run directory


def evaluate_run(
    run_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    which: str = "latest",
    split: str = "test",
    max_examples: int | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str | None = None,
    plugins=None,
    offline: bool = False,
) -> dict[str, Any]:
    """Evaluate a run directory's checkpoint and merge the result into its eval.json.

    names: the metrics (default: the recipe's ``eval.metrics``). Also computes the held-out
    losses of every training step on `split`. Returns the record written under
    ``evaluations[<checkpoint>/<split>]`` of eval.json: checkpoint, step, split, options,
    seconds, and ``metrics`` ({"eval/<split>/<key>": float}).
    """
    plugins = plugins_or_default(plugins)
    run = load_run(run_dir, which=which, device=device, plugins=plugins, offline=offline)
    names = list(run.recipe.eval.metrics if names is None else names)
    if split not in run.data.split_sizes or run.data.split_sizes[split] == 0:
        present = [k for k, v in run.data.split_sizes.items() if v > 0 and k != "train"]
        advice = f" Evaluate on a split that has examples: --split {present[0]}." if present else ""
        raise GentkError(
            f"this run's data has no '{split}' examples; splits: {', '.join(f'{k} ({v})' for k, v in run.data.split_sizes.items())}.{advice}"
        )
    started = time.perf_counter()
    batch_size = run.recipe.data.common.batch_size
    with checkpoint.preserved_rng(run.device), torch.no_grad():
        seed_everything(run.recipe.seed)  # metrics that draw random numbers give the same result each time
        # losses on the same examples as the metrics
        limited = attrs.evolve(run.recipe, eval=attrs.evolve(run.recipe.eval, max_examples=max_examples))
        values = held_out_losses(run.model, run.data, split, limited, run.device, dist.DistInfo(), progress=True)
        found = evaluate(
            run.model,
            run.data,
            names,
            plugins=plugins,
            device=run.device,
            split=split,
            batch_size=batch_size,
            max_examples=max_examples,
            seed=run.recipe.seed,
            run_dir=run.run_dir,
            step=run.step,
            options=options,
            progress=True,
        )
    values.update({f"eval/{split}/{k}": v for k, v in found.items()})
    record = {
        "checkpoint": str(run.checkpoint.relative_to(run.run_dir)),
        "step": run.step,
        "steps": run.recipe.train.steps,
        "split": split,
        "max_examples": max_examples,
        "metric_names": names,
        "options": {k: dict(v) for k, v in (options or {}).items()},
        "seconds": time.perf_counter() - started,
        "metrics": values,
    }
    path = run.run_dir / "eval.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing.setdefault("evaluations", {})[f"{which}/{split}"] = record
    try:
        rundir.write_json(path, existing)
    except OSError as exc:  # a read-only run: the results are not lost, the caller gets them
        raise ResultsNotSaved(
            f"{path.name} was not written: {rundir.storage_error(exc, path, kept='The results are those printed above.')}", record
        ) from None
    return record


# --------------------------------------------------------------------------- samples


def sample_images(
    model, n: int, *, generator: torch.Generator, latent: str | None = None, temperature: float | None = None, means: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """About `n` images, their mean images and how many go in a grid row: ``(images (B, C, H, W), means or None, per_row)``.

    latent: a categorical latent of `model` to draw one row per category of
    (``ceil(n / K)`` images a row, so K rows); None draws `n` images for a square grid.
    temperature: the decoder's sampling temperature (None: the model's default).
    means: also the probabilities each pixel was drawn with (a Bernoulli decoder's, `gentk.contracts.bernoulli_probs`).
    """
    kwargs = {} if temperature is None else {"temperature": temperature}
    if means:
        kwargs["return_probs"] = True
    if latent is not None:
        per_row = max(1, math.ceil(n / model.latents[latent].size))
        drawn = model.sample_per_category(per_row, latent=latent, generator=generator, **kwargs)
    else:
        per_row = max(1, round(math.sqrt(n)))
        drawn = model.sample(n, generator=generator, **kwargs)
    images, probs = drawn if means else (drawn, None)
    return images, probs, per_row


def write_sample_grid(
    model,
    path: Path,
    n: int,
    *,
    generator: torch.Generator,
    latent: str | None = None,
    labels: Sequence[int] | None = None,
    means: bool = True,
    scale: int = 3,
    temperature: float | None = None,
) -> tuple[Path, int]:
    """A readable PNG grid of about `n` samples (`gentk.grid.compose`); returns the path and the number of images.

    latent: a categorical latent to draw one row per category of; labels: each category's
    label (`gentk.metrics.majority_labels`, -1: none), which orders the rows and labels them
    "label (category k)". means: the mean images (the probabilities each pixel was drawn
    with) beside the samples, drawn with the same codes, when the decoder has them
    (`gentk.contracts.bernoulli_probs`). scale: the pixels' enlargement.
    """
    means = means and bernoulli_probs(model.decoder)
    samples, probs, per_row = sample_images(model, n, generator=generator, latent=latent, temperature=temperature, means=means)
    row_labels = None
    if latent is not None and labels is not None:
        k = model.latents[latent].size
        labels = [int(v) for v in labels]
        order = sorted(range(k), key=lambda c: (labels[c] < 0, labels[c], c))  # by label; categories no image went to last
        rows = rearrange(torch.arange(k * per_row), "(k n) -> k n", k=k)[order].flatten()
        samples, probs = samples[rows], None if probs is None else probs[rows]
        row_labels = [f"{labels[c] if labels[c] >= 0 else 'none'} (category {c})" for c in order]
    panels = [("samples", samples)] + ([("mean images: P(pixel = 1)", probs)] if probs is not None else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.save_png(compose(panels, nrow=per_row, row_labels=row_labels, scale=scale), path)
    return path, len(samples)


def categorical_latent(latents: Mapping[str, Any]) -> str | None:
    """The first latent (of a recipe's or a model's ``latents``) with a categorical head: the one a grid has a row per category of."""
    return next((name for name, spec in latents.items() if spec.head == "categorical"), None)


@attrs.frozen
class RunGrid:
    """What `write_run_grid` wrote: the PNG, its number of samples, the seconds sampling took, how its rows are labelled."""

    path: Path
    images: int
    seconds: float
    rows: str


def write_run_grid(
    run: LoadedRun,
    path: Path,
    n: int,
    *,
    per_category: bool,
    seed: int,
    label_examples: int | None = None,
    means: bool = True,
    scale: int = 3,
    temperature: float | None = None,
) -> RunGrid:
    """`write_sample_grid` for a loaded run: with `per_category`, a row per category of its
    categorical latent, labelled with the majority label of the first `label_examples`
    validation images (default: the recipe's ``eval.max_examples``, else all) in each
    category, as the clustering error's majority protocol labels clusters."""
    latent, labels, rows = None, None, ""
    if per_category:
        latent = categorical_latent(run.model.latents)
        if latent is None:
            raise GentkError("--per-category needs a model with a categorical latent; this one has none. Drop --per-category.")
        if run.data.split_sizes.get("validation", 0) > 0:
            examples = label_examples or run.recipe.eval.max_examples
            labels = majority_labels(
                run.model, latent, run.data, batch_size=run.recipe.data.common.batch_size, max_examples=examples, device=run.device
            )
            which = "all" if examples is None else f"the first {examples}"
            rows = f"rows ordered and labelled by the majority label of {which} validation images in each category"
        else:
            rows = "rows not labelled: the data has no validation split"
    generator = torch.Generator(device=run.device).manual_seed(seed)
    started = time.perf_counter()
    path, images = write_sample_grid(
        run.model, path, n, generator=generator, latent=latent, labels=labels, means=means, scale=scale, temperature=temperature
    )
    return RunGrid(path, images, time.perf_counter() - started, rows)


def write_samples(model, data, recipe: Recipe, device, path: Path) -> Path:
    """The engine's grid of ``eval.samples`` images, drawn to be read (`write_sample_grid`).

    For a categorical latent, one row per category (the paper's Figure 6), ordered and
    labelled by each category's majority label on the first ``eval.max_examples``
    validation images, when the data have a validation split; else a square.
    """
    generator = torch.Generator(device=device).manual_seed(recipe.seed)
    latent = categorical_latent(recipe.model.latents) if hasattr(model, "sample_per_category") else None
    labels = None
    if latent is not None and data.split_sizes.get("validation", 0) > 0:
        batch_size = recipe.data.common.batch_size
        labels = majority_labels(model, latent, data, batch_size=batch_size, max_examples=recipe.eval.max_examples, device=device)
    return write_sample_grid(model, path, recipe.eval.samples, generator=generator, latent=latent, labels=labels)[0]
