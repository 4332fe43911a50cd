"""Every recipe: a header naming its paper, `gentk check`, and a short real training at its
small profile (``[profiles.small]``: tiny widths, 200 steps) with finite losses that move."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

import gentk
from gentk.data import Batch
from gentk.model import build_model, check_model
from gentk.train import build_optimizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def header(name: str) -> str:
    """The comment lines a recipe opens with."""
    lines = (RECIPES / f"{name}.toml").read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


NAMES = sorted(p.stem for p in RECIPES.glob("*.toml"))
PHASES = {
    "vae": ["reconstruction"],
    "pixelvae": ["reconstruction"],
    "pixelcnn": ["reconstruction"],
    "aae_semisup": ["reconstruction", "regularization", "supervised"],
    "pixelgan_semisup": ["reconstruction", "regularization", "supervised"],
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def plugins():
    return gentk.load_plugins(autoload=False)


def test_the_paper_s_recipes_are_all_here():
    expected = {
        "pixelgan_categorical",
        "pixelgan_gaussian",
        "pixelgan_gaussian_location",
        "pixelgan_semisup",
        "vae",
        "aae",
        "aae_mixture",
        "aae_semisup",
        "pixelvae",
        "pixelcnn",
    }
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_header_names_a_paper_and_the_recipe_has_a_small_profile(name, plugins):
    text = header(name)
    assert text, f"{name}.toml must open with a comment naming its paper"
    assert re.search(r"(19|20)\d\d", text) and re.search(r"(Table|Fig\.|§)\s*\d", text), text
    assert "small" in gentk.load_recipe(RECIPES / f"{name}.toml", plugins=plugins).profiles


@pytest.mark.parametrize("name", NAMES)
def test_recipe_checks_and_trains_at_its_small_profile(name, plugins):
    recipe = gentk.load_recipe(RECIPES / f"{name}.toml", profile="small", plugins=plugins)
    assert recipe.train.steps == 200 and recipe.profile == "small"
    assert "steps: reconstruction" in check_model(recipe, plugins, image_shape=(1, 28, 28))
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, (1, 28, 28), plugins)
    assert model.phases() == PHASES.get(name, ["reconstruction", "regularization"])
    steps = model.training_steps()
    optimizers = [build_optimizer(step, recipe.train.phase(step.phase), plugins) for step in steps]
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.rand(1, 1, 28, 28, generator=g).expand(8, 1, 28, 28), generator=g)  # one noisy template
    batch = Batch(x, torch.arange(8) % 10)
    losses: dict[str, list[float]] = {step.name: [] for step in steps}
    for _ in range(4):
        for step, optimizer in zip(steps, optimizers):
            optimizer.zero_grad(set_to_none=True)
            loss, logs = step.loss(batch)
            assert torch.isfinite(loss), (step.name, logs)
            loss.backward()
            optimizer.step()
            losses[step.name].append(loss.item())
    for step_name, values in losses.items():
        assert len(set(values)) > 1, f"{step_name}: the loss did not move: {values}"
    assert losses["reconstruction"][-1] < losses["reconstruction"][0]
    assert model.sample(2).shape == (2, 1, 28, 28)


@pytest.mark.skipif(not (Path(os.environ.get("GENTK_DATA", "/nonexistent")) / "mnist").is_dir(), reason="MNIST files not found under $GENTK_DATA")
def test_gentk_check_on_a_real_recipe(capsys):
    from gentk.cli import main

    assert main(["check", str(RECIPES / "aae_semisup.toml"), "--profile", "small"]) == 0
    out = capsys.readouterr().out
    assert "aae_semisup.toml --profile small: ok" in out
    assert "steps: reconstruction, discriminator.y, generator.y, discriminator.z, generator.z, supervised.y" in out


def test_gentk_check_needs_no_files_for_svhn_or_norb_and_reports_every_failure(tmp_path, monkeypatch, capsys):
    """SVHN and smallNORB declare their image shapes without files, so both check on a machine
    that has neither; one bad recipe among several (and its profile) is reported with the others still checked."""
    from gentk.cli import main

    monkeypatch.setenv("GENTK_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("GENTK_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "{(RECIPES / "vae.toml").as_posix()}"\n[model.decoder]\nname = "bernouli"\n')
    recipes = [RECIPES / "paper" / "pixelgan_svhn_500.toml", bad, RECIPES / "paper" / "pixelgan_norb_1000.toml", tmp_path / "missing.toml"]
    assert main(["check", *map(str, recipes), "--offline"]) == 2
    out, err = capsys.readouterr()
    assert "pixelgan_svhn_500.toml: ok" in out and "images (3, 32, 32)" in out
    assert "pixelgan_norb_1000.toml: ok" in out and "images (1, 32, 32)" in out  # camera left, size 32: no file read
    assert "bad.toml: FAILED" in err and "Did you mean 'bernoulli'?" in err and "missing.toml: FAILED" in err
    assert "bad.toml --profile small: FAILED" in err  # the small profile it inherits from vae.toml is checked too
    assert "3 of 5 checks failed" in err and "Traceback" not in err


def test_make_run_trains_a_cpu_profile_that_fits_half_an_hour_without_a_gpu(plugins):
    """The Makefile's recipe has the `cpu` profile its PROFILE line picks without CUDA: a time
    budget that leaves the evaluations room within 30 minutes, and a model that checks."""
    makefile = (RECIPES.parent / "Makefile").read_text()
    recipe_path = re.search(r"^RECIPE\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert "torch.cuda.is_available() else 'cpu'" in makefile and "--profile $(PROFILE)" in makefile
    recipe = gentk.load_recipe(RECIPES.parent / recipe_path, profile="cpu", plugins=plugins)
    assert recipe.train.minutes <= 22 and recipe.model.decoder.config.conditioning == "location_dependent"
    assert "supervised.y" in check_model(recipe, plugins, image_shape=(1, 28, 28))
    assert gentk.load_recipe(RECIPES.parent / recipe_path, plugins=plugins).train.minutes is None  # on a GPU: the paper's scale
