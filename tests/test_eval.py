"""`gentk eval` and `gentk sample` on a tiny run: eval.json, the printed table, grids, errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import gentk
from gentk.cli import main
from gentk.train import train

TINY = """
name = "tiny_cat"
[data]
name = "synthetic"
binarize = "dynamic"
batch_size = 20
classes = 4
[model.encoder]
name = "mlp"
hidden = [16]
input_noise = 0.3
[model.latents.y]
size = 5
head = "categorical"
prior = { name = "categorical" }
regularizer = { name = "adversarial", discriminator = [16] }
[model.decoder]
name = "pixelcnn"
layers = 2
channels = 8
likelihood = "bernoulli"
[train]
steps = 3
log_every = 1
threads = 1
[eval]
every = 3
samples = 10
metrics = ["recon_nll", "cluster_error"]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    path = root / "tiny_cat.toml"
    path.write_text(TINY)
    plugins = gentk.load_plugins(autoload=False)
    threads = torch.get_num_threads()
    try:
        return train(gentk.load_recipe(path, plugins=plugins), plugins=plugins, out=root / "runs").run_dir
    finally:
        torch.set_num_threads(threads)


def test_eval_writes_eval_json_and_prints_a_table(run_dir, capsys):
    assert main(["eval", str(run_dir), "--metrics", "recon_nll", "cluster_error", "--max-examples", "40"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints/latest.pt at step 3 of 3, test split" in out
    for key in ("recon_nll", "recon_nll_bpd", "cluster_error_aae", "cluster_error_majority", "cluster_error_hungarian", "reconstruction/loss"):
        assert f"\n{key} " in out
    saved = json.loads((run_dir / "eval.json").read_text())
    assert "metrics" in saved  # what training wrote is kept
    record = saved["evaluations"]["latest/test"]
    assert record["step"] == 3 and record["metric_names"] == ["recon_nll", "cluster_error"]
    assert 0 <= record["metrics"]["eval/test/cluster_error_aae"] <= 100
    assert record["metrics"]["eval/test/recon_nll"] == pytest.approx(record["metrics"]["eval/test/reconstruction/nll"], rel=1e-5)


def test_eval_defaults_to_the_recipe_s_metrics_and_is_repeatable(run_dir, capsys):
    assert main(["eval", str(run_dir), "--checkpoint", "best", "--split", "validation"]) == 0
    first = json.loads((run_dir / "eval.json").read_text())["evaluations"]["best/validation"]["metrics"]
    assert "eval/validation/cluster_error_aae" in first and "eval/validation/recon_nll" in first
    assert main(["eval", str(run_dir), "--checkpoint", "best", "--split", "validation"]) == 0
    again = json.loads((run_dir / "eval.json").read_text())["evaluations"]["best/validation"]["metrics"]
    assert again == first


def test_eval_errors_say_what_to_do(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--metrics", "elbo"]) == 2
    assert "KL" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--metrics", "recon_nll", "--option", "iwae.k=5"]) == 2
    assert "not among the metrics" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--metrics", "semisup_error"]) == 2
    assert "supervised" in capsys.readouterr().err


def test_sample_writes_a_readable_grid_and_the_time(run_dir, tmp_path, capsys):
    import numpy as np

    from gentk.grid import GAP

    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "-n", "9", "--out", str(out)]) == 0
    assert "sampled 9 images in" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("L"))
    side = 3 * (3 * 10 + 2)  # 3 x 3 images of 8x8 with 2-pixel gaps, enlarged 3 times
    assert grid.shape[1] >= 2 * side + GAP  # the samples, then their mean images (a panel is as wide as its title, at least)
    panel = (grid.shape[1] - GAP) // 2
    samples, means = grid[-side:, :side], grid[-side:, panel + GAP : panel + GAP + side]
    assert set(np.unique(samples)) <= {0, 255}  # Bernoulli samples are black or white
    assert len(np.unique(means)) > 2  # probabilities are shades of grey
    assert main(["sample", str(run_dir), "-n", "9", "--out", str(out), "--scale", "1", "--no-means"]) == 0
    assert Image.open(out).size[0] < 2 * (3 * 10 + 2) + GAP  # one panel, pixels not enlarged (as wide as its title, at least)
    assert main(["sample", str(run_dir), "-n", "10", "--out", str(out), "--per-category"]) == 0
    printed = capsys.readouterr().out
    assert "sampled 10 images in" in printed  # 5 categories x 2 per row
    assert "rows ordered and labelled by the majority label of all validation images in each category" in printed
    width, height = Image.open(out).size
    assert height > 5 * 3 * 10 and width > 2 * 3 * (2 * 10 + 2) + GAP  # 5 rows, a label column left of both panels
    assert main(["sample", str(run_dir), "--scale", "0"]) == 2
    assert "--scale 0" in capsys.readouterr().err


def test_a_per_category_grid_orders_rows_by_majority_label(run_dir, monkeypatch):
    """Rows follow their labels (categories no validation image went to last), each row its category's own samples."""
    from gentk import evaluate

    run = evaluate.load_run(run_dir)
    seen = []
    monkeypatch.setattr(evaluate, "compose", lambda panels, **kw: seen.append((panels, kw)) or Image.new("RGB", (1, 1)))

    def draw(labels):
        generator = torch.Generator().manual_seed(0)
        evaluate.write_sample_grid(run.model, run_dir / "g.png", 10, generator=generator, latent="y", labels=labels)
        return seen[-1]

    (plain, kw) = draw(None)
    assert kw["row_labels"] is None and [title for title, _ in plain] == ["samples", "mean images: P(pixel = 1)"]
    (ordered, kw) = draw([3, -1, 0, 0, 1])
    assert kw["row_labels"] == ["0 (category 2)", "0 (category 3)", "1 (category 4)", "3 (category 0)", "none (category 1)"]
    for (_, before), (_, after) in zip(plain, ordered):  # 2 images a row: category c is images 2c, 2c + 1
        assert torch.equal(after, before[[4, 5, 6, 7, 8, 9, 0, 1, 2, 3]])
