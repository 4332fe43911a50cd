"""`gentk compare` end to end on tiny recipes, plus the report's pieces."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gentk import report
from gentk.cli import main
from gentk.compare import parse_seeds
from gentk.errors import GentkError

COMMON = """
[data]
name = "synthetic"
binarize = "dynamic"
batch_size = 20
classes = 4
labeled = 20
[train]
steps = 2
log_every = 1
threads = 1
[eval]
every = 2
samples = 8
"""

VAE = """
name = "vae"
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
"""

SEMISUP = """
name = "aae_semisup"
[model.encoder]
name = "mlp"
hidden = [8]
[model.latents.y]
size = 4
head = "categorical"
supervised = true
prior = { name = "categorical" }
regularizer = { name = "adversarial", discriminator = [8] }
[model.decoder]
name = "bernoulli"
body = "mlp"
hidden = [8]
"""


def test_a_tiny_compare_end_to_end_then_reused(tmp_path, capsys):
    (tmp_path / "vae.toml").write_text(VAE + COMMON + 'metrics = ["elbo", "code_space"]\n')
    (tmp_path / "semi.toml").write_text(SEMISUP + COMMON + 'metrics = ["semisup_error"]\n')
    args = [
        "compare",
        str(tmp_path / "vae.toml"),
        str(tmp_path / "semi.toml"),
        "--seeds",
        "0,1",
        "--set",
        "train.steps=3",
        "--out",
        str(tmp_path / "studies"),
        "--name",
        "tiny",
    ]
    assert main(args) == 0
    study = tmp_path / "studies" / "tiny"
    md = (study / "report.md").read_text()
    assert "| metric | vae | aae_semisup |" in md
    row = next(line for line in md.splitlines() if line.startswith("| semisup_error |"))
    assert "± " in row and "(paper 1.9 ± 0.1)" in row  # Table 1's AAE number beside ours
    assert next(line for line in md.splitlines() if line.startswith("| elbo_nll |")).count("±") == 1  # vae only
    for label in ("| wall time (s) |", "| steps/s |", "| steps | 3 ± 0 | 3 ± 0 |", "`train.steps=3`"):
        assert label in md
    for grid in ("vae-seed0", "vae-seed1", "aae_semisup-seed0", "aae_semisup-seed1"):  # every seed's grid, in the report
        assert f"samples/{grid}.png" in md and (study / "samples" / f"{grid}.png").is_file(), grid
    semi_grid = np.asarray(Image.open(study / "samples" / "aae_semisup-seed1.png").convert("L"))
    assert semi_grid.shape[1] > 2 * 3 * (2 * 8 + 2)  # samples and mean images, 2 a row of 8-pixel images, enlarged 3 times
    assert (study / "curves.png").is_file() and "curves.png" in md
    for metric in ("semisup_error", "elbo_nll", "discriminator.y-d_fake"):  # every headline metric against steps and minutes
        assert (study / "curves" / f"{metric}.png").is_file() and f"curves/{metric}.png" in md, metric
    assert not (study / "curves" / "cluster_error_aae.png").exists()  # no run computed it: no plot
    # three columns (steps, wall minutes, CPU minutes) where curves.png has two names side by side
    assert Image.open(study / "curves" / "semisup_error.png").size[0] > 1.4 * Image.open(study / "curves.png").size[0]
    assert "code_space/vae-seed0-z.png" in md
    # every run's row says how busy the machine was: load at the start / mean / max over the run (CPU count)
    run_rows = [line for line in md.splitlines() if re.match(r"\| (vae|aae_semisup) \| [01] \| `", line)]
    assert len(run_rows) == 4 and all(re.search(r"\| \d+\.\d\d / \d+\.\d\d / \d+\.\d\d \(\d+\) \|", row) for row in run_rows), run_rows
    page = (study / "report.html").read_text()
    assert "<table>" in page and 'src="samples/vae-seed0.png"' in page
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert referenced and all((study / path).is_file() for path in referenced), [p for p in referenced if not (study / p).is_file()]
    assert '<div class="images grid">' in page and '<div class="images plot">' in page  # sample grids enlarged, plots at full width
    results = json.loads((study / "study.json").read_text())["results"]
    assert sorted((r["recipe"], r["seed"]) for r in results) == [("aae_semisup", 0), ("aae_semisup", 1), ("vae", 0), ("vae", 1)]
    assert all(0 <= r["metrics"]["semisup_error"] <= 100 for r in results if r["recipe"] == "aae_semisup")
    assert all(r["wall_s"] > 0 and not r["reused"] for r in results)
    capsys.readouterr()

    # the same study again: every run is reused, nothing is trained
    assert main(args) == 0
    md_again = (study / "report.md").read_text()
    assert md_again.count("2 (2 reused)") == 2
    assert len(list((study / "runs").glob("vae-seed0-*/vae-*"))) == 1

    # a result evaluated on fewer test examples than the recipe asks (all, here) is evaluated again, not reused
    result = next((study / "runs").glob("vae-seed0-*/result.json"))
    record = json.loads(result.read_text())
    result.write_text(json.dumps({**record, "test_examples": 7}))
    assert main(args) == 0
    assert "2 (1 reused)" in (study / "report.md").read_text()
    assert json.loads(result.read_text())["test_examples"] is None
    assert len(list((study / "runs").glob("vae-seed0-*/vae-*"))) == 1  # the same run, not trained anew


@pytest.mark.skipif(sys.platform == "darwin", reason="the failing run needs a machine without MPS")
def test_jobs_train_runs_in_processes_of_their_own_with_the_same_results(tmp_path, capsys):
    (tmp_path / "vae.toml").write_text(VAE + COMMON + 'metrics = ["elbo"]\n')
    (tmp_path / "semi.toml").write_text(SEMISUP + COMMON + 'metrics = ["semisup_error"]\n')
    common = [str(tmp_path / "vae.toml"), str(tmp_path / "semi.toml"), "--seeds", "1", "--out", str(tmp_path / "studies")]
    assert main(["compare", *common, "--name", "one"]) == 0
    capsys.readouterr()
    assert main(["compare", *common, "--name", "two", "--jobs", "2"]) == 0
    # stderr is not a terminal here: the study's bar is drawn when a run starts or ends, not at every poll
    bar = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("compare two")]
    assert 1 <= len(bar) <= 6, bar
    one, two = (json.loads((tmp_path / "studies" / n / "study.json").read_text())["results"] for n in ("one", "two"))
    assert [(r["recipe"], r["seed"], r["steps"], r["metrics"]) for r in one] == [(r["recipe"], r["seed"], r["steps"], r["metrics"]) for r in two]
    logs = list((tmp_path / "studies" / "two" / "runs").glob("*/train.log"))
    assert len(logs) == 2 and all("gentk: " in log.read_text() and " -> " in log.read_text() for log in logs)  # each a `gentk run`
    assert all((log.parent / "recipe.toml").is_file() for log in logs)

    # a run that fails in its process (no MPS device on Linux): the others finish, the error names it and its output
    (tmp_path / "mps.toml").write_text(VAE.replace('name = "vae"', 'name = "vae_mps"') + COMMON)
    broken = [str(tmp_path / "vae.toml"), str(tmp_path / "mps.toml"), "--out", str(tmp_path / "studies"), "--jobs", "2"]
    code = main(["compare", *broken, "--name", "broken", "--set-for", "vae_mps", 'train.device="mps"'])
    err = capsys.readouterr().err
    assert code == 2 and "1 run(s) of the study failed: vae_mps seed 0 (exit 2; its output: " in err, err[-2000:]
    assert json.loads(next((tmp_path / "studies" / "broken" / "runs").glob("vae-seed0-*/result.json")).read_text())["finished"]


def test_a_ctrl_c_stops_every_job_with_a_checkpoint_and_the_same_command_resumes(tmp_path, signal_group_when):
    import signal
    import subprocess

    (tmp_path / "vae.toml").write_text(VAE + COMMON.replace("steps = 2", "steps = 100000") + 'metrics = ["elbo"]\n')
    (tmp_path / "semi.toml").write_text(SEMISUP + COMMON.replace("steps = 2", "steps = 100000") + 'metrics = ["semisup_error"]\n')
    args = ["compare", str(tmp_path / "vae.toml"), str(tmp_path / "semi.toml"), "--jobs", "2", "--out", str(tmp_path / "studies"), "--name", "s"]
    # its own process group, as a terminal's foreground job: Ctrl-C reaches compare and both runs
    study = subprocess.Popen([sys.executable, "-m", "gentk", *args], stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = signal_group_when(study, lambda: len(list((tmp_path / "studies" / "s" / "runs").glob("*/*/checkpoints/latest.pt"))) == 2, signal.SIGINT)
    assert study.returncode == 130 and "gentk: stopped: compare stopped (Ctrl-C); every run that was training saved a checkpoint" in err, err[-2000:]
    logs = sorted((tmp_path / "studies" / "s" / "runs").glob("*/train.log"))
    assert len(logs) == 2 and all("gentk: stopped: SIGINT at step" in log.read_text() for log in logs)
    results = [json.loads(log.with_name("result.json").read_text()) for log in logs]
    assert all(not r["finished"] and r["wall_s"] > 0 for r in results)


@pytest.mark.parametrize("target", ["compare", "one run"])
def test_a_sigterm_to_compare_or_to_one_of_its_runs_stops_the_study_and_starts_no_queued_run(tmp_path, target):
    """A SIGTERM (a scheduler's stop, `kill PID`) reaches only the process it is sent to. Sent to
    compare, it is passed on to every run; sent to one run, that run's stop stops the others. In
    both cases each running run saves a checkpoint, the queued run never starts, and the study
    says it stopped (exit 130) instead of counting a failure and training on."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    (tmp_path / "vae.toml").write_text(VAE + COMMON.replace("steps = 2", "steps = 100000") + 'metrics = ["elbo"]\n')
    args = ["compare", str(tmp_path / "vae.toml"), "--seeds", "0,1,2", "--jobs", "2", "--out", str(tmp_path / "studies"), "--name", "s"]
    runs = tmp_path / "studies" / "s" / "runs"
    study = subprocess.Popen([sys.executable, "-m", "gentk", *args], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(runs.glob("*/*/checkpoints/latest.pt"))) < 2:
            assert time.monotonic() < deadline and study.poll() is None, study.communicate()
            time.sleep(0.05)
        seed0 = next(runs.glob("vae-seed0-*/vae-*"))
        os.kill(study.pid if target == "compare" else int((seed0 / "run.lock.pid").read_text()), signal.SIGTERM)
        _, err = study.communicate(timeout=120)
    finally:  # nothing of the study outlives the test, whatever failed (its runs share its process group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(study.pid, signal.SIGKILL)
    reason = "SIGTERM" if target == "compare" else "vae seed 0 was stopped by a signal"
    expected = f"gentk: stopped: compare stopped ({reason}); every run that was training saved a checkpoint"
    assert study.returncode == 130 and expected in err, err[-2000:]
    logs = {log.parent.name.split("-")[1]: log.read_text() for log in runs.glob("*/train.log")}
    assert sorted(logs) == ["seed0", "seed1"], sorted(logs)  # seed 2 was queued: it never started
    assert all("gentk: stopped: SIGTERM at step" in text for text in logs.values()), logs
    results = [json.loads(p.read_text()) for p in runs.glob("*/result.json")]
    assert len(results) == 2 and all(not r["finished"] and r["wall_s"] > 0 for r in results)


def test_a_profile_shrinks_different_models_in_one_compare_and_set_for_reaches_one_recipe(tmp_path, capsys):
    """A shared --set cannot shrink a VAE and an AAE alike (their parts differ); each recipe's
    [profiles.small] can, and --set-for changes one recipe only."""
    (tmp_path / "vae.toml").write_text(VAE + COMMON + "[profiles.small]\nmodel.encoder.hidden = [3]\nmodel.decoder.hidden = [3]\n")
    (tmp_path / "semi.toml").write_text(SEMISUP + COMMON + "[profiles.small]\nmodel.latents.y.regularizer.discriminator = [5]\n")
    paths = [str(tmp_path / "vae.toml"), str(tmp_path / "semi.toml")]
    out = ["--out", str(tmp_path / "studies"), "--name", "small"]
    assert main(["compare", *paths, "--set", "model.latents.y.regularizer.discriminator=[5]", *out]) == 2
    assert "vae.toml" in capsys.readouterr().err  # the VAE has no latent y

    assert main(["compare", *paths, "--profile", "small", "--set-for", "vae", "train.steps=1", *out]) == 0
    study = tmp_path / "studies" / "small"
    results = {r["recipe"]: r for r in json.loads((study / "study.json").read_text())["results"]}
    assert results["vae"]["steps"] == 1 and results["aae_semisup"]["steps"] == 2
    vae = gentk.load_recipe(Path(results["vae"]["run_dir"]) / "recipe.toml", plugins=gentk.load_plugins(autoload=False))
    semi = gentk.load_recipe(Path(results["aae_semisup"]["run_dir"]) / "recipe.toml", plugins=gentk.load_plugins(autoload=False))
    assert vae.model.encoder.config.hidden == [3] and vae.model.decoder.config.hidden == [3]
    assert semi.model.latents["y"].regularizer.config.discriminator == [5] and semi.model.encoder.config.hidden == [8]
    md = (study / "report.md").read_text()
    assert "--profile small" in md and "--set-for vae train.steps=1" in md and "For vae only: `train.steps=1`" in md

    assert main(["compare", *paths, "--profile", "small", "--set-for", "vea", "train.steps=1", *out]) == 2
    err = capsys.readouterr().err
    assert "--set-for vea train.steps=1: no recipe of this comparison is named 'vea'" in err and "Did you mean 'vae'?" in err
    assert main(["compare", *paths, "--profile", "tiny", *out]) == 2
    assert "no profile 'tiny'. Its profiles: small." in capsys.readouterr().err


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3-5") == [3, 4, 5]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(GentkError, match="--seeds"):
            parse_seeds(bad)


def test_paper_numbers_and_cells():
    assert report.paper_number("pixelgan_categorical", "cluster_error_aae").text() == "5.27 ± 1.81"
    assert report.paper_number("pixelgan_mnist_100_cpu", "semisup_error").value == 1.08  # a CPU variant: the full-scale number
    assert report.paper_number("vae", "cluster_error_aae") is None
    assert report.format_value(1.23456, 0.1) == "1.235 ± 0.1"


def test_markdown_and_html_render_the_same_blocks():
    blocks = [report.Heading("T", 1), report.Paragraph("run `x|y`"), report.Table(["a", "b"], [["1", "p|q"]]), report.Images([("cap", "i.png")])]
    md = report.render_markdown(blocks)
    assert "# T" in md and "| 1 | p\\|q |" in md and "![cap](i.png)" in md
    page = report.render_html(blocks, "T")
    assert "<code>x|y</code>" in page and "<td>p|q</td>" in page and '<img src="i.png" alt="cap">' in page


# --------------------------------------------------------------------------- recipes/paper

from pathlib import Path  # noqa: E402

import gentk  # noqa: E402

PAPER_DIR = Path(__file__).resolve().parents[1] / "recipes" / "paper"
TABLE1 = {  # column -> (recipe, metric key); the numbers live in gentk.report.PAPER
    "MNIST (Unsupervised)": ("pixelgan_mnist_unsup", "cluster_error_aae"),
    "MNIST (20 labels)": ("pixelgan_mnist_20", "semisup_error"),
    "MNIST (50 labels)": ("pixelgan_mnist_50", "semisup_error"),
    "MNIST (100 labels)": ("pixelgan_mnist_100", "semisup_error"),
    "SVHN (500 labels)": ("pixelgan_svhn_500", "semisup_error"),
    "SVHN (1000 labels)": ("pixelgan_svhn_1000", "semisup_error"),
    "NORB (1000 labels)": ("pixelgan_norb_1000", "semisup_error"),
}


@pytest.fixture(scope="module")
def plugins():
    return gentk.load_plugins(autoload=False)


@pytest.mark.parametrize("column", sorted(TABLE1))
def test_one_paper_recipe_per_table1_column(column, plugins):
    name, key = TABLE1[column]
    text = (PAPER_DIR / f"{name}.toml").read_text()
    paper = report.paper_number(name, key)
    # the header states the number we compare with
    assert f'"{column}"' in text and f"{paper.value:.2f} (±{paper.std:g}" in text.replace("±1.0)", "±1)")
    recipe = gentk.load_recipe(PAPER_DIR / f"{name}.toml", plugins=plugins)
    assert recipe.name == name and key.split("_")[0] in " ".join(recipe.eval.metrics)
    latent = recipe.model.latents["y"]
    assert latent.head == "categorical" and latent.size == (30 if "unsup" in name else 5 if "norb" in name else 10)
    labels = re.search(r"_(\d+)$", name)
    assert recipe.data.common.labeled == (int(labels.group(1)) if labels else 0) and latent.supervised == bool(labels)


def says_its_speed(path) -> bool:
    """The recipe's header, or that of the recipe it extends, gives the measured steps/s its step count comes from."""
    text = path.read_text()
    parent = re.search(r'^extends = "(.+)"', text, re.MULTILINE)
    return "steps/s" in text or (parent is not None and says_its_speed(path.parent / parent.group(1)))


@pytest.mark.parametrize("name", ["pixelgan_mnist_unsup", "pixelgan_mnist_20", "pixelgan_mnist_50", "pixelgan_mnist_100"])
def test_each_mnist_recipe_has_a_cpu_variant_that_builds(name, plugins, one_thread):
    from gentk.model import check_model

    full = gentk.load_recipe(PAPER_DIR / f"{name}.toml", plugins=plugins)
    cpu = gentk.load_recipe(PAPER_DIR / f"{name}_cpu.toml", plugins=plugins)
    assert cpu.name == f"{name}_cpu" and cpu.data == full.data and cpu.model.latents["y"].size == full.model.latents["y"].size
    assert cpu.train.steps < full.train.steps and cpu.eval.metrics == full.eval.metrics
    assert says_its_speed(PAPER_DIR / f"{name}_cpu.toml")  # the budget says what it was measured from
    assert "steps: reconstruction, discriminator.y, generator.y" in check_model(cpu, plugins, image_shape=(1, 28, 28))


@pytest.mark.parametrize("name, shape", [("pixelgan_svhn_500", (3, 32, 32)), ("pixelgan_norb_1000", (1, 32, 32))])
def test_svhn_and_norb_recipes_build(name, shape, plugins, one_thread):
    from gentk.model import check_model

    narrow = [
        "model.encoder.channels=[4, 4, 4]",
        "model.encoder.hidden=[8]",
        "model.latents.y.regularizer.discriminator=[8]",
        "model.decoder.layers=2",
        "model.decoder.channels=4",
    ]
    recipe = gentk.load_recipe(PAPER_DIR / f"{name}.toml", narrow, plugins=plugins)  # the recipe's data, heads and likelihood at a tiny width
    assert "supervised.y" in check_model(recipe, plugins, image_shape=shape)


def test_the_report_warns_when_data_or_budgets_differ(tmp_path, plugins):
    from gentk.compare import _meta

    (tmp_path / "vae.toml").write_text(VAE + COMMON)
    (tmp_path / "semi.toml").write_text(SEMISUP + COMMON.replace("steps = 2", "steps = 9"))
    paths = [tmp_path / "vae.toml", tmp_path / "semi.toml"]
    studies = [[gentk.load_recipe(p, plugins=plugins)] for p in paths]
    meta = _meta("t", paths, studies, [], [0], [])
    assert meta["differences"] == ["steps: vae 2, aae_semisup 9"]
    blocks = report.study_blocks(meta, [], ["vae", "aae_semisup"], curves=None, samples={}, code_plots=[])
    md = report.render_markdown(blocks)
    assert "Warning: the recipes do not share the same data and budget: steps: vae 2, aae_semisup 9" in md
    assert "matplotlib is not installed" in md  # what the report says without learning curves
    aligned = [[gentk.load_recipe(p, ["train.steps=4"], plugins=plugins)] for p in paths]
    assert _meta("t", paths, aligned, ["train.steps=4"], [0], [])["differences"] == []


def test_a_series_on_minutes_takes_each_step_at_the_run_clock():
    """Known answer: steps between two logged clock readings get the linear interpolation."""
    import numpy as np

    pair = np.dtype([("step", "i8"), ("value", "f8")])
    metrics = {"time/minutes": np.array([(10, 1.0), (20, 2.0)], dtype=pair)}
    curve = np.array([(10, 50.0), (15, 40.0), (20, 30.0)], dtype=pair)
    moved = report.on_minutes(metrics, curve)
    assert moved["step"].tolist() == [1.0, 1.5, 2.0] and moved["value"].tolist() == [50.0, 40.0, 30.0]
    assert curve["step"].tolist() == [10, 15, 20]  # the input is left as it was
    assert report.on_minutes({}, curve) is None  # a run from before the clock was logged
    # the CPU clock is its own series: a run that logged wall minutes only has no curve against CPU minutes
    assert report.on_minutes(metrics, curve, "cpu_minutes") is None
    both = {**metrics, "time/cpu_minutes": np.array([(10, 0.5), (20, 0.7)], dtype=pair)}
    assert report.on_minutes(both, curve, "cpu_minutes")["step"].tolist() == pytest.approx([0.5, 0.6, 0.7])


def test_headline_series_are_the_logged_headline_metrics_in_reading_order():
    curve = object()
    series = {
        "a": [
            {
                "eval/validation/recon_nll": curve,
                "eval/validation/reconstruction/loss": curve,
                "eval/validation/reconstruction/nll": curve,  # a training step's loss part, not the metric
                "eval/validation/discriminator.y/d_fake": curve,
            }
        ],
        "b": [{"eval/validation/cluster_error_aae": curve, "eval/validation/semisup_error": curve, "train/discriminator.y/d_fake": curve}],
    }
    assert report.headline_series(series) == [
        "eval/validation/semisup_error",
        "eval/validation/cluster_error_aae",
        "eval/validation/recon_nll",
        "eval/validation/discriminator.y/d_fake",
    ]


def _series(*rows):
    import numpy as np

    return np.array(list(rows), dtype=[("step", "i8"), ("value", "f8")])


def test_a_seed_band_is_the_mean_min_and_max_over_seeds_at_their_common_steps():
    """Known answer: three seeds, one of which logged an extra step that the others lack."""
    seeds = [
        {"e": _series((2, 10.0), (4, 6.0), (6, 1.0)), "time/minutes": _series((2, 1.0), (6, 3.0))},
        {"e": _series((2, 20.0), (4, 9.0)), "time/minutes": _series((2, 2.0), (4, 4.0))},
        {"e": _series((2, 30.0), (4, 12.0)), "time/minutes": _series((2, 3.0), (4, 5.0))},
    ]
    steps, mean, low, high, n = report.seed_band(seeds, "e")
    assert steps.tolist() == [2, 4] and mean.tolist() == [20.0, 9.0] and low.tolist() == [10.0, 6.0] and high.tolist() == [30.0, 12.0]
    assert n == 3
    minutes, mean, *_ = report.seed_band(seeds, "e", x="minutes")
    # the seeds' minutes at step 2: 1, 2, 3; at step 4: 2 (seed 0's clock interpolated between steps 2 and 6), 4, 5
    assert minutes.tolist() == pytest.approx([2.0, 11 / 3]) and mean.tolist() == [20.0, 9.0]
    assert report.seed_band(seeds, "missing") is None
    assert report.seed_band([{"e": seeds[0]["e"]}], "e", x="minutes") is None  # no clock, no curve against minutes


def test_learning_curves_draw_a_band_over_seeds(tmp_path):
    """The band between the seeds is filled: pixels of the first colour at 20 % over white appear only with two seeds."""
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    low = {"e": _series(*((s, 0.0) for s in range(0, 100, 10)))}
    high = {"e": _series(*((s, 10.0) for s in range(0, 100, 10)))}
    band_colour = np.array([210, 228, 240])  # matplotlib's first colour (31, 119, 180) at alpha 0.2 over white

    def band_pixels(runs):
        path = report.plot_learning_curves({"r": runs}, tmp_path / f"{len(runs)}.png", ["e"])
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(pixels - band_colour).max(-1) <= 3).sum())

    assert band_pixels([low, high]) > 10000 and band_pixels([low]) == 0
    assert report.plot_learning_curves({"r": [low]}, tmp_path / "none.png", ["e"], xs=("minutes",)) is None  # no clock logged
    with pytest.raises(ValueError, match="cpu_minutes"):
        report.plot_learning_curves({"r": [low]}, tmp_path / "bad.png", ["e"], xs=("hours",))


BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")


def test_the_report_reads_in_a_real_browser(tmp_path):
    """A headless Chromium's screenshot of a report: a plot spans the page's width (a CSS rule once shrank plots
    to 360 px) and a sample grid is shown as saved, 3x enlarged, with sharp pixels."""
    import shutil
    import subprocess

    from PIL import Image

    from gentk.grid import compose

    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); on Debian: apt-get install chromium-headless-shell")
    pytest.importorskip("matplotlib")
    import numpy as np

    low, high = {"e": _series((0, 0.0), (10, 0.0))}, {"e": _series((0, 10.0), (10, 10.0))}
    report.plot_learning_curves({"r": [low, high]}, tmp_path / "curves.png", ["e"], xs=("step", "minutes"))  # minutes: no clock, empty
    red = torch.zeros(4, 3, 8, 8)
    red[:, 0] = 1  # four red 8-pixel images: 24-pixel red squares at 3x, a colour nothing else on the page has
    compose([("samples", red)], nrow=2, scale=3).save(tmp_path / "grid.png")
    blocks = [report.Heading("T", 1), report.Images([("curves", "curves.png")]), report.Images([("grid", "grid.png")], kind="grid")]
    (tmp_path / "report.html").write_text(report.render_html(blocks, "T"))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            (tmp_path / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    band = np.where((np.abs(pixels - np.array([210, 228, 240])).max(-1) <= 3).any(0))[0]  # columns with the band's colour
    assert band.size and band.max() - band.min() > 400, "the plot is not shown at the page's width"
    red_rows = (np.abs(pixels - np.array([255, 0, 0])).max(-1) <= 3).any(1)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, red_rows.astype(int), 0])))[::2]  # heights of the red stretches
    assert runs.tolist() == [24, 24], f"the grid is not shown 3x enlarged and sharp: red stretches {runs.tolist()} pixels high"
