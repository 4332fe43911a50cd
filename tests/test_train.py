"""The engine end to end on the synthetic dataset: run directory, exact resume, NaN, options.

Every run here is a tiny MLP model on 8x8 synthetic images, a few steps on the CPU.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import attrs
import h5py
import pytest
import torch
from PIL import Image

import gentk
from gentk import checkpoint, rundir
from gentk.errors import TrainingError, TrainingInterrupted
from gentk.train import EMA, train

# A semi-supervised adversarial autoencoder: every phase, and every source of randomness
# the engine must restore (input noise, prior samples, dynamic binarization, two batch
# streams, a cosine schedule, an EMA).
SEMISUP = """
name = "tiny_semisup"
seed = 3
[data]
name = "synthetic"
binarize = "dynamic"
batch_size = 20
labeled = 20
labeled_batch_size = 10
classes = 4
[model.encoder]
name = "mlp"
hidden = [16]
input_noise = 0.3
[model.latents.y]
size = 4
head = "categorical"
supervised = true
prior = { name = "categorical" }
regularizer = { name = "adversarial", discriminator = [16] }
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [16]
[train]
steps = 12
log_every = 1
checkpoint_every = 4
ema = 0.9
[train.phases.reconstruction]
optimizer = { name = "adam", lr = 1e-3, part_lr = { encoder = 3e-4 } }
schedule = { name = "cosine" }
[train.phases.regularization]
optimizer = { name = "adam", lr = 1e-4 }
[train.phases.supervised]
optimizer = { name = "sgd", lr = 0.01 }
clip_grad = 1.0
[eval]
every = 6
samples = 8
max_examples = 40
"""


@pytest.fixture
def plugins():
    return gentk.load_plugins(autoload=False)


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny_semisup.toml"
    path.write_text(SEMISUP)
    return path


def load(path, plugins, *overrides):
    return gentk.load_recipe(path, list(overrides), plugins=plugins)


def weights(run_dir, name="latest.pt"):
    return checkpoint.load(run_dir / "checkpoints" / name)


def losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_fills_the_run_directory(tmp_path, recipe_file):
    evaluations = []

    class Follower:  # a run callback plugin
        @gentk.hookimpl
        def gentk_after_eval(self, run_dir, step, metrics):
            evaluations.append((run_dir, step, metrics["eval/validation/reconstruction/loss"]))
            so_far = rundir.read_metrics(run_dir)  # metrics.h5 is readable while the run goes on
            assert so_far["train/reconstruction/loss"]["step"].tolist() == list(range(1, step + 1))

    plugins = gentk.load_plugins(autoload=False, plugins=[Follower()])
    recipe = load(recipe_file, plugins, "train.keep_last=2")
    result = train(recipe, plugins=plugins, out=tmp_path / "runs")
    run = result.run_dir
    assert run.parent == tmp_path / "runs" and run.name.startswith("tiny_semisup-")
    assert result.step == 12 and math.isfinite(result.metrics["eval/validation/reconstruction/loss"])
    assert [(r, s) for r, s, _ in evaluations] == [(run, 6), (run, 12)] and evaluations[-1][2] == result.metrics[
        "eval/validation/reconstruction/loss"
    ]

    # resolved recipe, environment, final evaluation
    assert gentk.load_recipe(run / "recipe.toml", plugins=plugins).to_dict() == recipe.to_dict()
    env = json.loads((run / "env.json").read_text())
    assert env["device"] == "cpu" and env["world_size"] == 1 and env["packages"]["torch"] == torch.__version__
    assert json.loads((run / "eval.json").read_text())["step"] == 12

    # one HDF5 dataset per scalar with its steps; the jsonl has the same numbers
    with h5py.File(run / "metrics.h5", "r", locking=False) as f:
        rec = f["train/reconstruction/loss"][()]
        assert rec["step"].tolist() == list(range(1, 13))
        assert set(f["train"]) == {"reconstruction", "discriminator.y", "generator.y", "supervised.y"}
        assert f["eval/validation/reconstruction/loss"]["step"].tolist() == [6, 12]
        lr = f["lr/reconstruction"][()]["value"]
    lines = losses(run)
    assert [e["train/reconstruction/loss"] for e in lines if "train/reconstruction/loss" in e] == rec["value"].tolist()
    assert lr[0] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi / 12)))  # cosine, encoder group first

    # checkpoints: keep-last-2 periodic files, latest and best
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*.pt")) == ["step-00000008.pt", "step-00000012.pt"]
    assert weights(run)["step"] == 12
    best = weights(run, "best.pt")
    assert best["best"]["name"] == "eval/validation/reconstruction/loss" and best["step"] in (6, 12)

    # samples: one PNG per evaluation, one row per category (4 categories x 2 per row of 8x8 images), drawn to be read:
    # enlarged 3x, the mean images beside the samples, a label left of each row and a title above each panel
    grid = Image.open(run / "samples" / "step-00000012.png")
    panel = (3 * (2 * (8 + 2) + 2), 3 * (4 * (8 + 2) + 2))
    assert grid.mode == "RGB" and grid.size[0] > 2 * panel[0] and grid.size[1] > panel[1]
    assert (run / "samples" / "step-00000006.png").exists()
    assert (run / "data.json").exists()


def interrupting_at(at: int):
    """Plugins that send the process a SIGINT as step `at` is logged (`train.log_every = 1`)."""

    class Interrupt:
        @gentk.hookimpl
        def gentk_log(self, run_dir, step, scalars):
            if step == at:
                os.kill(os.getpid(), signal.SIGINT)

    return gentk.load_plugins(autoload=False, plugins=[Interrupt()])


def test_resume_after_sigint_equals_uninterrupted_training(tmp_path, plugins, recipe_file):
    recipe = load(recipe_file, plugins)
    whole = train(recipe, plugins=plugins, out=tmp_path / "whole").run_dir

    stopping = interrupting_at(5)  # a SIGINT arriving during step 5: the engine saves after it
    with pytest.raises(TrainingInterrupted) as stop:
        train(recipe, plugins=stopping, out=tmp_path / "parts")
    assert stop.value.step == 5 and "SIGINT at step 5 of 12" in str(stop.value) and f"--resume {stop.value.run_dir}" in str(stop.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    part = stop.value.run_dir
    assert weights(part)["step"] == 5

    resumed = train(recipe, plugins=plugins, out=tmp_path / "parts", resume=part)
    assert resumed.run_dir == part and resumed.step == 12

    a, b = weights(whole), weights(part)
    for section in ("model", "ema"):
        assert a[section].keys() == b[section].keys()
        for key in a[section]:
            assert torch.equal(a[section][key], b[section][key]), f"{section}.{key} differs after resuming"
    for name in a["optimizers"]:
        for pid, state in a["optimizers"][name]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["optimizers"][name]["state"][pid][key])
    for stream in ("train", "labeled"):
        for key, value in a["data"][0][stream].items():
            same = torch.equal(value, b["data"][0][stream][key]) if torch.is_tensor(value) else value == b["data"][0][stream][key]
            assert same, f"data position {stream}.{key} differs"

    # the logged scalars agree step for step (the resumed run's log was cut at step 5 and continued)
    def logged(run):
        # wall-clock readings (speed, minutes) differ between any two runs; everything else must not
        return [{k: v for k, v in e.items() if not k.startswith(rundir.MACHINE_PREFIXES)} for e in losses(run)]

    assert logged(whole) == logged(part)


def test_a_run_with_the_training_split_on_the_device_is_the_same_run(tmp_path, plugins, recipe_file, monkeypatch):
    # data.on_device = true on the CPU: batches gathered by torch indexing, the same bits as NumPy's; a resume may
    # change where the split lives without --force
    from gentk.data import Data

    kept, keep = [], Data.keep_train_on
    monkeypatch.setattr(Data, "keep_train_on", lambda self, device: kept.append(str(device)) or keep(self, device))
    whole = train(load(recipe_file, plugins, "train.steps=8"), plugins=plugins, out=tmp_path / "whole").run_dir
    assert kept == []  # "auto" on a CPU: the host path
    stopping = interrupting_at(3)
    with pytest.raises(TrainingInterrupted) as stop:
        train(load(recipe_file, stopping, "train.steps=8", "data.on_device=true"), plugins=stopping, out=tmp_path / "parts")
    assert kept == ["cpu"] and weights(stop.value.run_dir)["data"][0]["train"]["noise_device"] == "cpu"
    part = train(load(recipe_file, plugins, "train.steps=8"), plugins=plugins, out=tmp_path / "parts", resume=stop.value.run_dir).run_dir
    a, b = weights(whole), weights(part)
    assert a["step"] == b["step"] == 8
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_fork_with_a_learning_rate_drop_is_the_run_of_the_recipe_with_that_drop(tmp_path, plugins, recipe_file):
    # a step checkpoint copied out of its run and resumed with a schedule that drops the rates at that step
    # (--force) continues exactly as the recipe with the drop trains from the start: both are constant before it
    constant = ["train.steps=8", 'train.phases.reconstruction.schedule={ name = "constant" }']
    drop = ["train.steps=8", *(f'train.phases.{p}.schedule={{ name = "step", every = 4, factor = 0.1 }}' for p in ("reconstruction", "supervised"))]
    original = train(load(recipe_file, plugins, *constant), plugins=plugins, out=tmp_path / "original").run_dir
    fork_point = tmp_path / "step-4.pt"
    shutil.copy(original / "checkpoints" / "step-00000004.pt", fork_point)
    fork = train(load(recipe_file, plugins, *drop), plugins=plugins, out=tmp_path / "forks", resume=fork_point, force=True)
    whole = train(load(recipe_file, plugins, *drop), plugins=plugins, out=tmp_path / "whole").run_dir
    assert fork.step == 8 and fork.run_dir.parent == tmp_path / "forks" and weights(original)["step"] == 8  # the original run is untouched
    a, b = weights(whole), weights(fork.run_dir)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    rates = [{k: v for k, v in row.items() if k.startswith("lr/")} for row in losses(whole) if row["step"] > 4 and "lr/reconstruction" in row]
    assert rates == [{k: v for k, v in row.items() if k.startswith("lr/")} for row in losses(fork.run_dir) if "lr/reconstruction" in row]
    assert rates[0]["lr/reconstruction"] == pytest.approx(3e-5)  # the encoder's 3e-4, dropped from the first step after the fork point


def test_a_fork_that_turns_on_the_weight_average_starts_it_from_the_fork_point(tmp_path, plugins, recipe_file):
    # the original kept no average; its step-4 checkpoint resumed with train.ema averages from those weights:
    # the first update (4 before it) keeps decay_at(4) = 5/14 of them and takes the rest from step 5's live weights
    plain = load(recipe_file, plugins, "train.steps=5", "train.ema=0", "train.checkpoint_every=1", "train.keep_last=5")
    original = train(plain, plugins=plugins, out=tmp_path / "original").run_dir
    fork_point = tmp_path / "step-4.pt"
    shutil.copy(original / "checkpoints" / "step-00000004.pt", fork_point)
    fork = train(load(recipe_file, plugins, "train.steps=5", "train.ema=0.5"), plugins=plugins, out=tmp_path / "forks", resume=fork_point, force=True)
    last = weights(original)
    w4, w5 = weights(original, "step-00000004.pt")["model"], last["model"]
    average = weights(fork.run_dir)["ema"]
    assert average and last["ema"] is None
    for key, value in average.items():
        expected = (5 / 14) * w4[key] + (9 / 14) * w5[key]  # training does not read the average: step 5 is the original's
        assert torch.allclose(value, expected, atol=1e-6), key


def test_a_run_resumed_with_a_changed_learning_rate_trains_at_it(tmp_path, plugins, recipe_file):
    run = train(load(recipe_file, plugins, "train.steps=4"), plugins=plugins, out=tmp_path).run_dir
    slower = load(recipe_file, plugins, "train.steps=6", "train.phases.regularization.optimizer.lr=5e-5")
    train(slower, plugins=plugins, out=tmp_path, resume=run, force=True)
    after = [row for row in losses(run) if row["step"] > 4 and "lr/discriminator.y" in row]
    assert [row["step"] for row in after] == [5, 6]
    assert all(row["lr/discriminator.y"] == row["lr/generator.y"] == 5e-5 for row in after)


def test_resume_auto_and_changed_recipe(tmp_path, plugins, recipe_file):
    first = train(load(recipe_file, plugins, "train.steps=4"), plugins=plugins, out=tmp_path).run_dir
    # auto: the newest run of this recipe; a changed recipe is refused with the key path
    with pytest.raises(TrainingError, match=r"train\.steps: 4 -> 6.*--force"):
        train(load(recipe_file, plugins, "train.steps=6"), plugins=plugins, out=tmp_path, resume="auto")
    longer = train(load(recipe_file, plugins, "train.steps=6"), plugins=plugins, out=tmp_path, resume="auto", force=True)
    assert longer.run_dir == first and longer.step == 6 and weights(first)["step"] == 6
    # auto with no earlier run starts a new one; a wrong path says what to pass
    other = train(load(recipe_file, plugins, "name=other", "train.steps=2"), plugins=plugins, out=tmp_path, resume="auto")
    assert other.run_dir.name.startswith("other-")
    with pytest.raises(TrainingError, match="no such file or directory"):
        train(load(recipe_file, plugins), plugins=plugins, out=tmp_path, resume=tmp_path / "nope")


@pytest.mark.parametrize("dropped", [("interval", "elapsed"), ("elapsed",)], ids=["format-1", "format-2-before-train.minutes"])
def test_checkpoints_of_earlier_versions_still_resume(tmp_path, plugins, recipe_file, dropped):
    """Files without the keys later versions added resume to the same weights; the layout round-trips through TrainState."""
    recipe = load(recipe_file, plugins, "train.log_every=3", "train.keep_last=5")  # the checkpoint at step 4 is inside a log interval
    run = train(recipe, plugins=plugins, out=tmp_path).run_dir
    unbroken, unbroken_log = weights(run), losses(run)
    path = run / "checkpoints" / "step-00000004.pt"
    raw = torch.load(path, weights_only=True)
    state = checkpoint.TrainState.load(path)
    assert list(state.to_dict()) == [k for k in raw if k != "checksum"] and checkpoint.content_digest(state.to_dict()) == raw["checksum"]

    old = {k: v for k, v in raw.items() if k not in (*dropped, "checksum")}
    if "interval" in dropped:  # format 1: no checksum either
        torch.save({**old, "format": 1}, path)
    else:
        checkpoint.atomic_save(old, path)
    resumed = train(recipe, plugins=plugins, out=tmp_path, resume=path)
    assert resumed.run_dir == run and resumed.step == 12
    again = weights(run)
    for key, value in unbroken["model"].items():
        assert torch.equal(value, again["model"][key]), key
    if "interval" not in dropped:  # the log interval's sums were kept: the same means
        clockless = lambda rows: [{k: v for k, v in e.items() if not k.startswith(rundir.MACHINE_PREFIXES)} for e in rows]  # noqa: E731
        assert clockless(losses(run)) == clockless(unbroken_log)


def test_nan_loss_stops_with_phase_and_step_and_keeps_last_checkpoint(tmp_path, plugins, recipe_file):
    from gentk.data import build_data
    from gentk.model import build_model

    recipe = load(recipe_file, plugins, "train.checkpoint_every=2", "eval.every=100")
    data = build_data(recipe.data, plugins, seed=recipe.seed)
    model = build_model(recipe, image_shape=data.image_shape, plugins=plugins)
    steps = model.training_steps()
    calls = itertools.count(1)

    def poisoned(batch, loss=steps[2].loss):  # generator.y goes NaN at its 3rd call
        value, logs = loss(batch)
        return (value * math.nan if next(calls) == 3 else value), logs

    model.training_steps = lambda: [steps[0], steps[1], attrs.evolve(steps[2], loss=poisoned), steps[3]]
    with pytest.raises(TrainingError) as error:
        train(recipe, plugins=plugins, out=tmp_path, model=model, data=data)
    message = str(error.value)
    assert "regularization phase (training step 'generator.y')" in message and "at step 3" in message
    assert "last good checkpoint (step 2)" in message and "clip_grad" in message
    run = next(tmp_path.glob("tiny_semisup-*"))
    assert weights(run)["step"] == 2 and not (run / "checkpoints" / "step-00000003.pt").exists()


@pytest.fixture
def cpu_fp16(monkeypatch):
    """train.amp = 'fp16' on the CPU: autocast to float16 and one GradScaler per training step, as on CUDA."""

    def mixed_precision(amp, device, training_steps):
        assert amp == "fp16"
        return (lambda: torch.autocast("cpu", dtype=torch.float16)), {s.name: torch.amp.GradScaler("cpu") for s in training_steps}

    monkeypatch.setattr(importlib.import_module("gentk.train"), "mixed_precision", mixed_precision)  # the module, not gentk.train()


def overflowing(recipe, plugins, at, scales=None):
    """The recipe's data and model, whose generator.y loss is infinite at the calls in `at` (1-based);
    `scales` gets the loss scale each call saw (`gentk.nn.current_loss_scale`)."""
    from gentk.data import build_data
    from gentk.model import build_model
    from gentk.nn import current_loss_scale

    data = build_data(recipe.data, plugins, seed=recipe.seed)
    model = build_model(recipe, image_shape=data.image_shape, plugins=plugins)
    steps = model.training_steps()
    calls = itertools.count(1)

    def poisoned(batch, loss=steps[2].loss):
        value, logs = loss(batch)
        if scales is not None:
            scales.append(current_loss_scale())
        return (value * math.inf if next(calls) in at else value), logs

    model.training_steps = lambda: [steps[0], steps[1], attrs.evolve(steps[2], loss=poisoned), steps[3]]
    return model, data


def test_fp16_skips_an_overflowing_step_with_its_schedule(tmp_path, plugins, recipe_file, cpu_fp16):
    recipe = load(recipe_file, plugins, "train.steps=5", "train.amp=fp16", "eval.every=100")
    scales = []
    model, data = overflowing(recipe, plugins, at={3}, scales=scales)
    run = train(recipe, plugins=plugins, out=tmp_path, model=model, data=data, device="cpu").run_dir
    state, rows = weights(run), [e for e in losses(run) if "train/generator.y/loss" in e]
    assert state["step"] == 5 and float(rows[2]["train/generator.y/loss"]) == math.inf and rows[2]["train/generator.y/skipped"] == 1
    for name in ("reconstruction", "discriminator.y", "generator.y", "supervised.y"):
        skipped = sum(e[f"train/{name}/skipped"] for e in rows)  # the overflow at step 3, and any of fp16's own (its first steps)
        assert state["schedules"][name]["last_epoch"] == 5 - skipped, name  # the schedule steps with the updates made
        assert state["scalers"][name]["scale"] == 2.0 ** (16 - skipped), name  # each skip halved the scale
    assert scales[0] == 2.0**16 and scales[3] == scales[2] / 2  # the loss sees the scaler's scale (for R1's gradient)


def test_fp16_stops_when_the_loss_keeps_overflowing(tmp_path, plugins, recipe_file, cpu_fp16):
    from gentk.train import FP16_PATIENCE

    recipe = load(recipe_file, plugins, "train.steps=20", "train.amp=fp16", "eval.every=100")
    model, data = overflowing(recipe, plugins, at=range(2, 100))
    with pytest.raises(TrainingError, match=rf"at step {FP16_PATIENCE + 1};.*'fp16' the loss overflowed {FP16_PATIENCE} steps in a row"):
        train(recipe, plugins=plugins, out=tmp_path, model=model, data=data, device="cpu")


def test_a_step_reads_from_the_device_once_and_a_log_interval_once(tmp_path, plugins, recipe_file, monkeypatch):
    """On a GPU, reading a tensor's value (.item(), float(), .tolist(), if tensor) waits for every kernel queued:
    gentk's code reads once per step (all training steps' losses, for the NaN check) and once per log interval."""
    import sys

    engine = importlib.import_module("gentk.train")
    counts, inside = {"train_step": [], "log_scalars": []}, []

    def counted(read):
        def read_and_count(self, *args, **kwargs):
            if inside and sys._getframe(1).f_globals.get("__name__", "").startswith("gentk"):  # torch's own (Adam's CPU step counts) aside
                counts[inside[-1]][-1] += 1
            return read(self, *args, **kwargs)

        return read_and_count

    def watched(name, method):
        def run_watched(self):
            counts[name].append(0)
            inside.append(name)
            try:
                return method(self)
            finally:
                inside.pop()

        return run_watched

    for read in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, read, counted(getattr(torch.Tensor, read)))
    for name in counts:
        monkeypatch.setattr(engine.Run, name, watched(name, getattr(engine.Run, name)))
    train(load(recipe_file, plugins, "train.steps=4", "train.log_every=2", "eval.every=100"), plugins=plugins, out=tmp_path)
    assert counts == {"train_step": [1, 1, 1, 1], "log_scalars": [1, 1]}  # four training steps a step, each with its logged values


def test_bad_options_are_errors_that_say_what_to_do(tmp_path, plugins, recipe_file):
    with pytest.raises(TrainingError, match=r"part_lr: unknown part 'encodr'.*Did you mean 'encoder'"):
        train(load(recipe_file, plugins, "train.phases.reconstruction.optimizer.part_lr={encodr = 1e-4}"), plugins=plugins, out=tmp_path)
    with pytest.raises(TrainingError, match="needs a CUDA device"):
        train(load(recipe_file, plugins, "train.amp=bf16"), plugins=plugins, out=tmp_path, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA is not available"):
            train(load(recipe_file, plugins), plugins=plugins, out=tmp_path, device="cuda")


def test_part_lr_and_step_schedule(tmp_path, plugins, recipe_file):
    recipe = load(recipe_file, plugins, "train.steps=4", 'train.phases.reconstruction.schedule={name = "step", every = 2, factor = 0.5}')
    run = train(recipe, plugins=plugins, out=tmp_path).run_dir
    groups = weights(run)["optimizers"]["reconstruction"]["param_groups"]
    assert [(g["part"], g["lr"]) for g in groups] == [("encoder", 3e-4 * 0.25), ("decoder", 1e-3 * 0.25)]
    with h5py.File(run / "metrics.h5", "r", locking=False) as f:
        assert f["lr/reconstruction"][()]["value"].tolist() == pytest.approx([3e-4, 1.5e-4, 1.5e-4, 7.5e-5])


def test_ema_averages_and_evaluates_with_the_average():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.state_dict()["weight"].tolist() == [[2.0, 2.0]]
    with ema.applied(model):
        assert model.weight.tolist() == [[2.0, 2.0]]
    assert model.weight.tolist() == [[3.0, 3.0]]
    # warm-up: the first update (none before it) keeps 1/10 of the average, later ones the decay
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, updates=0)
    assert ema.state_dict()["weight"].flatten().tolist() == pytest.approx([0.1 * 3.0 + 0.9 * 1.0] * 2)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(8) == 0.5 and ema.decay_at(None) == 0.5


def test_one_ctrl_c_that_reaches_a_torchrun_worker_twice_is_one_stop_request():
    from gentk.train import StopRequest

    now = [100.0]
    stop = StopRequest(clock=lambda: now[0])
    stop.handle(signal.SIGINT, None)
    now[0] += 0.01
    stop.handle(signal.SIGINT, None)  # the same press, forwarded by torchrun: still a request to save
    stop.handle(signal.SIGTERM, None)
    assert stop.requested == "SIGINT"
    now[0] += 2.0
    with pytest.raises(KeyboardInterrupt):  # a second press: stop at once
        stop.handle(signal.SIGINT, None)


def test_a_sigint_the_process_ignores_stays_ignored(request):
    from gentk.train import StopRequest

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell script's `gentk run ... &`
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, before))
    stop = StopRequest()
    with stop.installed():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == stop.handle
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize(
    ("command", "busy", "load", "preset", "policy"),
    [
        ("run", 1.2, 1.2, None, "PASSIVE"),
        ("compare", 0.9, 0.0, None, "PASSIVE"),  # busy now, though the last minute was quiet
        ("run", 0.0, 1.9, None, None),  # a run started just after another ends: the load average still counts the last one
        ("run", None, 1.2, None, "PASSIVE"),  # no CPU counters (not Linux): the load average stands in
        ("run", None, 0.1, None, None),
        ("run", 1.2, 1.2, "ACTIVE", "ACTIVE"),
        ("show", 1.2, 1.2, None, None),  # computes nothing
    ],
)
def test_the_command_line_lets_waiting_threads_sleep_on_a_busy_machine_unless_told_otherwise(monkeypatch, command, busy, load, preset, policy):
    import sys

    from gentk import process

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    if preset:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh process, before torch loads
    process.prepare([command, "recipe.toml"], busy=lambda: busy, load=lambda: load)
    assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_busy_cores_are_the_busy_share_of_the_kernels_cpu_ticks(tmp_path):
    from gentk import process

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 3 100 5 1 1 0 0 0\ncpu0 5 1 2 50 2 1 0 0 0 0\n")
    assert process.cpu_ticks(stat) == (17, 122)  # idle and iowait are not busy
    assert process.cpu_ticks(tmp_path / "absent") is None
    readings = iter([(100, 1000), (150, 1100)])  # half of all ticks busy over the sample
    assert process.busy_cores(0.25, ticks=lambda: next(readings), cpus=2, sleep=lambda s: None) == pytest.approx(1.0)
    assert process.busy_cores(0.25, ticks=lambda: None, cpus=2, sleep=lambda s: None) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="CPU tick counters are Linux's /proc/stat")
def test_busy_cores_sees_another_process_spinning():
    import subprocess
    import sys
    import time

    from gentk import process

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # past its start-up
        assert process.busy_cores(0.5) >= 0.5  # one core held (more if the machine has other work)
    finally:
        spinner.kill()
        spinner.wait()


def test_a_run_records_its_openmp_wait_policy(tmp_path, recipe_file):
    import subprocess
    import sys

    command = [sys.executable, "-m", "gentk", "run", str(recipe_file), "--set", "train.steps=1", "--set", "eval.every=100", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"})
    assert done.returncode == 0, done.stderr
    (run,) = tmp_path.glob("tiny_semisup-*")
    assert json.loads((run / "env.json").read_text())["omp_wait_policy"] == "ACTIVE"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_command_line_saves_and_says_how_to_resume(tmp_path, recipe_file, signum):
    import subprocess
    import sys
    import time

    command = [
        sys.executable,
        "-m",
        "gentk",
        "run",
        str(recipe_file),
        "--set",
        "train.steps=100000",
        "--set",
        "train.log_every=5",
        "--out",
        str(tmp_path),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("tiny_semisup-*/metrics.jsonl")):  # training has started
            assert time.monotonic() < deadline and child.poll() is None, child.communicate()
            time.sleep(0.05)
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    (run,) = tmp_path.glob("tiny_semisup-*")
    saved = weights(run)
    assert f"gentk: stopped: {signum.name} at step {saved['step']} of 100000" in err and saved["step"] >= 5
    assert "error" not in err  # a stop asked for is not an error
    # the printed command works as printed, in a shell (here `python -m gentk`, spelled so that this shell finds that python)
    printed = err.split("Resume with: ", 1)[1].strip()
    assert printed.endswith(f"-m gentk run {run}/recipe.toml --resume {run}")
    # a budget already spent (half the time the run has counted): the resumed run trains nothing, evaluates and ends
    budget = saved["elapsed"] / 60 / 2
    done = subprocess.run(printed + f" --minutes {budget!r}", shell=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and f"resuming {run} from step {saved['step']}" in done.stdout and "is spent" in done.stdout, done.stderr


def test_load_trained_rebuilds_the_model_from_a_run(tmp_path, plugins, recipe_file):
    from gentk.evaluate import load_trained

    run = train(load(recipe_file, plugins, "train.steps=3"), plugins=plugins, out=tmp_path).run_dir
    recipe, model, state = load_trained(run, plugins=plugins, ema=False)
    assert recipe.name == "tiny_semisup" and state["step"] == 3 and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model"][key])
    _, averaged, _ = load_trained(run, plugins=plugins, which="best")
    assert averaged.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)


def test_evaluating_more_often_does_not_change_training(tmp_path, plugins, recipe_file):
    often = train(load(recipe_file, plugins, "train.steps=6", "eval.every=2"), plugins=plugins, out=tmp_path / "often").run_dir
    once = train(load(recipe_file, plugins, "train.steps=6", "eval.every=100"), plugins=plugins, out=tmp_path / "once").run_dir
    assert len(list((often / "samples").glob("*.png"))) == 3 and len(list((once / "samples").glob("*.png"))) == 1
    a, b = weights(often), weights(once)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_compiled_parts_train_beside_an_r1_penalty_whose_discriminator_stays_eager(tmp_path, plugins, recipe_file, capsys, monkeypatch):
    # AOTAutograd without code generation: the part of torch.compile that has no double backward
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: original(self, backend="aot_eager", **options))
    monkeypatch.setattr(importlib.import_module("gentk.train"), "compile_problem", lambda device_type: None)  # aot_eager builds no code
    overrides = ["train.steps=3", "train.log_every=1", "train.compile=true", "model.latents.y.regularizer.gradient_penalty=1"]
    result = train(load(recipe_file, plugins, *overrides), plugins=plugins, out=tmp_path)
    assert "compiled, regularizers.y.discriminator eager (double backward)" in capsys.readouterr().out
    r1 = [line["train/discriminator.y/r1"] for line in losses(result.run_dir) if "train/discriminator.y/r1" in line]
    assert result.step == 3 and len(r1) == 3 and all(map(math.isfinite, r1))


def test_compile_where_torch_cannot_build_code_warns_and_trains_the_parts_eager(tmp_path, plugins, recipe_file, capsys, monkeypatch):
    problem = "InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx: (None, 'g++')"
    monkeypatch.setattr(importlib.import_module("gentk.train"), "compile_problem", lambda device_type: problem)
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: compiled.append(self))
    result = train(load(recipe_file, plugins, "train.steps=2", "train.compile=true"), plugins=plugins, out=tmp_path)
    out = capsys.readouterr().out
    assert result.step == 2 and compiled == []
    assert "torch.compile cannot build code for cpu on this machine (InvalidCxxCompiler" in out
    assert "apt install g++ python3-dev" in out and "--set train.compile=false" in out
    assert "not compiled (torch.compile cannot build code here)" in out


def test_a_machine_without_a_cpp_compiler_is_found_before_training(tmp_path):
    # a real torch.compile in a fresh process, pointed at a compiler that does not exist, with an empty code cache
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"}
    probe = "from gentk.train import compile_problem; print(compile_problem('cpu'))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "No working C++ compiler" in done.stdout


def test_a_time_budget_stops_saves_evaluates_and_can_be_raised(tmp_path, plugins, recipe_file, capsys):
    # 0.6 s of wall time for a budget of 100000 steps: the run stops at the budget, not the steps
    recipe = load(recipe_file, plugins, "train.minutes=0.01", "train.steps=100000", "eval.every=100000", "train.log_every=5")
    result = train(recipe, plugins=plugins, out=tmp_path)
    run, stopped = result.run_dir, result.step
    assert 0 < stopped < 100000
    assert weights(run)["step"] == stopped and weights(run)["elapsed"] >= 0.6
    record = json.loads((run / "eval.json").read_text())
    assert record["step"] == stopped and record["minutes"] >= 0.01
    assert math.isfinite(record["metrics"]["eval/validation/reconstruction/loss"])
    rows = losses(run)
    assert rows[-1]["step"] == stopped and "eval/validation/reconstruction/loss" in rows[-1]
    logged = [r["time/minutes"] for r in rows if "train/reconstruction/loss" in r]
    assert logged == sorted(logged) and logged[-1] >= 0.01  # wall time beside every logged scalar
    # and the CPU time of the training process: it grows with the work done, and stays below what the threads could use
    cpu = [r["time/cpu_minutes"] for r in rows if "train/reconstruction/loss" in r]
    assert cpu == sorted(cpu) and 0 < cpu[-1] <= logged[-1] * torch.get_num_threads() * 1.05 + 0.01
    assert record["cpu_minutes"] > 0 and weights(run)["cpu_elapsed"] > 0
    # and the machine's load beside it, so a slow run can be told from a busy machine
    assert all(r["machine/load_1min"] >= 0 for r in rows if "train/reconstruction/loss" in r or "eval/validation/reconstruction/loss" in r)
    env = json.loads((run / "env.json").read_text())
    assert env["cpus"] == os.cpu_count() and len(env["load_avg"]) == 3
    assert "time budget of 0.01 minutes reached at step" in capsys.readouterr().out

    # resuming a spent budget trains nothing and says how to continue
    again = train(recipe, plugins=plugins, out=tmp_path, resume="auto")
    assert again.run_dir == run and again.step == stopped
    assert "time budget (train.minutes = 0.01) is spent" in capsys.readouterr().out
    # a larger budget continues the same run without --force (the budget is not the model)
    raised = (weights(run)["elapsed"] + 3.0) / 60
    cpu_before = weights(run)["cpu_elapsed"]
    more = train(
        load(recipe_file, plugins, f"train.minutes={raised}", "train.steps=100000", "eval.every=100000", "train.log_every=5"),
        plugins=plugins,
        out=tmp_path,
        resume="auto",
    )
    assert more.run_dir == run and more.step > stopped and weights(run)["elapsed"] >= raised * 60
    assert weights(run)["cpu_elapsed"] > cpu_before  # CPU time, too, is counted over resumes
    cpu = [r["time/cpu_minutes"] for r in losses(run) if "train/reconstruction/loss" in r]
    assert cpu == sorted(cpu)


def test_the_minutes_flag_is_the_budget_key(tmp_path, recipe_file):
    from gentk.cli import main

    assert (
        main(["run", str(recipe_file), "--minutes", "0.005", "--set", "train.steps=100000", "--set", "eval.every=100000", "--out", str(tmp_path)])
        == 0
    )
    (run,) = tmp_path.glob("tiny_semisup-*")
    assert "minutes = 0.005" in (run / "recipe.toml").read_text()
    assert 0 < json.loads((run / "eval.json").read_text())["step"] < 100000


def test_torch_flags_hold_for_the_run_and_are_restored_after(tmp_path, recipe_file):
    """A notebook that calls gentk.train keeps its thread count and denormal handling."""
    from gentk.train import _flushes_denormals

    seen = []

    class Watch:  # what the run sees, at each log interval
        @gentk.hookimpl
        def gentk_log(self, run_dir, step, scalars):
            seen.append((torch.get_num_threads(), _flushes_denormals()))

    threads = torch.get_num_threads()
    plugins = gentk.load_plugins(autoload=False, plugins=[Watch()])
    torch.set_num_threads(2)
    can_flush = torch.set_flush_denormal(False)  # False where the CPU has no such mode
    try:
        train(load(recipe_file, plugins, "train.steps=2", "train.threads=1"), plugins=plugins, out=tmp_path / "runs", device="cpu")
        assert seen and set(seen) == {(1, can_flush)}
        assert (torch.get_num_threads(), _flushes_denormals()) == (2, False)
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


# --------------------------------------------------------------------------- what a run says


def test_the_start_says_what_the_run_will_do_then_live_losses_and_the_eta(tmp_path, plugins, recipe_file, capsys, monkeypatch):
    from gentk import console

    monkeypatch.setattr(console.Progress, "quiet_s", 0.0)  # a line of running means at every step (no terminal here)
    monkeypatch.setattr(console.Progress, "min_seconds", 0.0)
    monkeypatch.setattr(console.Progress, "min_steps", 2)
    run = train(load(recipe_file, plugins, "train.log_every=100"), plugins=plugins, out=tmp_path).run_dir
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"gentk: tiny_semisup -> {run}"
    assert lines[1].startswith("  device      cpu, ") and lines[1].endswith(", float32")
    assert lines[2].startswith("  parameters  encoder ") and "decoder" in lines[2] and "discriminator.y" in lines[2] and "in all)" in lines[2]
    assert lines[3].startswith("  steps       12 steps of batch 20; each runs reconstruction, discriminator.y, generator.y, supervised.y;")
    assert "step 1/12 (running means) reconstruction=" in out  # live losses from the first step, long before log_every
    assert "gentk: measured " in out and " over steps 2-4: 8 steps left, about " in out
    assert "This run will take" not in out  # a run of seconds needs no advice

    monkeypatch.setattr(console.Progress, "long_run_s", 0.0)  # every run is long now
    train(load(recipe_file, plugins, "train.steps=6", "train.minutes=30"), plugins=plugins, out=tmp_path)
    out = capsys.readouterr().out
    assert ", or 30 minutes of wall time if that comes first;" in out
    assert "This run will take about" in out and f"gentk run {recipe_file} --minutes 30`" in out and "--profile" not in out


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-bf16"])
def test_the_start_says_when_the_pixelcnn_trains_in_bf16(tmp_path, plugins, capsys, monkeypatch, native):
    import gentk.pixelcnn

    monkeypatch.setattr(gentk.pixelcnn, "cpu_has_native_bf16", lambda: native)
    path = tmp_path / "tiny_pixelgan.toml"
    path.write_text(SEMISUP.replace('name = "bernoulli"\nbody = "mlp"\nhidden = [16]', 'name = "pixelcnn"\nlayers = 1\nchannels = 4\nbf16 = "auto"'))
    train(load(path, plugins, "train.steps=1", "eval.every=100"), plugins=plugins, out=tmp_path)
    device = capsys.readouterr().out.splitlines()[1]
    assert device.endswith(", float32, decoder trains under bfloat16 autocast" if native else ", float32"), device


def test_resuming_a_finished_run_says_so(tmp_path, plugins, recipe_file, capsys):
    run = train(load(recipe_file, plugins, "train.steps=3"), plugins=plugins, out=tmp_path).run_dir
    capsys.readouterr()
    again = train(load(recipe_file, plugins, "train.steps=3"), plugins=plugins, out=tmp_path, resume="auto")
    assert again.run_dir == run and again.step == 3
    out = capsys.readouterr().out
    assert f"gentk: resuming {run} from step 3" in out
    assert "gentk: this run already finished (step 3 of 3); nothing to train, its final weights are evaluated again." in out
    assert f"To train it longer: gentk run {run}/recipe.toml --resume {run} --set train.steps=N --force." in out


def test_gentk_run_ends_with_the_test_metrics_and_the_sample_grid(tmp_path, recipe_file, capsys):
    from gentk.cli import main

    assert main(["run", str(recipe_file), "--set", "train.steps=3", "--set", "eval.test_examples=30", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.glob("tiny_semisup-*")
    out = capsys.readouterr().out
    assert "test metrics of tiny_semisup at step 3 (the first 30 test examples):" in out
    table = out.split("test metrics of", 1)[1]
    assert "reconstruction/loss" in table and "supervised.y/accuracy" in table
    assert f"samples: {run}/samples/step-00000003.png (one row per category of latent 'y', labelled by its majority label)" in out
    assert out.rstrip().endswith(f"run directory: {run}")
    assert json.loads((run / "eval.json").read_text())["evaluations"]["latest/test"]["step"] == 3
    assert json.loads((run / "eval.json").read_text())["evaluations"]["latest/test"]["max_examples"] == 30


def test_the_closing_test_metrics_use_every_test_example_whatever_the_evaluations_during_training_use(tmp_path, recipe_file, capsys):
    """eval.max_examples keeps the evaluations during training cheap; the numbers a run ends
    with are the test split's, all of it, unless eval.test_examples says otherwise."""
    from gentk.cli import main

    assert main(["run", str(recipe_file), "--set", "train.steps=2", "--set", "eval.max_examples=20", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.glob("tiny_semisup-*")
    assert "test metrics of tiny_semisup at step 2 (all test examples):" in capsys.readouterr().out
    record = json.loads((run / "eval.json").read_text())["evaluations"]["latest/test"]
    assert record["max_examples"] is None
