"""Watching a run: the engine's run callbacks (the logger hooks), checked with a recording plugin.

Every run is a tiny VAE on 8x8 synthetic images, a few steps on the CPU.
"""

from __future__ import annotations

import os
import signal

import pytest

import gentk
from gentk.errors import TrainingInterrupted
from gentk.train import train

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
    assert recorder.calls == [("start", 0, "tiny_vae"), ("log", 1), ("log", 2), *evaluation(2), ("log", 3), ("log", 4), *evaluation(4), ("end", "finished")]


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
