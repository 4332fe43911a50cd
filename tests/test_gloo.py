"""The multi-process paths, each on two gloo processes against one process (tests/gloo.py).

What a GPU run under torchrun would do differently (NCCL, CUDA tensors) is left to
bench/gpu_smoke.sh; what the engine does with ranks, shards and waits is the same here.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import pytest
import torch
from gloo import TIMEOUT_S, GlooPool
from torch.distributed.distributed_c10d import _set_pg_timeout

import gentk
import gentk.evaluate
from gentk import checkpoint, dist
from gentk.data import Batch, build_data
from gentk.errors import TrainingError, TrainingInterrupted
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


def binarized_batches(tree: dict, steps: int) -> list[dict[str, torch.Tensor]]:
    """This rank's first `steps` training batches under dynamic binarization, each with the noise drawn for it
    and the same examples as 8-bit intensities (the batches of the recipe without binarization)."""
    info = dist.from_environment()
    plugins = gentk.load_plugins(autoload=False)
    recipes = [recipe_from_dict(t, plugins=plugins) for t in (tree, {**tree, "data": {**tree["data"], "binarize": "none"}})]
    streams = [
        build_data(r.data, plugins, seed=r.seed).train_batches(r.data.common.batch_size, seed=r.seed, rank=info.rank, world_size=info.world_size)
        for r in recipes
    ]
    drawn, rand = [], torch.rand

    def recorded(*args, **kwargs):
        drawn.append(rand(*args, **kwargs))
        return drawn[-1]

    torch.rand = recorded
    try:
        batches = [(next(streams[0]), next(streams[1])) for _ in range(steps)]
    finally:
        torch.rand = rand
    return [{"x": b.x, "y": b.y, "noise": noise, "intensity": plain.x} for (b, plain), noise in zip(batches, drawn, strict=True)]


def test_each_rank_draws_the_binarization_noise_of_its_own_examples_only(pool):
    tree = {**AAE, "data": {**AAE["data"], "binarize": "dynamic"}}  # a global batch of 8
    one = binarized_batches(tree, 3)
    ranks = pool.run(binarized_batches, tree, 3)
    for step, single in enumerate(one):
        mine = [rank[step] for rank in ranks]
        assert single["noise"].shape == (8, 1, 8, 8) and [b["noise"].shape for b in mine] == [(4, 1, 8, 8)] * 2  # a half each, not all 8
        assert not torch.equal(mine[0]["noise"], mine[1]["noise"])  # each rank's stream is its own
        for b in mine:  # a pixel is on where its rank's noise is below its intensity
            assert torch.equal(b["x"], (b["noise"] < b["intensity"]).float())
        # together the ranks binarize exactly the single process's examples
        assert torch.equal(torch.cat([b["intensity"] for b in mine]), single["intensity"])
        assert torch.equal(torch.cat([b["y"] for b in mine]), single["y"])


READS = ("item", "tolist", "__float__", "__int__", "__bool__")  # each waits for the GPU's queued kernels


def reads_per_step(tree: dict, out: str) -> list[int]:
    """gentk's reads of tensor values and CUDA synchronizations, each a host sync on a GPU, from the start of each
    training step to the start of the next (the log interval, checkpoints and evaluations set apart by the recipe)."""
    import importlib
    import sys

    engine = importlib.import_module("gentk.train")  # the module: gentk.train is also the function
    counted, marks = [0], []

    def counting(original, everywhere=False):
        def count(*args, **kwargs):
            if everywhere or sys._getframe(1).f_globals.get("__name__", "").startswith("gentk"):  # torch's own reads aside
                counted[0] += 1
            return original(*args, **kwargs)

        return count

    def marked(run):
        marks.append(counted[0])
        return train_step(run)

    train_step, synchronize, reads = engine.Run.train_step, torch.cuda.synchronize, {name: getattr(torch.Tensor, name) for name in READS}
    for name, read in reads.items():
        setattr(torch.Tensor, name, counting(read))
    torch.cuda.synchronize, engine.Run.train_step = counting(synchronize, everywhere=True), marked
    try:
        trained(tree, out)
    finally:
        for name, read in reads.items():
            setattr(torch.Tensor, name, read)
        torch.cuda.synchronize, engine.Run.train_step = synchronize, train_step
    return [b - a for a, b in zip(marks, marks[1:])]


def test_a_step_syncs_once_under_ddp_with_a_time_budget(pool, tmp_path):
    # the NaN check reads every training step's loss; the stop votes (a Ctrl-C, the time budget) ride in the same
    # all-reduce and read (before: an all-reduce and a read each, every step)
    tree = {**AAE, "train": {**AAE["train"], "steps": 5, "log_every": 100, "minutes": 60.0}, "eval": {"every": 100, "samples": 0}}
    assert reads_per_step(tree, str(tmp_path / "one")) == [1, 1, 1, 1]
    assert pool.run(reads_per_step, tree, str(tmp_path / "two")) == [[1, 1, 1, 1]] * 2


def stopped_when_rank_1_is_signalled(tree: dict, out: str, after: int) -> int:
    """The step at which the run stops when rank 1 alone gets a SIGINT, once its step `after` is done."""
    import importlib
    import signal

    engine = importlib.import_module("gentk.train")
    train_step = engine.Run.train_step

    def signalled(run):
        train_step(run)
        if run.info.rank == 1 and run.step == after:
            os.kill(os.getpid(), signal.SIGINT)

    engine.Run.train_step = signalled
    try:
        trained(tree, out)
    except TrainingInterrupted as stop:
        return stop.step
    finally:
        engine.Run.train_step = train_step
    raise AssertionError("the run did not stop")


def test_a_ctrl_c_on_one_rank_stops_every_rank_one_step_later(pool, tmp_path):
    tree = {**AAE, "train": {**AAE["train"], "steps": 8}, "eval": {"every": 100, "samples": 0}}
    assert pool.run(stopped_when_rank_1_is_signalled, tree, str(tmp_path / "two"), 2) == [3, 3]  # carried by step 3's all-reduce


# --------------------------------------------------------------------------- paths a GPU run takes, on gloo

# Deterministic given the batches (no input noise, no prior samples in training, a static binarization), so
# two ranks, each with half of every global batch, must reach one process's weights (up to summation order).
PIXEL = {
    "name": "tiny_gloo_pixel",
    "seed": 4,
    "data": {"name": "synthetic", "binarize": "static", "batch_size": 8, "train": 64, "test": 16},
    "model": {
        "encoder": {"name": "mlp", "hidden": [8]},
        "latents": {"z": {"size": 2, "head": "deterministic", "regularizer": {"name": "none"}}},
        "decoder": {"name": "pixelcnn", "layers": 2, "channels": 4, "first_kernel": 3, "kernel": 3, "conditioning": "adaptive_bias"},
    },
    "train": {"steps": 3, "log_every": 1, "threads": 1},
    "eval": {"every": 3, "samples": 0},
}


def trained(tree: dict, out: str, resume: str | None = None, eager_compile: bool = False) -> str | None:
    """Train `tree` with gentk.train; the run directory (rank 0; None on the others)."""
    if eager_compile:  # torch.compile's graph capture without its code generation, which takes minutes on a CPU
        original = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, **options: original(self, backend="eager", **options)
    try:
        plugins = gentk.load_plugins(autoload=False)
        result = gentk.train(recipe_from_dict(tree, plugins=plugins), plugins=plugins, out=out, resume=resume, force=resume is not None)
    finally:
        if eager_compile:
            torch.nn.Module.compile = original
    return str(result.run_dir) if result.run_dir else None


def assert_same_weights(one: Path, two: Path) -> None:
    a, b = checkpoint.load(one / "checkpoints" / "latest.pt"), checkpoint.load(two / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] and (a["world_size"], b["world_size"]) == (1, 2) and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-5, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


def test_a_pixelcnn_decoder_trains_under_ddp_as_on_one_process(pool, tmp_path):
    one = Path(trained(PIXEL, str(tmp_path / "one")))
    two = Path(pool.run(trained, PIXEL, str(tmp_path / "two"))[0])
    assert_same_weights(one, two)


@pytest.mark.skipif(
    not os.environ.get("GENTK_TEST_COMPILE"), reason="torch.compile's graph capture takes ~40 s on a loaded 2-core CPU; bench/gpu_smoke.sh runs it"
)
def test_compiled_parts_train_under_ddp_as_on_one_process(pool, tmp_path):
    # each part compiled in place, then wrapped in its own DDP (MLPs: capturing a PixelCNN takes a minute);
    # set GENTK_TEST_COMPILE=1 to run it
    mlp = {"name": "bernoulli", "body": "mlp", "hidden": [8]}
    tree = {**PIXEL, "model": {**PIXEL["model"], "decoder": mlp}, "train": {**PIXEL["train"], "compile": True}}
    one = Path(trained(tree, str(tmp_path / "one"), eager_compile=True))
    two = Path(pool.run(trained, tree, str(tmp_path / "two"), None, True)[0])
    assert_same_weights(one, two)


def test_a_run_resumes_on_another_number_of_processes(pool, tmp_path):
    out = str(tmp_path / "runs")
    run = trained({**PIXEL, "train": {**PIXEL["train"], "steps": 2}}, out)
    assert pool.run(trained, {**PIXEL, "train": {**PIXEL["train"], "steps": 4}}, out, run)[0] == run  # 1 process -> 2
    assert trained({**PIXEL, "train": {**PIXEL["train"], "steps": 5}}, out, resume=run) == run  # 2 processes -> 1
    state = checkpoint.load(Path(run) / "checkpoints" / "latest.pt")
    assert state["step"] == 5 and state["world_size"] == 1
    assert all(s["step"] == 5 for s in state["optimizers"]["reconstruction"]["state"].values())  # Adam's moments went on, over both resumes
    rows = [json.loads(line)["step"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if "train/reconstruction/loss" in line]
    assert rows == [1, 2, 3, 4, 5]


def discriminator_gradients(tree: dict, x: torch.Tensor, prior: torch.Tensor, ranks: int) -> list[dict[str, torch.Tensor]]:
    """The discriminator step's gradients, twice, on this rank's share of a global batch `x` and of the prior samples:
    the first execution all-reduces them explicitly, the second through DDP (`PartSync`)."""
    info = dist.from_environment() if ranks > 1 else dist.DistInfo()
    _, _, model = build(tree)
    share = slice(info.rank * len(x) // ranks, (info.rank + 1) * len(x) // ranks)
    model.priors["z"].sample = lambda n, generator=None: prior[share]
    sync = dist.PartSync(model, info, torch.device("cpu"))
    (step,) = [ts for ts in model.training_steps() if ts.name == "discriminator.z"]
    grads = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        with sync.step(step):
            loss, logs = step.loss(Batch(x[share], torch.zeros(len(x[share]), dtype=torch.long)))
            loss.backward()
        sync.reduce(step, loss)
        assert logs["r1"] > 0
        grads.append({name: p.grad.clone() for name, p in zip("abcdefgh", step.parameters())})
    assert ranks == 1 or sync.ddp_parts["discriminator.z"] == {"discriminator.z"}  # the second execution was DDP's
    return grads


def test_the_r1_penalty_under_ddp_gives_one_process_s_gradients(pool):
    regularizer = {"name": "adversarial", "discriminator": [8], "gradient_penalty": 1.0}
    tree = {**AAE, "model": {**AAE["model"], "latents": {"z": {"size": 2, "regularizer": regularizer}}}}
    g = torch.Generator().manual_seed(0)
    x, prior = torch.bernoulli(torch.full((8, 1, 8, 8), 0.5), generator=g), torch.randn(8, 2, generator=g)
    one = discriminator_gradients(tree, x, prior, 1)
    for rank in pool.run(discriminator_gradients, tree, x, prior, 2):
        for got, expected in zip(rank, one, strict=True):
            for name in expected:
                torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5)
