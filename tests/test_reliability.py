"""Faults a long run must survive: damaged checkpoints and metrics, full and read-only disks,
two processes on one run, kills during evaluations, hostile names and clashing plugins.

Full disks are simulated by making writes raise ENOSPC. Tests run as root in CI, where a
read-only mode bit does not stop a write, so read-only places are simulated the same way
(with EROFS) rather than with chmod.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

import gentk
from gentk import checkpoint, rundir
from gentk.cli import main
from gentk.errors import TrainingError
from gentk.train import train

TINY = """
name = "tiny"
seed = 1
[data]
name = "synthetic"
binarize = "dynamic"
batch_size = 20
classes = 4
[model.encoder]
name = "mlp"
hidden = [16]
[model.latents.y]
size = 4
head = "categorical"
prior = { name = "categorical" }
regularizer = { name = "adversarial", discriminator = [16] }
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [16]
[train]
steps = 8
log_every = 1
checkpoint_every = 4
threads = 1
[eval]
every = 4
samples = 4
max_examples = 40
metrics = ["recon_nll"]
"""


@pytest.fixture
def plugins():
    return gentk.load_plugins(autoload=False)


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def load(path, plugins, *overrides):
    return gentk.load_recipe(path, list(overrides), plugins=plugins)


def full_state(step: int) -> dict:
    """A complete checkpoint (every key the engine writes) around a recognisable weight."""
    return {
        "format": checkpoint.CHECKPOINT_FORMAT,
        "step": step,
        "model": {"w": torch.full((64,), 1234.5 + step)},
        "ema": None,
        "optimizers": {},
        "schedules": {},
        "scalers": {},
        "data": [],
        "rng": [checkpoint.rng_state()],
        "recipe": {"name": "x"},
        "image_shape": [1, 8, 8],
        "best": None,
        "world_size": 1,
    }


def flip_a_weight_byte(path, step):
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.full((64,), 1234.5 + step).numpy().tobytes())
    assert at > 0, "the weight's bytes are stored as they are"
    raw[at + 100] ^= 0x10
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- checkpoints (items 6-9)


def test_a_flipped_byte_inside_a_tensor_is_caught_on_load(tmp_path):
    path = checkpoint.atomic_save(full_state(1), tmp_path / "a.pt")
    assert checkpoint.load(path)["step"] == 1
    flip_a_weight_byte(path, 1)
    with pytest.raises(TrainingError, match="checksum") as error:
        checkpoint.load(path)
    assert "damaged" in str(error.value)


def test_resume_falls_back_from_a_damaged_or_missing_latest(tmp_path):
    run = tmp_path / "tiny-20260101-000000"
    directory = run / "checkpoints"
    for step in (4, 8, 12):
        checkpoint.save(full_state(step), directory, keep_last=3)
    (directory / "latest.pt").unlink()
    (directory / "latest.pt").write_bytes(b"garbage")  # a damaged latest.pt, its step file intact
    flip_a_weight_byte(directory / "step-00000012.pt", 12)  # ... and the newest step file damaged too
    path, state, note = checkpoint.load_resumable(checkpoint.find(run))
    assert path.name == "step-00000008.pt" and state["step"] == 8
    assert "latest.pt" in note and "step-00000012.pt" in note and "step-00000008.pt" in note
    (directory / "latest.pt").unlink()  # missing: the step files are used, and found by --resume auto
    assert checkpoint.latest_run(tmp_path, "tiny") == run
    path, state, note = checkpoint.load_resumable(checkpoint.find(run))
    assert state["step"] == 8 and "no latest.pt" in note
    for p in directory.glob("step-*.pt"):
        p.unlink()
    with pytest.raises(TrainingError, match="holds no checkpoint"):
        checkpoint.find(run)


@pytest.mark.parametrize("key", ["recipe", "rng"])
def test_a_checkpoint_without_a_part_of_the_run_is_refused_by_name(tmp_path, key):
    state = full_state(1)
    del state[key]
    path = checkpoint.atomic_save(state, tmp_path / "a.pt")
    with pytest.raises(TrainingError, match=f"has no '{key}'"):
        checkpoint.load(path)


def test_an_unreadable_checkpoint_never_repeats_the_advice_to_unpickle_code(tmp_path):
    import fractions

    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "step": 1, "model": fractions.Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(TrainingError) as error:
        checkpoint.load(tmp_path / "evil.pt")
    message = str(error.value)
    assert "fractions.Fraction" in message and "weights_only=False" not in message and "`weights_only` set to `False`" not in message
    assert "safe_globals" not in message and "\n" not in message and "\x1b" not in message


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 8-step run (checkpoints at 4 and 8); tests change copies of it."""
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.toml").write_text(TINY)
    plugins = gentk.load_plugins(autoload=False)
    threads = torch.get_num_threads()
    try:
        return train(gentk.load_recipe(root / "tiny.toml", plugins=plugins), plugins=plugins, out=root / "runs").run_dir
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def copy(finished, tmp_path):
    def _copy():
        target = tmp_path / "runs" / finished.name
        shutil.copytree(finished, target)
        return target

    return _copy


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_refuses_a_checkpoint_without_its_recipe(copy, capsys):
    run = copy()
    for name in ("latest.pt", "step-00000008.pt", "step-00000004.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        del state["recipe"]
        checkpoint.atomic_save(state, run / "checkpoints" / name)
    for args in (["eval", run], ["sample", run, "--out", run / "s.png"], ["run", run / "recipe.toml", "--resume", run, "--out", run.parent]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and "has no 'recipe'" in err and "Traceback" not in err, (args, err)


def test_every_command_refuses_a_wrong_shaped_weight_in_one_paragraph(copy, capsys):
    run = copy()
    for name in ("latest.pt", "step-00000008.pt", "step-00000004.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        key = next(k for k, v in state["model"].items() if v.dim() == 2)
        state["model"][key] = torch.zeros(3, 3)
        if state["ema"]:
            state["ema"][key] = torch.zeros(3, 3)
        checkpoint.atomic_save(state, run / "checkpoints" / name)
    for args in (
        ["eval", run],
        ["sample", run, "--out", run / "s.png"],
        ["run", run / "recipe.toml", "--resume", run, "--out", run.parent, "--force"],
    ):
        code, out, err = cli(capsys, *args)
        assert code == 2 and "does not fit" in err and key in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
    from gentk.evaluate import load_trained

    with pytest.raises(TrainingError, match="does not fit"):
        load_trained(run, plugins=gentk.load_plugins(autoload=False))


def test_resume_says_it_passes_over_a_damaged_latest(copy, plugins, capsys):
    run = copy()
    (run / "checkpoints" / "latest.pt").write_bytes(b"\0" * 100)
    (run / "checkpoints" / "step-00000008.pt").write_bytes(b"\0" * 100)
    result = train(load(run / "recipe.toml", plugins), plugins=plugins, out=run.parent, resume="auto")
    out = capsys.readouterr().out
    assert "latest.pt is unusable" in out and "Resuming from step-00000004.pt (step 4) instead" in out
    assert result.run_dir == run and result.step == 8 and checkpoint.load(run / "checkpoints" / "latest.pt")["step"] == 8
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(5) == 1  # what came after step 4 was logged once


# --------------------------------------------------------------------------- run state on disk (items 1-3, 10)


def logged(step, value):
    return {"train/a/loss": value, "lr/a": 0.1} if step % 2 else {"train/a/loss": value, "eval/test/a/loss": value + 1}


def filled_log(tmp_path, steps=6):
    log = rundir.MetricsLog(tmp_path)
    for step in range(1, steps + 1):
        log.write(step, logged(step, float(step)))
    return log


def test_a_partial_last_metrics_line_is_dropped_and_said(tmp_path):
    log = filled_log(tmp_path)
    with log.jsonl_path.open("a") as f:
        f.write('{"step": 7, "train/a/lo')  # a full disk cut the write short
    notes = log.truncate(5)
    assert len(notes) == 1 and "partial" in notes[0]
    assert [json.loads(line)["step"] for line in log.jsonl_path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert rundir.read_metrics(tmp_path)["train/a/loss"]["step"].tolist() == [1, 2, 3, 4, 5]


def test_a_damaged_metrics_file_is_rebuilt_from_the_other(tmp_path):
    log = filled_log(tmp_path)
    expected = rundir.read_metrics(tmp_path)
    log.h5_path.write_bytes(b"\x89HDF\r\n garbage")
    notes = log.truncate(6)
    assert "metrics.h5" in notes[0] and "rebuilt" in notes[0] and (tmp_path / "metrics.h5.damaged").exists()
    rebuilt = rundir.read_metrics(tmp_path)
    assert rebuilt.keys() == expected.keys() and all((rebuilt[k] == expected[k]).all() for k in expected)

    lines = log.jsonl_path.read_text().splitlines()
    log.jsonl_path.write_text("\n".join(lines[:2] + ["\0\0\0garbage"] + lines[3:]) + "\n")  # damaged in the middle
    notes = log.truncate(4)
    assert "metrics.jsonl" in notes[0] and "rebuilt" in notes[0]
    events = [json.loads(line) for line in log.jsonl_path.read_text().splitlines()]
    assert events == [{"step": s, **logged(s, float(s))} for s in range(1, 5)]


def test_metrics_damaged_beyond_repair_are_one_paragraph(tmp_path):
    log = filled_log(tmp_path)
    log.h5_path.write_bytes(b"garbage")
    log.jsonl_path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(gentk.GentkError, match=r"metrics\.jsonl.*metrics\.h5.*move both aside") as error:
        log.truncate(2)
    assert "\n" not in str(error.value)


def test_resume_repairs_a_partial_metrics_line_from_the_command_line(copy, capsys):
    run = copy()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "train/reconstruction/lo')
    code, out, err = cli(capsys, "run", run / "recipe.toml", "--resume", "auto", "--out", run.parent, "--set", "train.steps=10", "--force")
    assert code == 0, err
    assert "partial" in out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-3:] == [9, 10, 10]  # training at 9 and 10, then the evaluation at 10


class Refused:
    """Makes every write under `root` fail with `code` (ENOSPC: a full disk, EROFS: read-only).

    Patches the Python-level calls that create or change files; h5py's C library is
    reached through MetricsLog, whose first write (metrics.jsonl) goes through io.open.
    """

    def __init__(self, monkeypatch, root, code, after=0):
        import io
        import os

        self.root, self.code, self.left = str(root), code, after
        real_open, real_os_open, real_mkdir, real_replace = io.open, os.open, os.mkdir, os.replace

        def refuse(path):
            if str(path).startswith(self.root):
                if self.left > 0:
                    self.left -= 1
                    return
                raise OSError(self.code, os.strerror(self.code), str(path))

        def fake_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        def fake_replace(src, dst, *args, **kwargs):
            refuse(dst)
            return real_replace(src, dst, *args, **kwargs)

        import builtins

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        monkeypatch.setattr(os, "replace", fake_replace)


def test_a_full_disk_while_training_is_a_clean_error(tmp_path, recipe_file, monkeypatch, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    Refused(monkeypatch, out, errno.ENOSPC, after=40)  # the run starts, then the disk fills
    code, _, err = cli(capsys, "run", recipe_file, "--out", out)
    monkeypatch.undo()
    assert code == 2 and "No space left on device" in err and "Traceback" not in err and err.count("\n") == 1, err
    (run,) = out.glob("tiny-*")
    if (run / "checkpoints" / "latest.pt").exists():  # what was saved before the disk filled still loads
        checkpoint.load(run / "checkpoints" / "latest.pt")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, code, monkeypatch):
    directory = tmp_path / "checkpoints"
    checkpoint.save(full_state(4), directory, keep_last=3)
    Refused(monkeypatch, directory, code)
    with pytest.raises(gentk.GentkError, match="previous checkpoint") as error:
        checkpoint.save(full_state(8), directory, keep_last=3)
    monkeypatch.undo()
    assert "\n" not in str(error.value)
    assert checkpoint.load(directory / "latest.pt")["step"] == 4 and not list(directory.glob(".*tmp*"))


def test_read_only_places_are_clean_errors(copy, recipe_file, tmp_path, monkeypatch, capsys):
    run = copy()
    Refused(monkeypatch, tmp_path, errno.EROFS)
    for args in (
        ["run", recipe_file, "--out", tmp_path / "fresh"],
        ["run", run / "recipe.toml", "--resume", run, "--out", run.parent],
        ["sample", run, "-n", "4", "--out", tmp_path / "grids" / "s.png"],
    ):
        code, out, err = cli(capsys, *args)
        assert code == 2 and "Read-only file system" in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
    # eval computes its table, prints it, then says why eval.json was not written
    before = (run / "eval.json").read_text()
    code, out, err = cli(capsys, "eval", run)
    assert code == 2 and "recon_nll" in out and "eval.json was not written" in err and "Read-only" in err, (out, err)
    assert (run / "eval.json").read_text() == before


def test_two_processes_never_train_one_run_directory(copy, capsys):
    import subprocess
    import sys

    run = copy()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from gentk import rundir\nwith rundir.claim(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (run / "metrics.jsonl").read_text()
        code, out, err = cli(capsys, "run", run / "recipe.toml", "--resume", "auto", "--out", run.parent, "--set", "train.steps=10", "--force")
        assert code == 2 and f"process {holder.pid}" in err and "Traceback" not in err, err
        assert (run / "metrics.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    code, out, err = cli(capsys, "run", run / "recipe.toml", "--resume", "auto", "--out", run.parent, "--set", "train.steps=10", "--force")
    assert code == 0, err  # the lock of a killed process is gone with it


def test_a_failed_start_leaves_no_empty_run_directory_and_resumes_keep_env_history(copy, recipe_file, tmp_path, plugins):
    out = tmp_path / "fresh"
    with pytest.raises(gentk.GentkError):
        train(load(recipe_file, plugins, "train.amp=bf16"), plugins=plugins, out=out, device="cpu")  # refused after the directory is made
    assert not list(out.glob("tiny-*"))
    run = copy()
    first = json.loads((run / "env.json").read_text())
    train(load(run / "recipe.toml", plugins, "train.steps=10"), plugins=plugins, out=run.parent, resume=run, force=True)
    env = json.loads((run / "env.json").read_text())
    assert env["start_step"] == 8 and env["history"] == [{k: v for k, v in first.items() if k != "history"}]


# --------------------------------------------------------------------------- resumed runs log what whole runs log (items 4, 5, 11)


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs, nothing catches it."""


class DiesDuringEvaluation:
    """A plugin with a metric that kills the run the first time it evaluates `at` (0: never)."""

    def __init__(self, at: int) -> None:
        self.at = at

    @gentk.hookimpl
    def gentk_register_metrics(self, register):
        plugin = self

        class Dies:
            def __call__(self, *, step, **_):
                if step == plugin.at:
                    plugin.at = 0
                    raise Killed
                return {"alive": 1.0}

        register("dies", Dies, doc="a metric that kills the run once")


def without_clock(run):
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith(rundir.MACHINE_PREFIXES)}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_logged_losses_after_a_resume_mid_interval_equal_a_whole_run(tmp_path, recipe_file, plugins):
    overrides = ("train.steps=12", "train.log_every=4", "eval.every=5")
    whole = train(load(recipe_file, plugins, *overrides), plugins=plugins, out=tmp_path / "whole").run_dir

    class InterruptDuringTheEvaluationAt5:  # the engine saves at step 6, in the middle of the interval 5-8
        @gentk.hookimpl
        def gentk_after_eval(self, run_dir, step, metrics):
            if step == 5:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)

    stopping = gentk.load_plugins(autoload=False, plugins=[InterruptDuringTheEvaluationAt5()])
    with pytest.raises(gentk.errors.TrainingInterrupted) as stop:
        train(load(recipe_file, stopping, *overrides), plugins=stopping, out=tmp_path / "parts")
    assert stop.value.step == 6
    part = train(load(recipe_file, plugins, *overrides), plugins=plugins, out=tmp_path / "parts", resume="auto").run_dir
    assert without_clock(part) == without_clock(whole)


@pytest.mark.parametrize("at", [4, 8], ids=["periodic", "final"])
def test_an_evaluation_killed_midway_is_run_on_resume(tmp_path, recipe_file, at):
    overrides = ('eval.metrics=["recon_nll", "dies"]',)
    never = gentk.load_plugins(autoload=False, plugins=[DiesDuringEvaluation(0)])
    whole = train(load(recipe_file, never, *overrides), plugins=never, out=tmp_path / "whole").run_dir

    dying = gentk.load_plugins(autoload=False, plugins=[DiesDuringEvaluation(at)])
    with pytest.raises(Killed):
        train(load(recipe_file, dying, *overrides), plugins=dying, out=tmp_path / "parts")
    result = train(load(recipe_file, never, *overrides), plugins=never, out=tmp_path / "parts", resume="auto")
    part = result.run_dir
    assert without_clock(part) == without_clock(whole)
    assert [e["step"] for e in without_clock(part) if "eval/validation/alive" in e or "eval/test/alive" in e] == [4, 8]
    record = json.loads((part / "eval.json").read_text())
    assert record["best"] is not None and record["best"] == json.loads((whole / "eval.json").read_text())["best"]
    assert (part / "checkpoints" / "best.pt").exists() and (part / "samples" / f"step-{at:08d}.png").exists()


def test_an_evaluation_killed_between_its_two_metrics_files_is_complete_in_both(tmp_path, recipe_file, plugins, monkeypatch, capsys):
    whole = train(load(recipe_file, plugins), plugins=plugins, out=tmp_path / "whole").run_dir
    real = rundir._append

    def killed_after_the_jsonl_line(f, step, scalars):  # metrics.jsonl has the rows, metrics.h5 not yet
        if step == 4 and any(k.startswith("eval/") for k in scalars):
            monkeypatch.setattr(rundir, "_append", real)
            raise Killed
        real(f, step, scalars)

    monkeypatch.setattr(rundir, "_append", killed_after_the_jsonl_line)
    with pytest.raises(Killed):
        train(load(recipe_file, plugins), plugins=plugins, out=tmp_path / "parts")
    capsys.readouterr()
    part = train(load(recipe_file, plugins), plugins=plugins, out=tmp_path / "parts", resume="auto").run_dir
    assert "metrics.h5 lacked rows that metrics.jsonl holds" in capsys.readouterr().out
    assert without_clock(part) == without_clock(whole)
    series, expected = rundir.read_metrics(part), rundir.read_metrics(whole)
    assert sorted(series) == sorted(expected)
    for name in expected:
        if not name.startswith(rundir.MACHINE_PREFIXES):
            assert series[name].tolist() == expected[name].tolist(), name


def test_a_kill_while_recipe_toml_is_written_leaves_one_the_documented_resume_can_read(copy, plugins, monkeypatch):
    run = copy()  # resumed as docs/training.md and the interrupt message say: gentk run RUN/recipe.toml --resume RUN
    original = load(run / "recipe.toml", plugins).to_dict()
    real = Path.write_text

    def cut(self, *args, **kwargs):  # killed once the file was opened (emptied), before its text was in
        if "recipe.toml" in self.name:
            real(self, "")
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", cut)
    with pytest.raises(Killed):
        train(load(run / "recipe.toml", plugins), plugins=plugins, resume=run)
    monkeypatch.undo()
    assert load(run / "recipe.toml", plugins).to_dict() == original


def test_kill_9_in_a_checkpoint_write_an_evaluation_and_the_final_one_then_resume_is_the_whole_run(tmp_path):
    """A short bench/kill_loop.py: real `gentk run` processes, killed -9 and resumed (the full loop: --kills 20)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kill_loop", Path(__file__).resolve().parents[1] / "bench" / "kill_loop.py")
    kill_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_loop)
    said = []
    passed = kill_loop.kill_loop(3, seed=0, workdir=tmp_path, steps=30, kinds=("checkpoint", "evaluation", "final evaluation"), say=said.append)
    assert passed, "\n".join(said)
    assert sum(line.startswith("kill ") for line in said) == 3 and said[-1].startswith("PASS: 3 kills")


def test_a_nan_before_the_first_checkpoint_does_not_suggest_a_resume(tmp_path, recipe_file, plugins):
    from gentk.data import build_data
    from gentk.model import build_model

    recipe = load(recipe_file, plugins)
    data = build_data(recipe.data, plugins, seed=recipe.seed)
    model = build_model(recipe, image_shape=data.image_shape, plugins=plugins)
    steps = model.training_steps()

    def poisoned(batch, loss=steps[0].loss):
        value, logs = loss(batch)
        return value * float("nan"), logs

    import attrs

    model.training_steps = lambda: [attrs.evolve(steps[0], loss=poisoned), *steps[1:]]
    with pytest.raises(TrainingError) as error:
        train(recipe, plugins=plugins, out=tmp_path, model=model, data=data)
    message = str(error.value)
    assert "at step 1" in message and "--resume" not in message and "No checkpoint was written" in message
    assert f"--out {tmp_path}" in message and "clip_grad" in message


# --------------------------------------------------------------------------- the user's data (item 13)


def test_a_dataset_without_held_out_examples_fails_at_check_not_at_the_first_evaluation(tmp_path, recipe_file, capsys):
    import numpy as np

    np.savez(tmp_path / "train-only.npz", train_images=np.zeros((40, 8, 8), np.uint8), train_labels=np.arange(40) % 4)
    data = ("--set", "data={name = 'npz', path = '" + str(tmp_path / "train-only.npz") + "', batch_size = 20}")
    code, out, err = cli(capsys, "check", recipe_file, *data)
    assert code == 2 and "train-only.npz" in err and "has only a train split" in err and "recon_nll" in err
    assert "test_images" in err and "data.validation" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    code, out, err = cli(capsys, "run", recipe_file, *data, "--out", tmp_path / "runs")
    assert code == 2 and "has only a train split" in err and not any((tmp_path / "runs").glob("*")), "refused before training"

    held_out = (*data[:-1], data[-1].replace("batch_size = 20", "batch_size = 20, validation = 8"))
    code, out, err = cli(capsys, "check", recipe_file, *held_out)
    assert code == 0, err
    code, out, err = cli(capsys, "run", recipe_file, *held_out, "--set", "train.steps=2", "--out", tmp_path / "runs")
    assert code == 0, err
    code, out, err = cli(capsys, "eval", next((tmp_path / "runs").glob("tiny-*")))  # the test split, by default
    assert code == 2 and "no 'test' examples" in err and "--split validation" in err


# --------------------------------------------------------------------------- names and plugins (items 12, 16)


@pytest.mark.parametrize("name", ["../../ESCAPED", "/var/x", "a/b", "", ".", "..", "a\\\\b", "x\\u0000y"])
def test_a_recipe_name_is_one_path_component(recipe_file, tmp_path, plugins, capsys, name):
    with pytest.raises(gentk.GentkError, match=r"name: .*one folder name") as error:
        load(recipe_file, plugins, f'name="{name}"')
    assert "\n" not in str(error.value)
    code, out, err = cli(capsys, "run", recipe_file, "--set", f'name="{name}"', "--out", tmp_path / "runs")
    assert code == 2 and "one folder name" in err and not (tmp_path / "runs").exists() and not (tmp_path.parent / "ESCAPED").exists()


def test_a_name_with_dots_and_dashes_is_fine(recipe_file, plugins):
    assert load(recipe_file, plugins, 'name="aae-mnist_v1.2"').name == "aae-mnist_v1.2"
