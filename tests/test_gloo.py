"""The multi-process paths, each on two gloo processes against one process (tests/gloo.py).

What a GPU run under torchrun would do differently (NCCL, CUDA tensors) is left to
bench/gpu_smoke.sh; what the engine does with ranks, shards and waits is the same here.
"""

from __future__ import annotations

import pytest
import torch
from gloo import GlooPool

import gentk
from gentk import dist
from gentk.data import build_data
from gentk.evaluate import held_out_losses
from gentk.model import build_model
from gentk.recipe import recipe_from_dict

AAE = {
    "name": "tiny_gloo",
    "seed": 2,
    "data": {"name": "synthetic", "batch_size": 8, "train": 64, "test": 16},
    "model": {
        "encoder": {"name": "mlp", "hidden": [8]},
        "latents": {"z": {"size": 2, "regularizer": {"name": "adversarial", "discriminator": [8]}}},
        "decoder": {"name": "bernoulli", "body": "mlp", "hidden": [8]},
    },
    "train": {"steps": 2, "log_every": 1, "threads": 1},
    "eval": {"every": 2, "samples": 0},
}


@pytest.fixture(scope="module")
def pool():
    workers = GlooPool(world_size=2)
    yield workers
    workers.close()


def build(tree: dict):
    plugins = gentk.load_plugins(autoload=False)
    recipe = recipe_from_dict(tree, plugins=plugins)
    data = build_data(recipe.data, plugins, seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    return recipe, data, build_model(recipe, image_shape=data.image_shape, plugins=plugins)


def evaluation_losses(tree: dict) -> dict[str, float]:
    recipe, data, model = build(tree)
    return held_out_losses(model, data, "test", recipe, torch.device("cpu"), dist.from_environment())


def test_a_rank_without_evaluation_examples_takes_part_in_the_sum(pool):
    # one test example for two ranks: rank 1's shard is empty (on NCCL the sum hung, on gloo it failed)
    tree = {**AAE, "eval": {**AAE["eval"], "max_examples": 1}}
    one = evaluation_losses(tree)
    ranks = pool.run(evaluation_losses, tree)
    assert ranks[0] == ranks[1] == pytest.approx(one, rel=1e-6)
    assert "eval/test/reconstruction/loss" in one and "eval/test/discriminator.z/d_loss" in one
