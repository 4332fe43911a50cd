"""Watching a run: the engine's run callbacks (the logger hooks) and the TensorBoard plugin.

The callbacks are checked with a recording plugin; plugins/gentk-tensorboard with the
real `tensorboard` package, reading its event files back. Every run is a tiny VAE on 8x8
synthetic images, a few steps on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gentk
from gentk.errors import TrainingInterrupted
from gentk.train import train

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "gentk-tensorboard"

TINY_VAE = """
name = "tiny_vae"
[data]
name = "synthetic"
binarize = "dynamic"
batch_size = 20
classes = 4
[model.encoder]
name = "mlp"
hidden = [8]
[model.latents.z]
size = 2
head = "gaussian"
prior = { name = "standard_normal" }
regularizer = { name = "kl" }
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [8]
[train]
steps = 4
log_every = 1
checkpoint_every = 2
threads = 1
[eval]
every = 2
samples = 8
max_examples = 40
metrics = ["code_space"]
"""


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny_vae.toml"
    path.write_text(TINY_VAE)
    return path


class Recorder:
    """A logger plugin that records the callbacks it gets, in order."""

    def __init__(self, fail_at: int | None = None, interrupt_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_at, self.interrupt_at = fail_at, interrupt_at

    def gentk_run_start(self, run_dir, step, recipe):
        self.calls.append(("start", step, recipe.name))

    def gentk_log(self, run_dir, step, scalars):
        self.calls.append(("log", step))
        if step == self.fail_at:
            raise RuntimeError("the tracker is down")
        if step == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # the engine saves after this step, then stops

    def gentk_log_image(self, run_dir, step, tag, path):
        assert path.is_file() and path.is_relative_to(run_dir)
        self.calls.append(("image", step, tag, path.relative_to(run_dir).as_posix()))

    def gentk_after_eval(self, run_dir, step, metrics):
        self.calls.append(("eval", step))

    def gentk_run_end(self, run_dir, status):
        self.calls.append(("end", status))


def test_run_callbacks_come_in_order_with_every_image(tmp_path, recipe_file, one_thread):
    pytest.importorskip("matplotlib", reason="the code_space scatter needs matplotlib")
    recorder = Recorder()
    plugins = gentk.load_plugins(autoload=False, plugins=[recorder])
    train(gentk.load_recipe(recipe_file, plugins=plugins), plugins=plugins, out=tmp_path / "runs")
    evaluation = lambda s: [  # noqa: E731
        ("image", s, "code_space/z", f"code_space/z-step-{s:08d}.png"),
        ("image", s, "samples", f"samples/step-{s:08d}.png"),
        ("eval", s),
    ]
    assert recorder.calls == [
        ("start", 0, "tiny_vae"),
        ("log", 1),
        ("log", 2),
        *evaluation(2),
        ("log", 3),
        ("log", 4),
        *evaluation(4),
        ("end", "finished"),
    ]


def test_run_end_says_how_the_run_ended(tmp_path, recipe_file, one_thread):
    def run(recorder, **kwargs):
        plugins = gentk.load_plugins(autoload=False, plugins=[recorder])
        return train(gentk.load_recipe(recipe_file, ["eval.metrics=[]"], plugins=plugins), plugins=plugins, out=tmp_path / "runs", **kwargs)

    failing = Recorder(fail_at=1)
    with pytest.raises(RuntimeError, match="the tracker is down"):
        run(failing)
    assert failing.calls == [("start", 0, "tiny_vae"), ("log", 1), ("end", "failed")]

    stopped = Recorder(interrupt_at=3)
    with pytest.raises(TrainingInterrupted) as stop:
        run(stopped)
    assert stopped.calls[-2:] == [("log", 3), ("end", "interrupted")]

    resumed = Recorder()
    run(resumed, resume=stop.value.run_dir)
    assert resumed.calls[0] == ("start", 3, "tiny_vae") and resumed.calls[-1] == ("end", "finished")


# --------------------------------------------------------------------------- the TensorBoard plugin


@pytest.fixture
def tensorboard_plugin(monkeypatch):
    """The plugin module, importable from the checkout (as `gentk -p gentk_tensorboard` would load it)."""
    pytest.importorskip("tensorboard", reason="the TensorBoard plugin needs the tensorboard package: pip install -e '.[tensorboard]'")
    monkeypatch.syspath_prepend(str(PLUGIN))
    import gentk_tensorboard

    return gentk_tensorboard


def read_events(log_dir: Path):
    """Everything the event files under `log_dir` hold, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_plugin_logs_scalars_images_and_the_recipe(tmp_path, recipe_file, tensorboard_plugin, one_thread):
    pytest.importorskip("matplotlib", reason="the code_space scatter needs matplotlib")
    plugins = gentk.load_plugins(autoload=False, plugins=[tensorboard_plugin])
    result = train(gentk.load_recipe(recipe_file, plugins=plugins), plugins=plugins, out=tmp_path / "runs")
    assert tensorboard_plugin._writers == {}  # closed at the end of the run

    events = read_events(result.run_dir / "tensorboard")
    tags = events.Tags()
    losses = events.Scalars("train/reconstruction/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [row["train/reconstruction/loss"] for row in rows if "train/reconstruction/loss" in row]
    assert [e.value for e in losses] == pytest.approx(logged, rel=1e-6)  # float32 in the event file
    mmd = next(t for t in tags["scalars"] if t.startswith("eval/") and t.endswith("/code_z_mmd"))
    assert [e.step for e in events.Scalars(mmd)] == [2, 4]
    assert {"samples", "code_space/z"} <= set(tags["images"])
    grid = events.Images("samples")
    assert [e.step for e in grid] == [2, 4] and grid[-1].encoded_image_string.startswith(b"\x89PNG")
    assert "recipe/text_summary" in tags["tensors"]


def test_tensorboard_plugin_resumed_run_drops_what_came_after_the_checkpoint(tmp_path, recipe_file, tensorboard_plugin, one_thread):
    """A run killed after logging past its checkpoint logs those steps again when resumed; TensorBoard shows them once."""
    plugins = gentk.load_plugins(autoload=False, plugins=[tensorboard_plugin])
    recipe = gentk.load_recipe(recipe_file, ["eval.metrics=[]"], plugins=plugins)
    run_dir = train(recipe, plugins=plugins, out=tmp_path / "runs").run_dir  # logged steps 1-4
    train(recipe, plugins=plugins, out=tmp_path / "runs", resume=run_dir / "checkpoints" / "step-00000002.pt")  # 3-4 again
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = read_events(run_dir / "tensorboard")
    assert [e.step for e in events.Scalars("train/reconstruction/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Images("samples")] == [2, 4]


@pytest.mark.slow
def test_installed_tensorboard_plugin_logs_every_run_unless_disabled(tmp_path, recipe_file):
    """pip-install plugins/gentk-tensorboard into a fresh target; `gentk run` logs, `-p no:tensorboard` does not."""
    pytest.importorskip("tensorboard", reason="the TensorBoard plugin needs the tensorboard package: pip install -e '.[tensorboard]'")
    target = tmp_path / "target"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(PLUGIN)], check=True
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GENTK_DISABLE_PLUGIN_AUTOLOAD", "GENTK_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO)])

    def gentk_cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "gentk", *args], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "gentk-tensorboard" in gentk_cli("plugins")
    fast = ["--set", "train.steps=2", "--set", "eval.metrics=[]"]
    gentk_cli("run", str(recipe_file), "--out", "on", *fast)
    gentk_cli("-p", "no:tensorboard", "run", str(recipe_file), "--out", "off", *fast)
    (on,), (off,) = list((tmp_path / "on").iterdir()), list((tmp_path / "off").iterdir())
    assert [e.step for e in read_events(on / "tensorboard").Scalars("train/reconstruction/loss")] == [1, 2]
    assert (off / "metrics.jsonl").is_file() and not (off / "tensorboard").exists()
