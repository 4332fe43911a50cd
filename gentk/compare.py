"""A comparison study: several recipes, several seeds, the same data and budget, one report.

This is what gentk exists for (docs/architecture.md, "The paper"): PixelGAN
autoencoders against their baselines, trained alike and measured alike. `compare` trains each recipe once per seed
(the same ``--profile`` and ``--set`` overrides applied to all, then each recipe's own
``--set-for`` overrides), evaluates the final weights on the test split, and writes
``<out>/<name>/report.md`` and ``report.html`` (`gentk.report`).

Layout of a study directory::

    compare/<name>/
      report.md, report.html, curves.png, curves/<metric>.png, samples/<recipe>-seed<S>.png, code_space/...
      runs/<recipe>-seed<S>-<hash>/      one folder per (recipe, seed, resolved recipe)
        <recipe>-<time>/                 the engine's run directory
        train.log                        what the engine printed
        result.json                      wall time, speed and the test evaluation

Test metrics use the whole test split unless the recipe's ``eval.test_examples`` caps it
(the report says how many; ``eval.max_examples`` caps only the evaluations during
training). The hash is of the resolved recipe, so a finished run is reused exactly when its
recipe is the same, and an interrupted one is resumed (``--resume auto``) by the next call.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from tqdm import tqdm

from gentk import checkpoint, rundir
from gentk.errors import GentkError, TrainingInterrupted, did_you_mean
from gentk.evaluate import categorical_latent, evaluate_run, load_run, write_run_grid
from gentk.plugins import plugins_or_default
from gentk.recipe import Recipe, load_recipe
from gentk.report import headline_series, plot_learning_curves, study_blocks, write_report
from gentk.train import signals_handled, train


@attrs.frozen
class RunResult:
    """One (recipe, seed) of a study, as the report shows it."""

    recipe: str
    seed: int
    run_dir: Path
    steps: int
    wall_s: float
    steps_per_s: float | None
    metrics: dict[str, float]  # test metrics, keys without the "eval/test/" prefix
    reused: bool
    load: dict[str, Any] | None = None  # the machine's load while it ran (`machine_load`)


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (also '0-2'); seeds are distinct non-negative integers."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                seeds += list(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise GentkError(f"--seeds '{text}': expected comma-separated integers such as 0,1,2 (or a range 0-2).") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise GentkError(f"--seeds '{text}': give at least one seed, each a distinct non-negative integer.")
    return seeds


def recipe_hash(recipe: Recipe) -> str:
    """8 hex digits identifying a resolved recipe (its TOML), to tell reusable runs apart."""
    return hashlib.sha1(recipe.to_toml().encode()).hexdigest()[:8]


class _StudyProgress:
    """A `gentk_log` hook implementation moving one bar over the whole study."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar
        self.base = 0

    def gentk_log(self, run_dir, step, scalars) -> None:
        self.bar.update(max(0, self.base + step - self.bar.n))


def compare(
    paths: Sequence[str | Path],
    *,
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
    profile: str | None = None,
    overrides_for: Sequence[tuple[str, str]] = (),
    name: str | None = None,
    out: str | Path = "compare",
    device: str | None = None,
    offline: bool = False,
    plugins=None,
    metrics: Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    jobs: int = 1,
    plugin_args: Sequence[str] = (),
) -> Path:
    """Run the study and write its report; returns the study directory.

    Each recipe file is loaded with its ``[profiles.<profile>]`` table, `overrides`, the
    overrides `overrides_for` gives its name (``(recipe name, KEY.PATH=VALUE)`` pairs) and
    ``seed=S`` for each seed. metrics: the metrics evaluated on the test split after training
    (default: each recipe's own ``eval.metrics``), with `options` as for `gentk eval --option`.

    jobs: runs trained at once, each by its own ``gentk run`` process (`_train_in_processes`),
    which loads plugins as the command line does, with `plugin_args` (``-p`` values) added;
    a recipe without ``train.threads`` gets the machine's cores divided among the jobs. The
    step counts fix each run's result, so a study gives the same numbers with any `jobs`.
    """
    if jobs < 1:
        raise GentkError(f"--jobs {jobs}: give at least 1 (runs trained at once).")
    plugins = plugins_or_default(plugins)
    if not paths:
        raise GentkError("gentk compare needs at least one recipe.")
    names = [load_recipe(p, overrides, profile=profile, plugins=plugins).name for p in paths]
    if len(set(names)) != len(names):
        raise GentkError(
            f"two recipes share a name ({', '.join(names)}); give each its own `name` (--set and --set-for cannot tell them apart, so edit or "
            "copy a file)."
        )
    own = own_overrides(overrides_for, names)
    studies = [[load_recipe(p, [*overrides, *own[n], f"seed={s}"], profile=profile, plugins=plugins) for s in seeds] for p, n in zip(paths, names)]
    name = name or "-".join(names)
    study_dir = Path(out) / name
    study_dir.mkdir(parents=True, exist_ok=True)

    total = sum(r.train.steps for runs in studies for r in runs)
    # Written to a file (a nohup'd or CI study), every refresh stays in it: drawn when a run starts or ends, else once a minute at most.
    interval = 0.1 if sys.stderr.isatty() else 60.0
    bar = tqdm(total=total, unit="step", desc=f"compare {name}", dynamic_ncols=True, file=sys.stderr, mininterval=interval)
    progress = _StudyProgress(bar)
    results: list[RunResult] = []
    plugins.pm.register(progress, name="gentk.compare.progress")
    finish = _Finish(device=device, offline=offline, metrics=metrics, options=options, plugins=plugins)
    try:
        if jobs > 1:
            flat = [recipe for runs in studies for recipe in runs]
            results = _train_in_processes(flat, study_dir, bar, finish, jobs=jobs, device=device, offline=offline, plugin_args=plugin_args)
        else:
            for runs in studies:
                for recipe in runs:
                    bar.set_postfix_str(f"{recipe.name} seed {recipe.seed}")
                    results.append(_run_one(recipe, study_dir, plugins, finish, device=device, offline=offline))
                    progress.base += recipe.train.steps
                    bar.update(progress.base - bar.n)
    finally:
        plugins.pm.unregister(progress)
        bar.close()

    meta = _meta(name, paths, studies, overrides, seeds, results, profile=profile, overrides_for=overrides_for)
    _write(study_dir, meta, results, names, plugins=plugins, device=device, offline=offline)
    return study_dir


def own_overrides(pairs: Sequence[tuple[str, str]], names: Sequence[str]) -> dict[str, list[str]]:
    """``--set-for RECIPE KEY.PATH=VALUE`` pairs -> each recipe name's list of overrides; an unknown name is an error."""
    own: dict[str, list[str]] = {n: [] for n in names}
    for recipe, override in pairs:
        if recipe not in own:
            raise GentkError(
                f"--set-for {recipe} {override}: no recipe of this comparison is named '{recipe}'. Its recipes: {', '.join(names)}."
                f"{did_you_mean(recipe, names)}"
            )
        own[recipe].append(override)
    return own


def _run_root(study_dir: Path, recipe: Recipe) -> Path:
    return study_dir / "runs" / f"{recipe.name}-seed{recipe.seed}-{recipe_hash(recipe)}"


def _run_one(recipe: Recipe, study_dir: Path, plugins, finish: _Finish, *, device, offline) -> RunResult:
    """Train (or reuse, or resume) one recipe at one seed in this process, then evaluate it on the test split."""
    root = _run_root(study_dir, recipe)
    root.mkdir(parents=True, exist_ok=True)
    reused, earlier = finish.reusable(recipe, root)
    if reused is not None:
        return reused
    started = time.perf_counter()
    try:
        with open(root / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            trained = train(recipe, plugins=plugins, out=root, device=device, resume="auto", offline=offline)
    except BaseException:
        rundir.write_json(root / "result.json", {"finished": False, "wall_s": earlier + time.perf_counter() - started})
        raise
    return finish(recipe, root, trained.run_dir, earlier + time.perf_counter() - started)


@attrs.frozen
class _Finish:
    """What a study does with each run: reuse it if an earlier call finished it, or evaluate it on the test split."""

    device: str | None
    offline: bool
    metrics: Sequence[str] | None  # None: each recipe's own eval.metrics
    options: dict[str, dict[str, Any]] | None
    plugins: Any

    def wanted(self, recipe: Recipe) -> list[str]:
        return list(recipe.eval.metrics if self.metrics is None else self.metrics)

    def reusable(self, recipe: Recipe, root: Path) -> tuple[RunResult | None, float]:
        """The result of a run an earlier call finished with the same metrics, or None and the seconds earlier attempts spent."""
        result_path = root / "result.json"
        record = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if (
            record.get("finished")
            and record.get("metric_names") == self.wanted(recipe)
            and record.get("options") == (self.options or {})
            and record.get("test_examples") == recipe.eval.test_examples  # evaluated on as many test examples as asked
            and Path(record["run_dir"]).is_dir()
        ):
            return _result(recipe, record, reused=True), 0.0
        return None, record.get("wall_s", 0.0)

    def __call__(self, recipe: Recipe, root: Path, run_dir: Path, wall: float) -> RunResult:
        """Evaluate a trained run's final weights on the test split and write its result.json."""
        wanted = self.wanted(recipe)
        evaluation = evaluate_run(
            run_dir,
            names=wanted,
            which="latest",
            split="test",
            max_examples=recipe.eval.test_examples,
            options=self.options,
            device=self.device,
            plugins=self.plugins,
            offline=self.offline,
        )
        speeds = rundir.read_metrics(run_dir).get("speed/steps_per_s")
        record = {
            "finished": True,
            "run_dir": str(run_dir),
            "steps": evaluation["step"],
            "wall_s": wall,
            "steps_per_s": float(np.mean(speeds["value"])) if speeds is not None and len(speeds) else None,
            "metric_names": wanted,
            "options": self.options or {},
            "test_examples": recipe.eval.test_examples,
            "metrics": {k.removeprefix("eval/test/"): v for k, v in evaluation["metrics"].items()},
        }
        rundir.write_json(root / "result.json", record)
        return _result(recipe, record, reused=False)


@attrs.define
class _Job:
    """One run trained by a `gentk run` process of its own."""

    index: int
    recipe: Recipe
    root: Path
    process: subprocess.Popen
    started: float
    earlier: float

    def step(self) -> int:
        """The last step the run logged (its metrics.jsonl's last line), 0 before the first."""
        run_dir = checkpoint.latest_run(self.root, self.recipe.name)
        path = None if run_dir is None else run_dir / "metrics.jsonl"
        if path is None or not path.is_file():
            return 0
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
        for line in reversed(lines):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return int(json.loads(line)["step"])
        return 0


def _train_in_processes(recipes: list[Recipe], study_dir: Path, bar: tqdm, finish: _Finish, *, jobs, device, offline, plugin_args) -> list[RunResult]:
    """Train `recipes` with at most `jobs` `gentk run` processes at once; evaluate each in this process as it ends.

    Each process trains the resolved recipe written to its run folder (``recipe.toml``) with
    ``--resume auto``, so an interrupted study resumes every run where its checkpoint stopped.
    A stop stops the whole study, and every run that was training saves a checkpoint: a Ctrl-C
    reaches every process at once; a SIGTERM to this process is passed on to each run; a run
    stopped on its own (a SIGTERM to its process) stops the others, and no queued run starts.
    """
    results: dict[int, RunResult] = {}
    queue: list[tuple[int, Recipe, Path, float]] = []
    for index, recipe in enumerate(recipes):
        root = _run_root(study_dir, recipe)
        root.mkdir(parents=True, exist_ok=True)
        reused, earlier = finish.reusable(recipe, root)
        if reused is not None:
            results[index] = reused
            bar.update(recipe.train.steps)
        else:
            rundir.write_text(root / "recipe.toml", recipe.to_toml())
            queue.append((index, recipe, root, earlier))
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    running: list[_Job] = []
    failures: list[str] = []
    stopped: list[str] = []  # why the study stops, first reason first
    done_steps = sum(r.train.steps for i, r in enumerate(recipes) if i in results)

    def launch() -> None:
        index, recipe, root, earlier = queue.pop(0)
        command = [sys.executable, "-m", "gentk", *(a for p in plugin_args for a in ("-p", p)), "run", str(root / "recipe.toml")]
        command += ["--out", str(root), "--resume", "auto", *(["--device", device] if device else []), *(["--offline"] if offline else [])]
        env = dict(os.environ)
        if recipe.train.threads is None:  # the cores shared among the jobs; a recipe's own train.threads wins
            env["OMP_NUM_THREADS"] = threads
        with open(root / "train.log", "a") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        running.append(_Job(index, recipe, root, process, time.perf_counter(), earlier))

    def wall(job: _Job) -> float:
        return job.earlier + time.perf_counter() - job.started

    def unfinished(job: _Job) -> None:
        rundir.write_json(job.root / "result.json", {"finished": False, "wall_s": wall(job)})

    def stop(reason: str) -> None:
        if not stopped:
            stopped.append(reason)
            for job in running:  # each saves its checkpoint and exits
                job.process.send_signal(signal.SIGTERM)

    try:
        with signals_handled(lambda signum, frame: stop("SIGTERM"), (signal.SIGTERM,)):
            while (queue and not stopped) or running:
                while queue and not stopped and len(running) < jobs:
                    launch()
                time.sleep(0.5)
                training = ", ".join(f"{j.recipe.name} seed {j.recipe.seed}" for j in running)
                if training != bar.postfix:  # forces a refresh: only when the set of runs changes
                    bar.set_postfix_str(training)
                bar.update(max(0, done_steps + sum(j.step() for j in running) - bar.n))
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    code = job.process.returncode
                    if code == TrainingInterrupted.exit_code:  # the run was asked to stop (SIGTERM or SIGINT) and saved a checkpoint
                        unfinished(job)
                        stop(f"{job.recipe.name} seed {job.recipe.seed} was stopped by a signal")
                        continue
                    if queue and not stopped:  # the next run starts before this one's evaluation
                        launch()
                    if code != 0:
                        unfinished(job)
                        failures.append(f"{job.recipe.name} seed {job.recipe.seed} (exit {code}; its output: {job.root / 'train.log'})")
                        continue
                    done_steps += job.recipe.train.steps
                    results[job.index] = finish(job.recipe, job.root, checkpoint.latest_run(job.root, job.recipe.name), wall(job))
    except KeyboardInterrupt:
        for job in running:  # each process got the Ctrl-C too: it saves its checkpoint and stops
            job.process.wait()
            unfinished(job)
        stopped[:] = ["Ctrl-C"]
    if stopped:
        raise TrainingInterrupted(
            f"compare stopped ({stopped[0]}); every run that was training saved a checkpoint. The same gentk compare command resumes the study: "
            f"finished runs are reused, the others continue from their checkpoints ({study_dir / 'runs'})."
        ) from None
    if failures:
        raise GentkError(
            f"{len(failures)} run(s) of the study failed: {'; '.join(failures)}. Fix the cause and run the same command again: "
            "finished runs are reused."
        )
    return [results[i] for i in range(len(recipes))]


def _result(recipe: Recipe, record: dict[str, Any], *, reused: bool) -> RunResult:
    headline = {k: v for k, v in record["metrics"].items() if "/" not in k or k.endswith("reconstruction/loss")}
    run_dir = Path(record["run_dir"])
    return RunResult(
        recipe.name, recipe.seed, run_dir, record["steps"], record["wall_s"], record["steps_per_s"], headline, reused, machine_load(run_dir)
    )


def machine_load(run_dir: Path) -> dict[str, Any] | None:
    """How busy the machine was while a run trained: {"cpus", "start" (1-minute load at the last
    (re)start, env.json), "mean", "max" (of ``machine/load_1min``, logged at every log and evaluation)};
    None for a run that recorded none (made before gentk logged the load)."""
    env_path = run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    readings = rundir.read_metrics(run_dir).get("machine/load_1min") if (run_dir / "metrics.h5").is_file() else None
    if not env.get("load_avg") and (readings is None or not len(readings)):
        return None
    load = {"cpus": env.get("cpus"), "start": env["load_avg"][0] if env.get("load_avg") else None}
    if readings is not None and len(readings):
        load.update(mean=float(np.mean(readings["value"])), max=float(np.max(readings["value"])))
    return load


def _meta(name: str, paths, studies, overrides, seeds, results: list[RunResult], *, profile=None, overrides_for=()) -> dict[str, Any]:
    setup, data_seen, steps_seen = [], {}, {}
    for path, runs in zip(paths, studies):
        r = runs[0]
        data = r.to_dict()["data"]
        data_text = ", ".join(f"{k} = {data[k]}" for k in ("name", "binarize", "labeled", "size", "classes") if k in data)
        reused = sum(x.reused for x in results if x.recipe == r.name)
        setup.append(
            {
                "name": r.name,
                "path": str(path),
                "data": data_text,
                "steps": r.train.steps,
                "batch_size": r.data.common.batch_size,
                "test_examples": "all" if r.eval.test_examples is None else str(r.eval.test_examples),
                "runs": f"{len(runs)} ({reused} reused)",
            }
        )
        data_seen[r.name] = (r.data.name, data.get("binarize"))
        steps_seen[r.name] = r.train.steps
    differences = []
    if len(set(data_seen.values())) > 1:
        differences.append("data: " + ", ".join(f"{k} {v[0]} ({v[1]})" for k, v in data_seen.items()))
    if len(set(steps_seen.values())) > 1:
        differences.append("steps: " + ", ".join(f"{k} {v}" for k, v in steps_seen.items()))
    command = (
        "gentk compare "
        + " ".join(shlex.quote(str(p)) for p in paths)
        + f" --seeds {','.join(map(str, seeds))}"
        + (f" --profile {shlex.quote(profile)}" if profile else "")
        + "".join(f" --set {shlex.quote(o)}" for o in overrides)
        + "".join(f" --set-for {shlex.quote(r)} {shlex.quote(o)}" for r, o in overrides_for)
    )
    return {
        "name": name,
        "command": command,
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "seeds": list(seeds),
        "profile": profile,
        "overrides": list(overrides),
        "overrides_for": [list(pair) for pair in overrides_for],
        "setup": setup,
        "differences": differences,
        "checkpoint": "latest",
    }


def _sample_grid(r: RunResult, study_dir: Path, *, plugins, device, offline) -> tuple[str, str] | None:
    """Every seed's grid of its latest weights, as `gentk sample --per-category` draws it: (caption, path in the study);
    None for a recipe with eval.samples = 0."""
    run = load_run(r.run_dir, which="latest", device=device, plugins=plugins, offline=offline)
    if run.recipe.eval.samples == 0:
        return None
    target = study_dir / "samples" / f"{r.recipe}-seed{r.seed}.png"
    latent = categorical_latent(run.model.latents)
    write_run_grid(run, target, run.recipe.eval.samples, per_category=latent is not None, seed=run.recipe.seed)
    return f"seed {r.seed}, step {r.steps}", str(target.relative_to(study_dir))


def _write(study_dir: Path, meta: dict[str, Any], results: list[RunResult], names: list[str], *, plugins, device, offline) -> None:
    series: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    samples: dict[str, list[tuple[str, str]]] = {}
    code_plots = []
    for r in results:
        series[r.recipe].append(rundir.read_metrics(r.run_dir) if (r.run_dir / "metrics.h5").is_file() else {})
        grid = _sample_grid(r, study_dir, plugins=plugins, device=device, offline=offline)
        if grid is not None:
            samples.setdefault(r.recipe, []).append(grid)
        if r.seed != meta["seeds"][0]:
            continue  # code-space scatters: the first seed's
        plots = sorted((r.run_dir / "code_space").glob(f"*-step-{r.steps:08d}.png"))
        for plot in plots:
            target = study_dir / "code_space" / f"{r.recipe}-seed{r.seed}-{plot.name.split('-step-')[0]}.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(plot, target)
            code_plots.append((f"{r.recipe}: {plot.name.split('-step-')[0]}", str(target.relative_to(study_dir))))
    curves = plot_learning_curves(series, study_dir / "curves.png")
    # CPU minutes where the runs logged them: runs that shared the cores with other jobs compare on them, not on wall minutes
    clocks = ("step", "minutes", "cpu_minutes") if any("time/cpu_minutes" in m for runs in series.values() for m in runs) else ("step", "minutes")
    metric_curves = []
    for metric in headline_series(series) if curves else []:  # without matplotlib, none
        caption = metric.split("/", 2)[-1]  # without eval/<split>/
        plot = plot_learning_curves(series, study_dir / "curves" / f"{caption.replace('/', '-')}.png", [metric], xs=clocks)
        if plot is not None:
            metric_curves.append((f"held-out {caption}", str(plot.relative_to(study_dir))))
    blocks = study_blocks(
        meta,
        results,
        names,
        curves=str(curves.relative_to(study_dir)) if curves else None,
        samples=samples,
        code_plots=code_plots,
        metric_curves=metric_curves,
    )
    write_report(study_dir, blocks, f"gentk compare: {meta['name']}")
    rundir.write_json(study_dir / "study.json", {"meta": meta, "results": [{**attrs.asdict(r), "run_dir": str(r.run_dir)} for r in results]})
