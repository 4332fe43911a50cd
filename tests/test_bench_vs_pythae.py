"""bench/vs_pythae.py scores both sides by one function: known answers on a uniform model."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import gentk
from gentk.data import build_data
from gentk.model import build_model
from gentk.recipe import recipe_from_dict


def load_bench():
    spec = importlib.util.spec_from_file_location("vs_pythae", Path(__file__).resolve().parents[1] / "bench" / "vs_pythae.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_uniform_vae_scores_one_bit_per_pixel_on_every_measure():
    plugins = gentk.load_plugins(autoload=False)
    latent = {"size": 2, "head": "gaussian", "prior": {"name": "standard_normal"}, "regularizer": {"name": "kl"}}
    tree = {
        "name": "tiny",
        "data": {"name": "synthetic", "binarize": "dynamic", "batch_size": 25, "classes": 4, "train": 50, "test": 60},
        "model": {
            "encoder": {"name": "mlp", "hidden": [16]},
            "latents": {"z": latent},
            "decoder": {"name": "bernoulli", "body": "mlp", "hidden": [16]},
        },
    }
    recipe = recipe_from_dict(tree, plugins=plugins)
    data = build_data(recipe.data, plugins, seed=0)
    model = build_model(recipe, data.image_shape, plugins)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # every logit 0 and q(z|x) = N(0, I) = p(z): each measure is 64 pixels x ln 2
    result = load_bench().measure(model, data, iwae_k=3)
    for key in ("recon_nll", "elbo_nll", "iwae_nll"):
        assert result[key] == pytest.approx(64 * math.log(2), rel=1e-6), key
