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
    for args in (["eval", run], ["sample", run, "--out", run / "s.png"], ["run", run / "recipe.toml", "--resume", run, "--out", run.parent, "--force"]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and "does not fit" in err and key in err and "Traceback" not in err and err.count("\n") == 1, (args, err)
    from gentk.train import load_trained

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
