"""The engine: one training loop for every recipe (DESIGN.md §3).

`train` builds the data and the Model a recipe describes and runs, at each step, the
Model's training steps in order (``Model.training_steps()``: reconstruction, then the
adversarial regularization, then the supervised phase, the per-mini-batch phases of
adversarial autoencoders, Makhzani et al. 2016, and PixelGAN autoencoders, Makhzani &
Frey 2017). Each training step has its own optimizer and learning-rate schedule from
``train.phases.<phase>``.
The engine never looks inside the model: it only knows each step's phase, parameters
and loss.

The same loop runs on a CPU, a GPU (with bf16 or fp16 AMP) and under ``torchrun`` on
many GPUs (see `gentk.dist`). It writes the run directory of `gentk.rundir`, saves
checkpoints from which a resumed run continues bit for bit (`gentk.checkpoint`), and
stops cleanly on SIGINT / SIGTERM (saving first) and on a NaN loss (not saving).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm import tqdm

from gentk import checkpoint, dist, rundir
from gentk.data import build_data, check_held_out
from gentk.errors import GentkError, TrainingError, TrainingInterrupted, did_you_mean
from gentk.evaluate import run_evaluation
from gentk.model import build_model
from gentk.plugins import plugins_or_default
from gentk.recipe import PhaseSpec, Recipe
from gentk.seeding import seed_everything


@attrs.frozen
class TrainResult:
    """What `train` returns: where the run went and its final scalars."""

    run_dir: Path | None  # None on ranks other than 0
    metrics: dict[str, float]
    step: int


def train(
    recipe: Recipe,
    *,
    plugins=None,
    out: str | Path = "runs",
    device: str | None = None,
    resume: str | Path | None = None,
    force: bool = False,
    offline: bool = False,
    model: torch.nn.Module | None = None,
    data: Any = None,
) -> TrainResult:
    """Train `recipe`, writing ``out/<name>-<time>/``; returns the run directory and final metrics.

    device: None takes the recipe's ``train.device``. resume: "auto" continues the newest
    run of this recipe under `out` (or starts one), a path continues that run directory
    or checkpoint; a changed recipe is refused unless `force`. offline: never download
    data. model, data: already built objects to train instead of building them from the
    recipe (for research code and tests); they must follow the Model and data interfaces
    of docs/architecture.md.
    """
    plugins = plugins_or_default(plugins)
    info = dist.from_environment()
    chosen = dist.choose_device(device or recipe.train.device, info)
    started_group = info.distributed and not torch.distributed.is_initialized()
    dist.init(info, chosen)
    clean = False  # whether every rank reaches the final barrier (see dist.shutdown)
    try:
        with torch_settings(recipe.train, chosen), contextlib.ExitStack() as claim:  # _train enters the run directory's lock and the run callbacks here
            result = _train(recipe, plugins, Path(out), chosen, info, resume, force, offline, model, data, claim)
        clean = True
        return result
    except TrainingInterrupted:
        clean = True  # every rank stops at the same step (the stop request is all-reduced)
        raise
    except OSError as exc:
        if rundir.is_storage_error(exc):  # a full disk, a read-only run directory
            raise rundir.storage_error(exc) from None
        raise
    finally:
        if started_group:
            dist.shutdown(clean=clean)


def _train(recipe, plugins, out, device, info, resume, force, offline, model, data, claim) -> TrainResult:
    cfg = recipe.train
    say = print if info.is_main else (lambda *a, **k: None)

    # -- which run: a fresh directory, or the checkpoint we continue from (rank 0 decides)
    decision = None
    if info.is_main:
        try:
            ckpt_path = find_resume(resume, out, recipe)
            if ckpt_path is not None:
                ckpt_path, loaded, note = checkpoint.load_resumable(ckpt_path)  # a damaged latest.pt gives way to a step file
                if note:
                    say(f"gentk: warning: {note}")
                check_same_recipe(loaded, recipe, ckpt_path, force)
                run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else rundir.new_run_dir(out, recipe.name)
            else:
                run_dir = rundir.new_run_dir(out, recipe.name)
            claim.enter_context(rundir.claim(run_dir, fresh=ckpt_path is None))  # one process per run directory
            decision = (str(ckpt_path) if ckpt_path else None, str(run_dir), None)
        except GentkError as exc:
            decision = (None, None, str(exc))
    ckpt_path, run_dir, error = dist.broadcast_object(decision, info)
    if error is not None:
        raise TrainingError(error)  # on every rank, so none waits for the others
    run_dir = Path(run_dir)
    state = checkpoint.load(ckpt_path) if ckpt_path is not None else None
    if state is not None:
        say(f"gentk: resuming {run_dir} from step {state['step']} ({ckpt_path})")
        if state["world_size"] != info.world_size and not force:
            raise TrainingError(
                f"the checkpoint was written by {state['world_size']} process(es), this run has {info.world_size}: "
                "the data order and random numbers would not continue exactly. Use the same number of processes, or --force "
                "to continue with the weights and optimizer states and a fresh data order."
            )

    # -- data and model (built alike on every rank, then rank 0's weights everywhere)
    seed_everything(recipe.seed)
    if data is None:
        data = build_data(recipe.data, plugins, seed=recipe.seed, offline=offline)
    check_held_out(data, recipe.eval.metrics)  # before training, not at the first evaluation
    if model is None:
        model = build_model(recipe, image_shape=data.image_shape, plugins=plugins)
    model.to(device)
    dist.broadcast_parameters(model, info)
    training_steps = model.training_steps()
    params = {s.name: dist.params_of(s.parts.values()) for s in training_steps}
    specs = {s.name: phase_spec(recipe, s.phase, plugins) for s in training_steps}
    optimizers = {s.name: build_optimizer(s, specs[s.name], plugins) for s in training_steps}
    schedules = {s.name: build_schedule(optimizers[s.name], specs[s.name], cfg.steps, plugins) for s in training_steps}
    check_part_lr(recipe, training_steps)
    autocast, scalers = mixed_precision(cfg.amp, device, training_steps)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    if cfg.compile:
        compile_parts(model)

    # -- batches: the global batch size; each rank gets its slice
    common = recipe.data.common
    batches = data.train_batches(common.batch_size, seed=recipe.seed, rank=info.rank, world_size=info.world_size)
    labeled_batches = None
    if any(s.phase == "supervised" for s in training_steps):
        labeled_batches = data.train_batches(common.labeled_batch_size or common.batch_size, seed=recipe.seed, rank=info.rank, world_size=info.world_size, labeled=True)

    # -- continue where the checkpoint stopped (after everything above that draws random numbers)
    step, best = 0, None
    seed_everything(recipe.seed + info.rank)  # each rank its own noise; rank 0 as a single process
    if state is not None:
        step, best = restore(state, model, ema, optimizers, schedules, scalers, batches, labeled_batches, info, force)
    sync = dist.PartSync(model, info, device)  # DDP per part under torchrun; nothing on one process

    # -- the run directory (rank 0 only)
    log = rundir.MetricsLog(run_dir) if info.is_main else None
    if info.is_main:
        rundir.make_layout(run_dir)
        rundir.write_text(run_dir / "recipe.toml", f"# resolved from {recipe.source}\n" + recipe.to_toml())  # a resume may read it
        rundir.write_environment(run_dir, rundir.environment(device, info.world_size), step)
        if hasattr(data, "write_manifest"):
            data.write_manifest(run_dir)
        for note in log.truncate(step):  # drop what a previous process logged after its last checkpoint; repair
            say(f"gentk: warning: {note}")
        claim.enter_context(run_callbacks(plugins, run_dir, recipe, step))  # gentk_run_start now, gentk_run_end on the way out

    def save(at_step: int, *, is_best: bool = False) -> Path | None:
        rng = dist.gather_objects(checkpoint.rng_state(), info)
        interval = dist.gather_objects({"sums": dict(sums), "counted": counted}, info)
        positions = dist.gather_objects({"train": checkpoint.plain(batches.state_dict()), "labeled": checkpoint.plain(labeled_batches.state_dict()) if labeled_batches else None}, info)
        if not info.is_main:
            return None
        with sync.unwrapped(model):
            weights = model.state_dict()
        ckpt = {
            "format": checkpoint.CHECKPOINT_FORMAT,
            "step": at_step,
            "model": weights,
            "ema": ema.state_dict() if ema else None,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedules": {k: s.state_dict() for k, s in schedules.items()},
            "scalers": {k: s.state_dict() for k, s in scalers.items()},
            "data": positions,
            "rng": rng,
            "recipe": recipe.to_dict(),
            "image_shape": list(data.image_shape),
            "best": best,
            "world_size": info.world_size,
            "elapsed": clock_run.seconds(),
            "interval": interval,
        }
        return checkpoint.save(ckpt, run_dir / "checkpoints", keep_last=cfg.keep_last, best=is_best)

    # -- the loop
    stop = StopRequest()
    progress = Progress(cfg.steps, step, enabled=info.is_main)
    sums, counted = checkpoint.log_interval(state, info)  # a resumed run logs the means an unbroken one would
    clock, clock_step = time.perf_counter(), step
    last_saved = step if state is not None else None
    final: dict[str, float] = {}

    def evaluate(at_step: int) -> None:
        """Evaluate; the best evaluation so far is checkpointed at once (as best.pt), then logged."""
        nonlocal best, last_saved
        with sync.unwrapped(model):
            metrics = run_evaluation(model, ema, data, recipe, plugins, device, info, run_dir, at_step)
        metrics["time/minutes"] = clock_run.seconds() / 60  # curves against wall time as well as steps
        final.update(metrics)
        key = best_key(metrics, training_steps[0].name)
        if key is not None and (best is None or metrics[key] < best["value"]):
            best = {"name": key, "value": metrics[key], "step": at_step}
            save(at_step, is_best=True)
            last_saved = at_step
        if info.is_main:  # logged last: a resume re-runs an evaluation whose rows are missing
            log.write(at_step, metrics)
            plugins.pm.hook.gentk_after_eval(run_dir=run_dir, step=at_step, metrics=metrics)
            progress.write(f"step {at_step}: " + format_scalars(metrics))

    model.train()
    clock_run = RunClock(state.get("elapsed", 0.0) if state is not None else 0.0, cfg.minutes)
    out_of_time = state is not None and clock_run.spent()  # a fresh run takes at least one step
    if out_of_time and step < cfg.steps:
        say(f"gentk: the run's time budget (train.minutes = {cfg.minutes:g}) is spent at step {step}; nothing to train. Raise train.minutes (--minutes N) to continue it.")
    try:
        # an evaluation due at the checkpoint's step that never completed (killed, or stopped before it)
        if state is not None and (step % recipe.eval.every == 0 or step == cfg.steps or out_of_time) and dist.broadcast_object(info.is_main and not log.logged(step, "eval/"), info):
            evaluate(step)
        with stop.installed():
            while step < cfg.steps and not out_of_time:
                batch = next(batches).to(device)
                labeled = next(labeled_batches).to(device) if labeled_batches is not None else None
                for ts in training_steps:
                    optimizer = optimizers[ts.name]
                    optimizer.zero_grad(set_to_none=True)
                    scaler = scalers.get(ts.name)
                    with sync.step(ts):
                        with autocast():
                            loss, scalars = ts.loss(labeled if ts.phase == "supervised" else batch)
                        (scaler.scale(loss) if scaler else loss).backward()
                    loss_value = sync.reduce(ts, loss).item()
                    if not math.isfinite(loss_value):
                        raise TrainingError(nan_message(ts, step + 1, loss_value, run_dir, last_saved))
                    if scaler:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    if specs[ts.name].clip_grad is not None:
                        torch.nn.utils.clip_grad_norm_(params[ts.name], specs[ts.name].clip_grad)
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    schedules[ts.name].step()
                    sums[f"train/{ts.name}/loss"] = sums.get(f"train/{ts.name}/loss", 0.0) + loss_value
                    for key, value in scalars.items():
                        if key == "loss":
                            continue  # the all-rank mean above is the step's loss
                        name = f"train/{ts.name}/{key}"
                        sums[name] = sums.get(name, 0.0) + float(value)
                counted += 1
                if ema:
                    ema.update(model, updates=step)
                step += 1
                progress.update(step)
                # the time budget: rank 0's clock decides, so every rank stops at the same step
                if cfg.minutes is not None:
                    out_of_time = dist.any_rank(clock_run.spent(), info, device)
                last = step == cfg.steps or out_of_time

                # log the mean of each scalar since the last log, averaged over ranks
                if step % cfg.log_every == 0 or last:
                    scalars = dist.mean_scalars({k: v / counted for k, v in sums.items()}, info, device)
                    elapsed = time.perf_counter() - clock
                    scalars["speed/steps_per_s"] = (step - clock_step) / elapsed
                    scalars["speed/images_per_s"] = scalars["speed/steps_per_s"] * recipe.data.common.batch_size
                    for name, schedule in schedules.items():
                        scalars[f"lr/{name}"] = schedule.get_last_lr()[0]
                    scalars["time/minutes"] = clock_run.seconds() / 60
                    if info.is_main:
                        log.write(step, scalars)
                        plugins.pm.hook.gentk_log(run_dir=run_dir, step=step, scalars=scalars)
                        progress.show(step, scalars)
                    final.update(scalars)
                    sums, counted = {}, 0
                    clock, clock_step = time.perf_counter(), step

                # checkpoint before evaluating: an evaluation may take minutes and changes nothing
                paused = time.perf_counter()
                interrupted = dist.any_rank(stop.requested is not None, info, device)
                if step % cfg.checkpoint_every == 0 or last or interrupted:
                    save(step)
                    last_saved = step
                if interrupted:
                    raise TrainingInterrupted(interrupt_message(stop.requested, step, cfg.steps, run_dir, recipe), run_dir=run_dir, step=step)

                if step % recipe.eval.every == 0 or last:
                    if out_of_time:
                        say(f"gentk: time budget of {cfg.minutes:g} minutes reached at step {step} of {cfg.steps}; saved, now the final evaluation.")
                    evaluate(step)
                clock += time.perf_counter() - paused  # speed/* counts training time only
    finally:
        progress.close()

    if not final:  # resumed a run that had already finished: evaluate it once more
        with sync.unwrapped(model):
            final = run_evaluation(model, ema, data, recipe, plugins, device, info, run_dir, step)
    if info.is_main:  # eval.json: the final evaluation; keeps what `gentk eval` added there
        path = run_dir / "eval.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        record.update(step=step, best=best, minutes=round(clock_run.seconds() / 60, 3), metrics={k: v for k, v in final.items() if k.startswith("eval/")})
        rundir.write_json(path, record)
    return TrainResult(run_dir=run_dir if info.is_main else None, metrics=final, step=step)


@contextlib.contextmanager
def run_callbacks(plugins, run_dir: Path, recipe: Recipe, step: int) -> Iterator[None]:
    """Call ``gentk_run_start`` now and ``gentk_run_end`` however the run ends, with its status (rank 0)."""
    plugins.pm.hook.gentk_run_start(run_dir=run_dir, step=step, recipe=recipe)
    status = "failed"
    try:
        yield
        status = "finished"
    except (TrainingInterrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        plugins.pm.hook.gentk_run_end(run_dir=run_dir, status=status)


# --------------------------------------------------------------------------- set-up


@contextlib.contextmanager
def torch_settings(cfg, device: torch.device) -> Iterator[None]:
    """`setup_torch` for the length of a run: every process-wide torch flag it sets is restored afterwards.

    So a notebook or a script that calls `gentk.train` keeps its own thread count,
    denormal handling, determinism and TF32 settings, whether the run returns, fails or is
    interrupted.
    """
    saved = _torch_flags()
    try:
        setup_torch(cfg, device)
        yield
    finally:
        _restore_torch_flags(saved)


def setup_torch(cfg, device: torch.device) -> None:
    """Threads, denormals, determinism and matmul precision, as the recipe asks (process-wide; `torch_settings` scopes them)."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # DESIGN §6: denormals slowed an AAE from 13 to 1 step/s
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the shapes never change within a run
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _flushes_denormals() -> bool:
    """Whether the CPU flushes denormal floats to zero: torch can set this (`torch.set_flush_denormal`) but not read it."""
    tiny = torch.full((1,), 1e-39, dtype=torch.float32)  # a float32 denormal (below 1.2e-38)
    return bool((tiny * 0.5)[0] == 0)


def _torch_flags() -> dict[str, Any]:
    """The process-wide settings `setup_torch` may change."""
    return {
        "threads": torch.get_num_threads(),
        "flush_denormal": _flushes_denormals(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _restore_torch_flags(saved: dict[str, Any]) -> None:
    if torch.get_num_threads() != saved["threads"]:
        torch.set_num_threads(saved["threads"])
    torch.set_flush_denormal(saved["flush_denormal"])
    deterministic, warn_only = saved["deterministic"]
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32 = saved["cudnn"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    if saved["cublas_workspace"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas_workspace"]


def phase_spec(recipe: Recipe, phase: str, plugins) -> PhaseSpec:
    """``train.phases.<phase>``, or the recipe format's defaults when the table is absent."""
    spec = recipe.train.phases.get(phase)
    if spec is not None:
        return spec
    from gentk.recipe import _Context

    return _Context(plugins.registries, {}, recipe.source or "<recipe>").structure(PhaseSpec, {}, ("train", "phases", phase))


def build_optimizer(ts, spec: PhaseSpec, plugins) -> torch.optim.Optimizer:
    """One optimizer for one training step; ``part_lr`` gives named parts their own rate."""
    part_lr = spec.optimizer.common.part_lr if spec.optimizer.common is not None else {}
    groups, seen = [], set()
    for part, part_params in ts.parts.items():
        mine = [p for p in part_params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in mine)
        if mine:
            group = {"params": mine, "part": part}
            if part in part_lr:
                group["lr"] = part_lr[part]
            groups.append(group)
    if not groups:
        raise TrainingError(f"training step '{ts.name}' ({ts.phase} phase) has no trainable parameters.")
    return plugins.get("optimizers", spec.optimizer.name).build(spec.optimizer.config, params=groups)


def build_schedule(optimizer, spec: PhaseSpec, total_steps: int, plugins):
    return plugins.get("schedules", spec.schedule.name).build(spec.schedule.config, optimizer=optimizer, total_steps=total_steps)


def check_part_lr(recipe: Recipe, training_steps) -> None:
    """A ``part_lr`` key must name a part of some training step of that phase."""
    for phase, spec in recipe.train.phases.items():
        part_lr = spec.optimizer.common.part_lr if spec.optimizer.common is not None else {}
        parts = sorted({p for s in training_steps if s.phase == phase for p in s.parts})
        for name in part_lr:
            if name not in parts:
                where = f"the model's {phase} phase trains {', '.join(parts)}" if parts else f"this model has no {phase} phase"
                raise TrainingError(f"train.phases.{phase}.optimizer.part_lr: unknown part '{name}'; {where}.{did_you_mean(name, parts)}")


def mixed_precision(amp: str, device: torch.device, training_steps) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The autocast context for losses and, for fp16, one GradScaler per training step."""
    if amp == "none":
        return contextlib.nullcontext, {}
    if device.type != "cuda":
        raise TrainingError(f"train.amp = '{amp}' needs a CUDA device; this run is on {device}. Set train.amp = 'none' (--set train.amp=none).")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"train.amp = 'bf16' is not supported by {torch.cuda.get_device_name(device)}. Use 'fp16'.")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scalers = {s.name: torch.amp.GradScaler("cuda") for s in training_steps} if amp == "fp16" else {}
    return (lambda: torch.autocast(device_type="cuda", dtype=dtype)), scalers


def compile_parts(model: torch.nn.Module) -> None:
    """torch.compile each sub-network's forward in place (state_dict names unchanged)."""
    for module in model.children():
        if type(module).forward is not torch.nn.Module.forward:
            module.compile()
        else:  # a container such as ModuleDict: compile what it holds
            compile_parts(module)


class RunClock:
    """Wall-clock time of a run, counted over resumes, and its optional budget (train.minutes).

    It counts everything the training processes spend after building the run, evaluations
    included (the final evaluation comes after the budget); the checkpoint keeps the total.
    """

    def __init__(self, before: float, minutes: float | None) -> None:
        self.before = before  # seconds spent by earlier processes of this run
        self.budget = None if minutes is None else 60.0 * minutes
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.budget is not None and self.seconds() >= self.budget


class EMA:
    """An exponential moving average of the weights (Polyak averaging), used to evaluate.

    Given the number of updates made so far, the decay warms up as min(decay, (1 + n) / (10 + n))
    (as in TensorFlow's ExponentialMovingAverage): without it, a 0.999 average still holds
    60 % of the initial weights after 500 steps, and early evaluations measure mostly noise.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        # the live tensors (state_dict shares their storage), so wrapping parts later changes nothing
        self.live = {k: v for k, v in model.state_dict().items() if v.dtype.is_floating_point}
        self.shadow = {k: v.detach().clone() for k, v in self.live.items()}

    def decay_at(self, updates: int | None) -> float:
        return self.decay if updates is None else min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int | None = None) -> None:
        """Move the average towards the live weights; `updates`: how many updates came before."""
        weight = 1.0 - self.decay_at(updates)
        for k, v in self.live.items():
            self.shadow[k].lerp_(v, weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Evaluate with the averaged weights, then put the trained ones back."""
        current = self.live
        backup = {k: v.clone() for k, v in current.items()}
        with torch.no_grad():
            for k, v in self.shadow.items():
                current[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in backup.items():
                    current[k].copy_(v)


# --------------------------------------------------------------------------- resuming


def find_resume(resume, out: Path, recipe: Recipe) -> Path | None:
    if resume is None:
        return None
    if str(resume) == "auto":
        run = checkpoint.latest_run(out, recipe.name)
        if run is None:
            print(f"gentk: --resume auto: no earlier run of '{recipe.name}' with a checkpoint under {out}; starting a new run.")
            return None
        return run / "checkpoints" / checkpoint.LATEST
    return checkpoint.find(resume)


def check_same_recipe(state: dict, recipe: Recipe, path: Path, force: bool) -> None:
    """Refuse to continue a run with a different recipe, unless forced."""
    # a wall-clock budget changes neither the model nor its trajectory: raising it continues a run
    changes = [c for c in diff(state["recipe"], recipe.to_dict()) if not c.startswith("train.minutes:")]
    if not changes:
        return
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    if not force:
        raise TrainingError(f"the recipe differs from the one that wrote {path}: {shown}. Resume with the same recipe, or add --force to continue with this one.")
    print(f"gentk: warning: continuing {path} with a changed recipe (--force): {shown}")


def diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Key paths where two recipe dicts differ, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: (absent) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{sub}: {old[key]!r} -> (absent)")
            else:
                out.extend(diff(old[key], new[key], sub))
        return out
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def restore(state, model, ema, optimizers, schedules, scalers, batches, labeled_batches, info, force) -> tuple[int, dict | None]:
    """Load a checkpoint into the run's objects; returns (step, best)."""
    try:
        model.load_state_dict(state["model"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            schedules[name].load_state_dict(state["schedules"][name])
            if name in scalers:
                scalers[name].load_state_dict(state["scalers"][name])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"the checkpoint does not fit this model ({type(exc).__name__}: {' '.join(str(exc).split())}). Was the model changed? Resume with the recipe that wrote it.") from None
    if state["world_size"] == info.world_size:
        position = state["data"][info.rank]
        batches.load_state_dict(position["train"])
        if labeled_batches is not None and position["labeled"] is not None:
            labeled_batches.load_state_dict(position["labeled"])
        checkpoint.set_rng_state(state["rng"][info.rank])
    return state["step"], state["best"]


# --------------------------------------------------------------------------- evaluation


def best_key(metrics: dict[str, float], first_step: str) -> str | None:
    """The scalar that decides best.pt: the held-out loss of the first training step.

    That is the reconstruction step of every model: the negative ELBO of a (Pixel)VAE,
    the NLL of a PixelCNN, the reconstruction NLL of an (PixelGAN) adversarial autoencoder.
    """
    for split in ("validation", "test"):
        key = f"eval/{split}/{first_step}/loss"
        if key in metrics and math.isfinite(metrics[key]):
            return key
    return None


# --------------------------------------------------------------------------- stopping and reporting


class StopRequest:
    """SIGINT / SIGTERM ask the loop to save and stop after the current step.

    A second SIGINT while that happens interrupts at once (the previous checkpoint stays),
    unless it comes within `same_press_s` of the first: under torchrun one Ctrl-C reaches
    each worker twice, from the terminal and forwarded by torchrun, milliseconds apart.
    """

    same_press_s = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.requested: str | None = None
        self.clock = clock
        self.at = 0.0

    def handle(self, signum, frame) -> None:
        now = self.clock()
        if self.requested is None:
            self.requested, self.at = signal.Signals(signum).name, now
        elif signum == signal.SIGINT and now - self.at > self.same_press_s:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread; nothing to install elsewhere
            return
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def interrupt_message(signame: str | None, step: int, total: int, run_dir: Path, recipe: Recipe) -> str:
    # run_dir/recipe.toml is the resolved recipe, --set overrides included: it always matches
    return f"{signame or 'a signal'} at step {step} of {total}: checkpoint saved in {run_dir}/checkpoints. Resume with: gentk run {run_dir}/recipe.toml --resume {run_dir}"


def nan_message(ts, step: int, value: float, run_dir: Path, last_saved: int | None) -> str:
    fix = f"gentk run {run_dir}/recipe.toml --set train.phases.{ts.phase}.clip_grad=1.0"
    if last_saved is None:  # nothing to resume from: the fix starts a new run
        kept, fix = "No checkpoint was written yet, so there is nothing to resume", f"{fix} --out {run_dir.parent}, a new run"
    else:
        kept, fix = f"The last good checkpoint (step {last_saved}) is in {run_dir}/checkpoints", f"{fix} --resume {run_dir} --force"
    return (
        f"the {ts.phase} phase (training step '{ts.name}') gave a non-finite loss ({value}) at step {step}; the run stopped without saving. "
        f"{kept}. Lower train.phases.{ts.phase}.optimizer.lr or set train.phases.{ts.phase}.clip_grad (e.g. {fix})."
    )


def format_scalars(scalars: dict[str, float]) -> str:
    return " ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in scalars.items() if not k.startswith("lr/"))


class Progress:
    """A tqdm bar with the live losses on a terminal; one plain line per log interval otherwise."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, unit="step") if enabled and sys.stderr.isatty() else None
        self.total = total

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def show(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        losses = {k.split("/", 1)[1]: v for k, v in scalars.items() if k.startswith("train/") and k.endswith("/loss")}
        if self.bar is not None:
            self.bar.set_postfix({k.removesuffix("/loss"): f"{v:.4g}" for k, v in losses.items()}, refresh=True)
        else:
            print(f"step {step}/{self.total} {scalars['speed/steps_per_s']:.2f} steps/s " + format_scalars({k: v for k, v in scalars.items() if k.startswith("train/")}), flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
