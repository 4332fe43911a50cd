"""The engine: one training loop for every recipe (docs/architecture.md, "Training phases").

`train` builds the data and the Model a recipe describes and runs, at each step, the
Model's training steps in order (``Model.training_steps()``: reconstruction, then the
adversarial regularization, then the supervised phase, the per-mini-batch phases of
adversarial autoencoders, Makhzani et al. 2016, and PixelGAN autoencoders, Makhzani &
Frey 2017). Each training step has its own optimizer and learning-rate schedule from
``train.phases.<phase>``.
The engine never looks inside the model: it only knows each step's phase, parameters
and loss.

`_train` reads top to bottom: the set-up (`open_run` picks a fresh run directory or the
checkpoint to continue, `Run.build` makes the data, model, optimizers and batches,
`Run.restore` continues from a `checkpoint.TrainState`, `Run.start_directory` lays out
the run directory), then the loop (`Run.train_step`, `Run.log_scalars`, `Run.save`,
`Run.evaluate`), then `Run.finish`.

The same loop runs on a CPU, a GPU (with bf16 or fp16 AMP) and under ``torchrun`` on
many GPUs (see `gentk.dist`). It writes the run directory of `gentk.rundir`, saves
checkpoints from which a resumed run continues bit for bit (`gentk.checkpoint`), and
stops cleanly on SIGINT / SIGTERM (saving first) and on a NaN loss (not saving).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from gentk import checkpoint, console, dist, rundir
from gentk.console import Progress, format_scalars
from gentk.data import build_data, check_held_out, keep_train_split
from gentk.errors import GentkError, TrainingError, TrainingInterrupted, did_you_mean
from gentk.evaluate import run_evaluation
from gentk.model import build_model
from gentk.nn import loss_scale
from gentk.plugins import plugins_or_default
from gentk.recipe import PhaseSpec, Recipe
from gentk.seeding import seed_everything

FP16_PATIENCE = 10  # fp16 overflows in a row of one training step (each skipped) that stop a run


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
        # _train enters the run directory's lock and the run callbacks here
        with torch_settings(recipe.train, chosen), contextlib.ExitStack() as claim:
            result = _train(recipe, plugins, Path(out), chosen, info, resume, force, offline, model, data, claim)
        clean = True
        return result
    except TrainingInterrupted:
        clean = True  # every rank stops at the same step (the stop votes are all-reduced, `Run.stop_flags`)
        raise
    except OSError as exc:
        if rundir.is_storage_error(exc):  # a full disk, a read-only run directory
            raise rundir.storage_error(exc) from None
        raise
    finally:
        if started_group:
            dist.shutdown(clean=clean)


def _train(recipe, plugins, out, device, info, resume, force, offline, model, data, claim) -> TrainResult:
    """The run, top to bottom: set-up, then the loop (step, log, checkpoint, evaluate), then the final record."""
    cfg = recipe.train
    say = print if info.is_main else (lambda *a, **k: None)

    # -- set-up: which run, its objects, where the checkpoint stopped, its directory
    run_dir, state = open_run(recipe, out, info, resume, force, claim)
    run = Run.build(recipe, plugins, device, info, run_dir, offline, model, data)
    seed_everything(recipe.seed + info.rank)  # each rank its own noise; rank 0 as a single process
    if state is not None:
        run.restore(state)  # after everything above that draws random numbers
    run.sync = dist.PartSync(run.model, info, device)  # DDP per part under torchrun; nothing on one process
    if info.is_main:
        run.start_directory()
        claim.enter_context(run_callbacks(plugins, run_dir, recipe, run.step))  # gentk_run_start now, gentk_run_end on the way out

    # -- the loop
    run.stop = StopRequest()
    run.clock = RunClock(state.elapsed, cfg.minutes, state.cpu_elapsed) if state is not None else RunClock(0.0, cfg.minutes)
    say(run.banner())
    run.progress = Progress(cfg.steps, run.step, enabled=info.is_main, on_measured=run.say_eta if info.is_main else None)
    run.speed = Speed(run.step)
    run.model.train()
    out_of_time = state is not None and run.clock.spent()  # a fresh run takes at least one step
    resume = f"{console.command()} run {run_dir}/recipe.toml --resume {run_dir}"
    if out_of_time and run.step < cfg.steps:
        say(
            f"gentk: the run's time budget (train.minutes = {cfg.minutes:g}) is spent at step {run.step}; nothing to train. Raise train.minutes "
            f"to continue it: {resume} --minutes N."
        )
    elif state is not None and run.step >= cfg.steps:
        say(
            f"gentk: this run already finished (step {run.step} of {cfg.steps}); nothing to train, its final weights are evaluated again. "
            f"To train it longer: {resume} --set train.steps=N --force."
        )
    try:
        if state is not None and run.evaluation_missing(out_of_time):
            run.evaluate()
        with run.stop.installed():
            while run.step < cfg.steps and not out_of_time:
                run.train_step()
                out_of_time = run.out_of_time()  # the same on every rank, as `interrupted` below
                last = run.step == cfg.steps or out_of_time
                if run.step % cfg.log_every == 0 or last:
                    run.log_scalars()
                with run.speed.paused():  # speed/* counts training time only
                    # checkpoint before evaluating: an evaluation may take minutes and changes nothing
                    interrupted = run.interrupted()
                    if run.step % cfg.checkpoint_every == 0 or last or interrupted:
                        run.save()
                    if interrupted:
                        raise TrainingInterrupted(
                            interrupt_message(run.stop.requested, run.step, cfg.steps, run_dir, recipe), run_dir=run_dir, step=run.step
                        )
                    if run.step % recipe.eval.every == 0 or last:
                        if out_of_time:
                            say(
                                f"gentk: time budget of {cfg.minutes:g} minutes reached at step {run.step} of {cfg.steps}; saved, now the final "
                                "evaluation."
                            )
                        run.evaluate()
    finally:
        run.progress.close()
    return run.finish()


def open_run(recipe: Recipe, out: Path, info, resume, force: bool, claim: contextlib.ExitStack) -> tuple[Path, checkpoint.TrainState | None]:
    """Which run: a fresh run directory, or the one whose checkpoint we continue, and that checkpoint.

    Rank 0 decides, claims the directory (one process per run directory) and refuses a
    changed recipe unless `force`; every rank then loads the checkpoint, from the path rank 0
    chose: on several machines, the run directory must be on a filesystem they share.
    """
    decision = None
    if info.is_main:
        try:
            ckpt_path = find_resume(resume, out, recipe)
            if ckpt_path is not None:
                ckpt_path, loaded, note = checkpoint.load_resumable(ckpt_path)  # a damaged latest.pt gives way to a step file
                if note:
                    print(f"gentk: warning: {note}")
                check_same_recipe(loaded, recipe, ckpt_path, force)
                run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else rundir.new_run_dir(out, recipe.name)
            else:
                run_dir = rundir.new_run_dir(out, recipe.name)
            claim.enter_context(rundir.claim(run_dir, fresh=ckpt_path is None))
            decision = (str(ckpt_path) if ckpt_path else None, str(run_dir), None)
        except GentkError as exc:
            decision = (None, None, str(exc))
    ckpt_path, run_dir, error = dist.broadcast_object(decision, info)
    if error is not None:
        raise TrainingError(error)  # on every rank, so none waits for the others
    if ckpt_path is not None:
        check_visible(ckpt_path, info)
    state = checkpoint.TrainState.load(ckpt_path) if ckpt_path is not None else None
    if state is not None:
        if info.is_main:
            print(f"gentk: resuming {run_dir} from step {state.step} ({ckpt_path})")
        if state.world_size != info.world_size and not force:
            raise TrainingError(
                f"the checkpoint was written by {state.world_size} process(es), this run has {info.world_size}: "
                "the data order and random numbers would not continue exactly. Use the same number of processes, or --force "
                "to continue with the weights and optimizer states and a fresh data order."
            )
    return Path(run_dir), state


def check_visible(ckpt_path: str, info) -> None:
    """Every rank sees the checkpoint rank 0 resumes from (a filesystem that all machines share), or every rank stops."""
    blind = [rank for rank, seen in enumerate(dist.gather_objects(Path(ckpt_path).is_file(), info)) if not seen]
    if blind:
        raise TrainingError(
            f"rank(s) {', '.join(map(str, blind))} cannot see the checkpoint that rank 0 resumes from ({ckpt_path}): resuming on "
            "several machines needs the run directory on a filesystem they all share. Put --out on a shared filesystem (or copy the "
            "run directory to the same path on every machine), then resume."
        )


@attrs.define(eq=False)
class Run:
    """One training run's objects and counters, and the named parts of the loop in `_train`.

    `Run.build` makes the objects (alike on every rank); `_train` sets `sync`, `log`,
    `progress`, `speed`, `clock` and `stop` as the run starts. Everything a checkpoint holds comes
    from here (`save`) and goes back here (`restore`), through `checkpoint.TrainState`.
    """

    recipe: Recipe
    plugins: Any
    info: dist.DistInfo
    device: torch.device
    run_dir: Path
    data: Any
    model: torch.nn.Module
    training_steps: list  # the Model's TrainingSteps, in order
    specs: dict[str, PhaseSpec]  # per training step: train.phases.<its phase>
    params: dict[str, list[torch.nn.Parameter]]  # per training step: what it updates (clipped together)
    optimizers: dict[str, torch.optim.Optimizer]
    schedules: dict[str, Any]
    scalers: dict[str, Any]  # fp16 AMP only
    autocast: Callable[[], Any]
    ema: EMA | None
    batches: Any
    labeled_batches: Any  # None without a supervised phase
    compiled: bool = False  # train.compile, where torch.compile can build code on this machine (`can_compile`)
    sync: dist.PartSync | None = None
    log: rundir.MetricsLog | None = None  # rank 0 only
    progress: Progress | None = None
    speed: Speed | None = None
    clock: RunClock | None = None
    stop: StopRequest | None = None
    voted: tuple[bool, bool] = (False, False)  # under torchrun: the stop votes the last step's all-reduce carried
    step: int = 0
    device_line: str = ""  # device, threads and dtype, as the banner says them
    best: dict | None = None  # what best.pt holds: {"name", "value", "step"}
    last_saved: int | None = None  # the step of the newest checkpoint, for the NaN message
    overflows: dict[str, int] = attrs.Factory(dict)  # per training step: fp16 overflows in a row
    sums: dict[str, Any] = attrs.Factory(dict)  # running sums of the log interval in progress (floats, tensors on the device)
    counted: int = 0  # steps in those sums
    final: dict[str, float] = attrs.Factory(dict)  # the last logged and evaluated scalars

    @classmethod
    def build(cls, recipe: Recipe, plugins, device: torch.device, info, run_dir: Path, offline: bool, model=None, data=None) -> Run:
        """The data, the model (rank 0's weights on every rank), an optimizer and a schedule per training step, the EMA and the batches."""
        cfg = recipe.train
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
        specs = {s.name: cfg.phase(s.phase) for s in training_steps}
        optimizers = {s.name: build_optimizer(s, specs[s.name], plugins) for s in training_steps}
        schedules = {s.name: build_schedule(optimizers[s.name], specs[s.name], cfg.steps, plugins) for s in training_steps}
        check_part_lr(recipe, training_steps)
        autocast, scalers = mixed_precision(cfg.amp, device, training_steps)
        ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        compiled = cfg.compile and can_compile(device, quiet=not info.is_main)
        if compiled:
            compile_parts(model)
        # the global batch size; each rank gets its slice
        common = recipe.data.common
        keep_train_split(data, common.on_device, device)  # on a GPU with room, batches are gathered there
        batches = data.train_batches(common.batch_size, seed=recipe.seed, rank=info.rank, world_size=info.world_size)
        labeled_batches = None
        if any(s.phase == "supervised" for s in training_steps):
            labeled_batches = data.train_batches(
                common.labeled_batch_size or common.batch_size, seed=recipe.seed, rank=info.rank, world_size=info.world_size, labeled=True
            )
        return cls(
            recipe=recipe,
            plugins=plugins,
            info=info,
            device=device,
            run_dir=run_dir,
            data=data,
            model=model,
            training_steps=training_steps,
            specs=specs,
            params=params,
            optimizers=optimizers,
            schedules=schedules,
            scalers=scalers,
            autocast=autocast,
            ema=ema,
            batches=batches,
            labeled_batches=labeled_batches,
            compiled=compiled,
        )

    # -- checkpoints

    def restore(self, state: checkpoint.TrainState) -> None:
        """Continue where `state` stopped: weights, optimizers, schedules, scalers and EMA; with
        as many processes as wrote it, also each rank's data position, random numbers and log interval."""
        try:
            self.model.load_state_dict(state.model)
            for name, optimizer in self.optimizers.items():
                rates = [group["initial_lr"] for group in optimizer.param_groups]  # this recipe's, before the checkpoint's replace them
                optimizer.load_state_dict(state.optimizers[name])
                self.schedules[name].load_state_dict(state.schedules[name])
                follow_recipe_rates(optimizer, self.schedules[name], rates)
                if name in self.scalers:
                    self.scalers[name].load_state_dict(state.scalers[name])
            if self.ema is not None:
                if state.ema is not None:
                    self.ema.load_state_dict(state.ema)
                else:  # a fork that turns the average on: it starts from the checkpoint's weights, not the initial ones
                    self.ema.restart()
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(
                f"the checkpoint does not fit this model ({type(exc).__name__}: {' '.join(str(exc).split())}). Was the model changed? Resume "
                "with the recipe that wrote it."
            ) from None
        rank = self.info.rank
        if state.world_size == self.info.world_size:
            position = state.data[rank]
            self.batches.load_state_dict(position["train"])
            if self.labeled_batches is not None and position["labeled"] is not None:
                self.labeled_batches.load_state_dict(position["labeled"])
            checkpoint.set_rng_state(state.rng[rank], self.device)
            self.sums, self.counted = state.log_interval(rank)  # a resumed run logs the means an unbroken one would
        self.step, self.best, self.last_saved = state.step, state.best, state.step

    def save(self, *, is_best: bool = False) -> None:
        """Checkpoint the current step (as best.pt too when `is_best`); every rank takes part, rank 0 writes."""
        info = self.info
        rng = dist.gather_objects(checkpoint.rng_state(self.device), info)
        interval = dist.gather_objects({"sums": read_once(self.sums), "counted": self.counted}, info)
        labeled = checkpoint.plain(self.labeled_batches.state_dict()) if self.labeled_batches else None
        positions = dist.gather_objects({"train": checkpoint.plain(self.batches.state_dict()), "labeled": labeled}, info)
        if info.is_main:
            with self.sync.unwrapped(self.model):
                weights = self.model.state_dict()
            state = checkpoint.TrainState(
                step=self.step,
                model=weights,
                ema=self.ema.state_dict() if self.ema else None,
                optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
                schedules={k: s.state_dict() for k, s in self.schedules.items()},
                scalers={k: s.state_dict() for k, s in self.scalers.items()},
                data=positions,
                rng=rng,
                recipe=self.recipe.to_dict(),
                image_shape=list(self.data.image_shape),
                best=self.best,
                world_size=info.world_size,
                elapsed=self.clock.seconds(),
                cpu_elapsed=self.clock.cpu_seconds(),
                interval=interval,
            )
            checkpoint.save(state.to_dict(), self.run_dir / "checkpoints", keep_last=self.recipe.train.keep_last, best=is_best)
        self.last_saved = self.step

    # -- the run directory

    def start_directory(self) -> None:
        """Lay out the run directory (rank 0): the resolved recipe, the environment, the data
        manifest; the metrics files cut back to the checkpoint's step."""
        run_dir = self.run_dir
        self.log = rundir.MetricsLog(run_dir)
        rundir.make_layout(run_dir)
        profile = f" --profile {self.recipe.profile}" if self.recipe.profile else ""
        rundir.write_text(run_dir / "recipe.toml", f"# resolved from {self.recipe.source}{profile}\n" + self.recipe.to_toml())  # a resume may read it
        rundir.write_environment(run_dir, rundir.environment(self.device, self.info.world_size), self.step)
        if hasattr(self.data, "write_manifest"):
            self.data.write_manifest(run_dir)
        for note in self.log.truncate(self.step):  # drop what a previous process logged after its last checkpoint; repair
            print(f"gentk: warning: {note}")

    # -- what the run says as it starts

    def banner(self) -> str:
        """Where the run writes, its device, threads and dtype, each part's parameters and the steps (`console.banner`)."""
        dtype = next(self.model.parameters()).dtype
        self.device_line = console.device_text(self.device, self.recipe.train.amp, self.info.world_size, dtype)
        with self.sync.unwrapped(self.model):
            counts = console.parameter_counts(self.model)
            if self.device.type == "cpu":  # a PixelCNN's own CPU bfloat16 option (`bf16`)
                autocast = [name for name, part in self.model.named_children() if hasattr(part, "cpu_bf16") and part.cpu_bf16()]
                self.device_line += "".join(f", {name} trains under bfloat16 autocast" for name in autocast)
            if self.compiled:
                eager = [name for name, part in self.model.named_modules() if getattr(part, "double_backward", False)]
                self.device_line += ", compiled" + "".join(f", {name} eager (double backward)" for name in eager)
            elif self.recipe.train.compile:
                self.device_line += ", not compiled (torch.compile cannot build code here)"
        return console.banner(self.recipe, self.run_dir, self.device_line, counts, [ts.name for ts in self.training_steps], self.step)

    def say_eta(self, seconds_per_step: float, measured: tuple[int, int]) -> None:
        """The measured time per step and the ETA; for a run longer than an hour, how to run a smaller budget."""
        budget = self.clock.budget
        budget_left = None if budget is None else budget - self.clock.seconds()
        self.progress.write(console.eta_message(seconds_per_step, measured, self.recipe.train.steps, budget_left, now=datetime.datetime.now()))
        left, _ = console.remaining_seconds(seconds_per_step, measured[1], self.recipe.train.steps, budget_left)
        if left > console.Progress.long_run_s:
            self.progress.write(console.long_run_paragraph(left, self.recipe, self.device_line, console.command()))

    # -- one step

    def train_step(self) -> None:
        """One step: every training step's update in order, on one batch (the supervised ones on a labeled batch).

        The losses and logged values are summed where they were computed (on a GPU, there)
        and read once per log interval (`log_scalars`); the one read per step is the check
        that every training step's loss is finite, which under torchrun reads the stop votes
        as well (`stop_flags`).
        """
        batch = next(self.batches).to_device(self.device)
        labeled = next(self.labeled_batches).to_device(self.device) if self.labeled_batches is not None else None
        losses = {}
        started = time.perf_counter()
        asked = self.stop_flags() if self.info.distributed else ()  # carried by the first training step's all-reduce
        votes = []
        for ts in self.training_steps:
            losses[ts.name], scalars, tallied = self.update(ts, labeled if ts.phase == "supervised" else batch, asked)
            asked, votes = (), votes + tallied
            self.add(f"train/{ts.name}/loss", losses[ts.name])
            for key, value in scalars.items():
                if key != "loss":  # the all-rank mean above is the step's loss
                    self.add(f"train/{ts.name}/{key}", value)
        read = self.check_finite(losses, votes)
        if votes:
            self.voted = (read[0] > 0, read[1] > 0)
        self.counted += 1
        if self.ema:
            self.ema.update(self.model, updates=self.step)
        self.step += 1
        self.progress.update(self.step, self.sums, self.counted, time.perf_counter() - started)  # live losses: the interval's running means

    def add(self, name: str, value: float | torch.Tensor) -> None:
        """Add a logged value to the running sum of the log interval (a tensor stays on its device)."""
        self.sums[name] = self.sums.get(name, 0.0) + (value.detach().float() if torch.is_tensor(value) else float(value))

    def update(self, ts, batch, votes: tuple[bool, ...] = ()) -> tuple[torch.Tensor, dict[str, Any], list[Any]]:
        """Training step `ts` on `batch`: forward, backward (gradients averaged over ranks), clip,
        optimizer and schedule step. Returns the loss (mean over ranks), the step's logged values
        and `votes` tallied over ranks by the same all-reduce (`dist.average_gradients`).

        Under fp16 the GradScaler skips an update whose gradients overflowed and lowers its
        scale; the schedule then does not step either.
        """
        optimizer, scaler, spec = self.optimizers[ts.name], self.scalers.get(ts.name), self.specs[ts.name]
        optimizer.zero_grad(set_to_none=True)
        with self.sync.step(ts):
            with self.autocast(), loss_scale(scaler.get_scale() if scaler else 1.0):  # the scale: for losses that take gradients (R1)
                loss, scalars = ts.loss(batch)
            (scaler.scale(loss) if scaler else loss).backward()
        loss, votes = self.sync.reduce(ts, loss, votes)  # checked by `check_finite` once every training step has run
        if scaler:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if spec.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.params[ts.name], spec.clip_grad)
        applied = True
        if scaler:
            scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped when a gradient is inf or NaN (on every rank alike: they are averaged)
            scaler.update()  # and then the scale is lowered
            applied = scaler.get_scale() >= scale
            scalars = {**scalars, "skipped": 0.0 if applied else 1.0}  # logged: the share of updates skipped
        else:
            optimizer.step()
        if applied:  # a skipped update does not advance the learning-rate schedule either
            self.schedules[ts.name].step()
        return loss, scalars, votes

    def stop_flags(self) -> tuple[bool, bool]:
        """This process's reasons to stop: a signal (SIGINT, SIGTERM) asked it; its clock passed the time budget.

        Every rank must stop at the same step. On one process `interrupted` and `out_of_time`
        read these flags as they are. Under torchrun each rank's flags as a step begins travel
        in that step's first all-reduce (`dist.average_gradients`) and are read with the
        losses, so the check costs no collective and no read of its own (it cost an all-reduce
        and a read per step, two with a time budget); `interrupted` and `out_of_time` then
        answer what any rank voted. A Ctrl-C that comes during a step is therefore acted on
        after the next one, a step later than on one process.
        """
        return self.stop.requested is not None, self.clock.spent()

    def interrupted(self) -> bool:
        """Whether a signal asked the run to stop, on every rank alike (`stop_flags`)."""
        return self.voted[0] if self.info.distributed else self.stop_flags()[0]

    def out_of_time(self) -> bool:
        """Whether the time budget is spent, on every rank alike (`stop_flags`)."""
        return self.voted[1] if self.info.distributed else self.stop_flags()[1]

    def check_finite(self, losses: dict[str, torch.Tensor], votes: list[Any] = ()) -> list[float]:
        """Stop the run on a non-finite loss of any training step (without saving): one read of them all, and of
        `votes` (returned as floats).

        A later training step of the same step may have run on the non-finite weights; nothing
        is saved, so nothing of it stays. Under fp16 an overflow in the forward pass is skipped
        first, as the GradScaler skips any overflow (its gradients are not finite); the run stops
        when `FP16_PATIENCE` steps in a row overflow.
        """
        read = list(read_once({**losses, **{f"vote {i}": vote for i, vote in enumerate(votes)}}).values())
        for ts, value in zip(self.training_steps, read):
            if math.isfinite(value):
                self.overflows[ts.name] = 0
                continue
            if ts.name in self.scalers:
                self.overflows[ts.name] = self.overflows.get(ts.name, 0) + 1
                if self.overflows[ts.name] < FP16_PATIENCE:
                    continue
            raise TrainingError(nan_message(ts, self.step + 1, value, self.run_dir, self.last_saved, self.overflows.get(ts.name, 0)))
        return read[len(self.training_steps) :]

    # -- logging and evaluation

    def log_scalars(self) -> None:
        """Log the mean of each scalar since the last log (averaged over ranks), the speed, the learning rates and the time."""
        scalars = dist.mean_scalars({k: v / self.counted for k, v in read_once(self.sums).items()}, self.info, self.device)
        scalars["speed/steps_per_s"] = self.speed.steps_per_s(self.step)
        scalars["speed/images_per_s"] = scalars["speed/steps_per_s"] * self.recipe.data.common.batch_size
        for name, schedule in self.schedules.items():
            scalars[f"lr/{name}"] = schedule.get_last_lr()[0]
        scalars.update(self.clock.scalars())
        scalars.update(machine_scalars())
        if self.info.is_main:
            self.log.write(self.step, scalars)
            self.plugins.pm.hook.gentk_log(run_dir=self.run_dir, step=self.step, scalars=scalars)
            self.progress.show(self.step, scalars)
        self.final.update(scalars)
        self.sums, self.counted = {}, 0
        self.speed.restart(self.step)

    def evaluate(self) -> None:
        """Evaluate the current step; the best evaluation so far is checkpointed at once (as best.pt), then logged."""
        with self.sync.unwrapped(self.model):
            metrics = run_evaluation(self.model, self.ema, self.data, self.recipe, self.plugins, self.device, self.info, self.run_dir, self.step)
        metrics.update(self.clock.scalars())  # curves against wall and CPU time as well as steps
        metrics.update(machine_scalars())
        self.final.update(metrics)
        key = best_key(metrics, self.training_steps[0].name)
        if key is not None and (self.best is None or metrics[key] < self.best["value"]):
            self.best = {"name": key, "value": metrics[key], "step": self.step}
            self.save(is_best=True)
        if self.info.is_main:  # logged last: a resume re-runs an evaluation whose rows are missing
            self.log.write(self.step, metrics)
            self.plugins.pm.hook.gentk_after_eval(run_dir=self.run_dir, step=self.step, metrics=metrics)
            self.progress.write(f"step {self.step}: " + format_scalars(metrics))

    def evaluation_missing(self, out_of_time: bool) -> bool:
        """Whether an evaluation due at the checkpoint's step never completed (killed, or stopped before it); rank 0's log decides."""
        due = self.step % self.recipe.eval.every == 0 or self.step == self.recipe.train.steps or out_of_time
        return due and dist.broadcast_object(self.info.is_main and not self.log.logged(self.step, "eval/"), self.info)

    def finish(self) -> TrainResult:
        """The final record: eval.json (rank 0) and the `TrainResult`."""
        if not self.final:  # resumed a run that had already finished: evaluate it once more
            with self.sync.unwrapped(self.model):
                self.final = run_evaluation(
                    self.model, self.ema, self.data, self.recipe, self.plugins, self.device, self.info, self.run_dir, self.step
                )
        if self.info.is_main:  # eval.json: the final evaluation; keeps what `gentk eval` added there
            path = self.run_dir / "eval.json"
            record = json.loads(path.read_text()) if path.is_file() else {}
            evaluated = {k: v for k, v in self.final.items() if k.startswith("eval/")}
            record.update(
                step=self.step,
                best=self.best,
                minutes=round(self.clock.seconds() / 60, 3),
                cpu_minutes=round(self.clock.cpu_seconds() / 60, 3),
                metrics=evaluated,
            )
            rundir.write_json(path, record)
        return TrainResult(run_dir=self.run_dir if self.info.is_main else None, metrics=self.final, step=self.step)


def machine_scalars() -> dict[str, float]:
    """``machine/load_1min``: the machine's load average, logged beside ``time/minutes`` so that
    a reader of the curves against minutes sees whether other jobs shared the cores (one read
    of /proc/loadavg; nothing where the OS has no load average)."""
    load = rundir.machine_load()
    return {} if load is None else {"machine/load_1min": load[0]}


def read_once(values: dict[str, Any]) -> dict[str, float]:
    """`values` (floats and 0-dim tensors) as floats, with one read of all the tensors (one GPU-to-host copy)."""
    tensors = [key for key, value in values.items() if torch.is_tensor(value)]
    device = values[tensors[0]].device if tensors else None  # a plugin's value on another device joins the others
    read = dict(zip(tensors, torch.stack([values[key].to(device) for key in tensors]).tolist())) if tensors else {}
    return {key: read[key] if key in read else float(value) for key, value in values.items()}


class Speed:
    """Training steps per second since the last log, leaving out checkpoints and evaluations."""

    def __init__(self, step: int) -> None:
        self.restart(step)

    def restart(self, step: int) -> None:
        self.start, self.step = time.perf_counter(), step

    def steps_per_s(self, step: int) -> float:
        return (step - self.step) / (time.perf_counter() - self.start)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in the block does not count (on the way out of an exception too: the run then ends anyway)."""
        paused = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - paused


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
        torch.set_flush_denormal(True)  # denormals slowed an AAE from 13 to 1 step/s (docs/architecture.md, "Performance facts")
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


def follow_recipe_rates(optimizer: torch.optim.Optimizer, schedule, rates: list[float]) -> None:
    """After a checkpoint's optimizer and schedule states are loaded: the learning rates of the recipe being run.

    Both states hold the rates of the recipe that wrote them, so a run resumed with ``--force``
    and a changed rate would go on at the old one, and one with a changed schedule would take
    its first step at the old schedule's rate. The schedule's base rates become `rates` (this
    recipe's) and each group's rate is the schedule's value at the restored step: a changed
    recipe continues exactly as a run of it from the start would (with constant rates before
    the change), and an unchanged one gets the very floats it saved. Every built-in schedule
    is a LambdaLR; another plugin schedule keeps the checkpoint's rates.
    """
    if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
        return
    schedule.base_lrs = list(rates)
    for group, rate, factor in zip(optimizer.param_groups, rates, schedule.lr_lambdas):
        group["initial_lr"] = rate
        group["lr"] = rate * factor(schedule.last_epoch)  # as LambdaLR.get_lr computes it
    schedule._last_lr = [group["lr"] for group in optimizer.param_groups]


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


def can_compile(device: torch.device, *, quiet: bool = False) -> bool:
    """Whether torch.compile can build code for `device` here; if not, say why and how to fix it.

    Inductor writes C++ on a CPU (and Triton on a GPU) and builds it with the machine's
    tools: a C++ compiler, Python's headers and OpenMP. Without them the first compiled
    forward fails deep inside torch. A one-line function compiled up front finds this
    before training starts, and the parts then run eager: the same training (a recipe's
    result is its step count), only slower.
    """
    problem = compile_problem(device.type)
    if problem is not None and not quiet:
        print(
            f"gentk: warning: train.compile = true, but torch.compile cannot build code for {device.type} on this machine "
            f"({problem}). The parts run eager: the same training, slower (the PixelGAN CPU recipes train about 1.4x "
            "faster compiled). To compile, install a C++ compiler with OpenMP and Python's headers (Debian/Ubuntu: "
            "apt install g++ python3-dev) or point the CXX variable at one; to silence this, --set train.compile=false."
        )
    return problem is None


@functools.cache
def compile_problem(device_type: str) -> str | None:
    """The first line of torch.compile's error for a one-line function on `device_type`, or None when it builds."""
    try:
        torch.compile(_compile_probe, fullgraph=True, dynamic=False)(torch.ones(8, device=device_type))
    except Exception as exc:  # any failure to build means: run eager (InductorError, BackendCompilerFailed, OSError ...)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return (lines[0] if lines else type(exc).__name__)[:300]
    return None


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x) * x + 1  # one fused pointwise kernel: code generation, a compiler run and a load


def compile_parts(model: torch.nn.Module) -> None:
    """torch.compile each sub-network's forward in place (state_dict names unchanged).

    A part whose loss differentiates its own gradients (an R1 penalty) sets
    ``double_backward = True`` and stays eager: torch.compile has no double backward.
    """
    for module in model.children():
        if getattr(module, "double_backward", False):
            continue
        if type(module).forward is not torch.nn.Module.forward:
            module.compile()
        else:  # a container such as ModuleDict: compile what it holds
            compile_parts(module)


class RunClock:
    """Wall-clock time of a run, counted over resumes, and its optional budget (train.minutes);
    beside it the CPU time of this process.

    It counts everything the training processes spend after building the run, evaluations
    included (the final evaluation comes after the budget); the checkpoint keeps the totals.
    CPU time (all threads of the process, `time.process_time`) is what a run costs when other
    jobs share the cores: their load stretches its wall time but not its CPU time, so runs of
    one thread each compare at equal CPU time however the machine was shared.
    """

    def __init__(self, before: float, minutes: float | None, cpu_before: float = 0.0) -> None:
        self.before = before  # seconds spent by earlier processes of this run
        self.cpu_before = cpu_before  # and the CPU seconds they used
        self.budget = None if minutes is None else 60.0 * minutes
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def cpu_seconds(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu_start

    def scalars(self) -> dict[str, float]:
        """``time/minutes`` and ``time/cpu_minutes``, logged with every scalar row and evaluation."""
        return {"time/minutes": self.seconds() / 60, "time/cpu_minutes": self.cpu_seconds() / 60}

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
        self.restart()

    def decay_at(self, updates: int | None) -> float:
        return self.decay if updates is None else min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, updates: int | None = None) -> None:
        """Move the average towards the live weights; `updates`: how many updates came before."""
        weight = 1.0 - self.decay_at(updates)
        for k, v in self.live.items():
            self.shadow[k].lerp_(v, weight)

    def restart(self) -> None:
        """The average becomes the live weights as they are now (at the start, and a resume that turns the average on)."""
        self.shadow = {k: v.detach().clone() for k, v in self.live.items()}

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
    # a wall-clock budget changes neither the model nor its trajectory: raising it continues a run; where the training
    # split lives changes no number (the batch stream refuses a binarization generator of another device itself)
    changes = [c for c in diff(state["recipe"], recipe.to_dict()) if not c.startswith(("train.minutes:", "data.on_device:"))]
    if not changes:
        return
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    if not force:
        raise TrainingError(
            f"the recipe differs from the one that wrote {path}: {shown}. Resume with the same recipe, or add --force to continue with this one."
        )
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


# --------------------------------------------------------------------------- evaluation


def best_key(metrics: dict[str, float], first_step: str) -> str | None:
    """The scalar that decides best.pt: the held-out loss of the first training step.

    That is the reconstruction step of every model: the negative ELBO of a (Pixel)VAE,
    the NLL of a PixelCNN, the reconstruction NLL of an (PixelGAN) adversarial autoencoder
    (plus its weighted generator loss when the generator update is joint).
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

    def installed(self) -> contextlib.AbstractContextManager[None]:
        return signals_handled(self.handle, (signal.SIGINT, signal.SIGTERM))


@contextlib.contextmanager
def signals_handled(handler, signums) -> Iterator[None]:
    """`handler` for each of `signums` while the block runs, the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; nothing to install elsewhere
        return
    # a signal the process was started ignoring (SIGINT of a shell script's background job)
    # stays ignored, as Python itself leaves it
    watched = [s for s in signums if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in watched}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def interrupt_message(signame: str | None, step: int, total: int, run_dir: Path, recipe: Recipe) -> str:
    # run_dir/recipe.toml is the resolved recipe, --set overrides included: it always matches
    return (
        f"{signame or 'a signal'} at step {step} of {total}: checkpoint saved in {run_dir}/checkpoints. Resume with: {console.command()} run "
        f"{run_dir}/recipe.toml --resume {run_dir}"
    )


def nan_message(ts, step: int, value: float, run_dir: Path, last_saved: int | None, overflows: int = 0) -> str:
    fix = f"{console.command()} run {run_dir}/recipe.toml --set train.phases.{ts.phase}.clip_grad=1.0"
    if last_saved is None:  # nothing to resume from: the fix starts a new run
        kept, fix = "No checkpoint was written yet, so there is nothing to resume", f"{fix} --out {run_dir.parent}, a new run"
    else:
        kept, fix = f"The last good checkpoint (step {last_saved}) is in {run_dir}/checkpoints", f"{fix} --resume {run_dir} --force"
    fp16 = ""
    if overflows:
        fp16 = f" Under train.amp = 'fp16' the loss overflowed {overflows} steps in a row (each update skipped); 'bf16' has the range of fp32."
    return (
        f"the {ts.phase} phase (training step '{ts.name}') gave a non-finite loss ({value}) at step {step}; the run stopped without saving. "
        f"{kept}. Lower train.phases.{ts.phase}.optimizer.lr or set train.phases.{ts.phase}.clip_grad (e.g. {fix}).{fp16}"
    )
