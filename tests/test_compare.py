"""`gentk compare` end to end on tiny recipes, plus the report's pieces."""

from __future__ import annotations

import json

import pytest

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
    args = ["compare", str(tmp_path / "vae.toml"), str(tmp_path / "semi.toml"), "--seeds", "0,1", "--set", "train.steps=3", "--out", str(tmp_path / "studies"), "--name", "tiny"]
    assert main(args) == 0
    study = tmp_path / "studies" / "tiny"
    md = (study / "report.md").read_text()
    assert "| metric | vae | aae_semisup |" in md
    row = next(line for line in md.splitlines() if line.startswith("| semisup_error |"))
    assert "± " in row and "(paper 1.9 ± 0.1)" in row  # Table 1's AAE number beside ours
    assert next(line for line in md.splitlines() if line.startswith("| elbo_nll |")).count("±") == 1  # vae only
    for label in ("| wall time (s) |", "| steps/s |", "| steps | 3 ± 0 | 3 ± 0 |", "`train.steps=3`"):
        assert label in md
    assert "samples/vae-seed0.png" in md and (study / "samples" / "aae_semisup-seed0.png").is_file()
    assert (study / "curves.png").is_file() and "curves.png" in md
    assert "code_space/vae-seed0-z.png" in md
    page = (study / "report.html").read_text()
    assert "<table>" in page and 'src="samples/vae-seed0.png"' in page
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
