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


def test_sample_writes_a_grid_and_the_time(run_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "-n", "9", "--out", str(out)]) == 0
    assert "sampled 9 images in" in capsys.readouterr().out
    assert Image.open(out).size == (3 * 10 + 2, 3 * 10 + 2)  # 3 x 3 grid of 8x8 images, 2-pixel gaps
    assert main(["sample", str(run_dir), "-n", "10", "--out", str(out), "--per-category"]) == 0
    assert "sampled 10 images in" in capsys.readouterr().out  # 5 categories x 2 per row
    assert Image.open(out).size == (2 * 10 + 2, 5 * 10 + 2)
