"""What a run says: the ETA and the long-run paragraph (known answers), the commands it prints, the evaluation bars."""

from __future__ import annotations

import datetime
import io
import os
import sys

import attrs
import pytest

import gentk
from gentk import console

NOON = datetime.datetime(2026, 12, 6, 12, 0)


def test_eta_from_the_measured_time_per_step():
    # 988 steps left at 0.5 s: 494 s, about 8 minutes, ending at 12:08
    assert console.eta_message(0.5, (2, 12), 1000, None, now=NOON) == (
        "gentk: measured 0.5 s/step (2 steps/s) over steps 2-12: 988 steps left, about 8 minutes of training (ends near 12:08), plus evaluations."
    )
    # a time budget with 600 s left stops 60000 steps at 0.5 s/step at step 12 + 1200
    assert "the time budget stops it at about step 1212 of 60000, about 10 minutes of training (ends near 12:10)" in console.eta_message(
        0.5, (2, 12), 60000, 600.0, now=NOON
    )
    # the first run: 60000 steps at 0.22 steps/s is about 3.2 days
    slow = console.eta_message(1 / 0.22, (2, 10), 60000, None, now=NOON)
    assert "4.55 s/step over steps 2-10: 59990 steps left, about 3.2 days of training (ends near Wed 15:44)" in slow


def test_remaining_seconds():
    assert console.remaining_seconds(2.0, 10, 110, None) == (200.0, 110)
    assert console.remaining_seconds(2.0, 10, 110, 50.0) == (50.0, 35)
    assert console.remaining_seconds(2.0, 10, 110, -5.0) == (0.0, 10)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "decoder.toml"
    path.write_text('[data]\nname = "synthetic"\n[model.decoder]\nname = "bernoulli"\n[profiles.small]\ntrain.steps = 2\n')
    return gentk.load_recipe(path, plugins=gentk.load_plugins(autoload=False))


def test_the_long_run_paragraph_says_how_long_and_how_to_run_smaller(recipe):
    text = console.long_run_paragraph(76 * 3600, recipe, "cpu, 2 threads, float32", ".venv/bin/gentk")
    assert text.startswith("This run will take about 3.2 days on this device (cpu, 2 threads, float32).")
    assert f"`.venv/bin/gentk run {recipe.source} --profile small` (its profiles: small;" in text
    assert f"`.venv/bin/gentk run {recipe.source} --minutes 30`" in text and "Ctrl-C" in text and "\n" not in text
    # a recipe without profiles (a run's resolved recipe.toml): the time budget and the steps only
    bare = console.long_run_paragraph(2 * 3600, attrs.evolve(recipe, profiles=()), "cuda:0", "gentk")
    assert "about 2.0 hours" in bare and "--profile" not in bare and "--minutes 30" in bare


def test_the_printed_command_is_the_one_that_started_gentk(tmp_path, monkeypatch):
    script = tmp_path / ".venv" / "bin" / "gentk"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "run"])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert console.command() == ".venv/bin/gentk"  # after `make run`: the venv is not active
    monkeypatch.setenv("PATH", str(script.parent))
    assert console.command() == "gentk"  # the venv active: gentk is on PATH
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert console.command() == str(script)  # not below the working directory: the absolute path
    monkeypatch.setattr(sys, "argv", [os.path.join(os.path.dirname(gentk.__file__), "__main__.py"), "run"])
    assert console.command() == f"{sys.executable} -m gentk"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    assert console.command() == "gentk"  # from Python code


def test_every_held_out_pass_moves_a_bar():
    from gentk.data import build_data
    from gentk.recipe import recipe_from_dict

    plugins = gentk.load_plugins(autoload=False)
    tree = {"name": "t", "data": {"name": "synthetic"}, "model": {"decoder": {"name": "bernoulli", "body": "mlp", "hidden": [4]}}}
    data = build_data(recipe_from_dict(tree, plugins=plugins).data, plugins, seed=0)
    out = io.StringIO()
    watched = console.WatchedData(data, "recon_nll", file=out, disable=False)
    assert watched.image_shape == data.image_shape  # everything else is the dataset's own
    seen = sum(len(b.x) for b in watched.eval_batches("test", 7, max_examples=30))
    assert seen == 30 and "eval recon_nll (test):   0%|          | 0/30" in out.getvalue()  # named, sized, then cleared (leave=False)
    assert console.watched(data, "x", enabled=False) is data
