"""The multi-process paths, each on two gloo processes against one process (tests/gloo.py).

What a GPU run under torchrun would do differently (NCCL, CUDA tensors) is left to
bench/gpu_smoke.sh; what the engine does with ranks, shards and waits is the same here.
"""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
from gloo import TIMEOUT_S, GlooPool
from torch.distributed.distributed_c10d import _set_pg_timeout

import gentk
import gentk.evaluate
from gentk import dist
from gentk.data import build_data
from gentk.errors import TrainingError
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


def evaluation_with_a_slow_metric(tree: dict, seconds: float) -> dict[str, float]:
    """`run_evaluation` whose metrics take rank 0 `seconds`, longer than the ordinary collectives' timeout here."""
    recipe, data, model = build(tree)
    original = gentk.evaluate.evaluate

    def slow(*args, **kwargs):
        time.sleep(seconds)  # an IWAE bound with k = 5000, say
        return original(*args, **kwargs)

    gentk.evaluate.evaluate = slow
    _set_pg_timeout(datetime.timedelta(seconds=seconds / 3))  # under gentk: 30 minutes (dist.TIMEOUT)
    try:
        plugins = gentk.load_plugins(autoload=False)
        return gentk.evaluate.run_evaluation(model, None, data, recipe, plugins, torch.device("cpu"), dist.from_environment(), None, 2)
    finally:
        _set_pg_timeout(datetime.timedelta(seconds=TIMEOUT_S))
        gentk.evaluate.evaluate = original


def test_ranks_wait_for_rank_0_s_metrics_longer_than_a_collective_s_timeout(pool):
    tree = {**AAE, "eval": {**AAE["eval"], "metrics": ["recon_nll"]}}
    ranks = pool.run(evaluation_with_a_slow_metric, tree, 3.0)
    assert ranks[0] == ranks[1] and "eval/validation/recon_nll" in ranks[0]


def resume_where_rank_0_alone_sees_the_run(places: list[str], tree: dict) -> str:
    """Resume a run from a relative --out, each rank in its own directory: rank 1 cannot see rank 0's run, as on a second machine."""
    os.chdir(places[dist.from_environment().rank])
    plugins = gentk.load_plugins(autoload=False)
    try:
        gentk.train(recipe_from_dict(tree, plugins=plugins), plugins=plugins, out="runs", resume="auto", device="cpu")
    except TrainingError as exc:
        return str(exc)
    return "resumed"


def test_resuming_on_machines_without_a_shared_filesystem_is_a_clear_error(pool, tmp_path, monkeypatch):
    first, second = tmp_path / "machine-0", tmp_path / "machine-1"
    second.mkdir()
    monkeypatch.chdir(first.mkdir() or first)
    plugins = gentk.load_plugins(autoload=False)
    gentk.train(recipe_from_dict(AAE, plugins=plugins), plugins=plugins, out="runs", device="cpu")
    messages = pool.run(resume_where_rank_0_alone_sees_the_run, [str(first), str(second)], AAE)
    assert messages[0] == messages[1] and "rank(s) 1 cannot see the checkpoint that rank 0 resumes from" in messages[0]
    assert "filesystem they all share" in messages[0]
