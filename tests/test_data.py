"""Batches, binarization, labeled subsets, resumption and DDP shards, on the synthetic set.

The synthetic dataset is generated (no files), so these tests run anywhere and fast.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from gentk.data import ON_DEVICE_SHARE, Batch, Data, balanced_subset, build_data, keep_train_split, static_binarize
from gentk.download import DataError
from gentk.plugins import load_plugins
from gentk.recipe import ComponentSpec, DataOptions, recipe_from_dict


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(autoload=False)


def synthetic(plugins, *, seed=0, common=None, **options):
    entry = plugins.get("datasets", "synthetic")
    spec = ComponentSpec("datasets", "synthetic", entry.config(**options), common or DataOptions())
    return build_data(spec, plugins, seed=seed)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_synthetic_shapes_range_and_splits(plugins):
    data = synthetic(plugins)
    assert data.image_shape == (1, 8, 8)
    assert data.num_classes == 10 and data.levels == 256
    assert synthetic(plugins, binarize="dynamic").levels == 2
    assert data.split_sizes == {"train": 320, "validation": 80, "test": 100}
    batch = next(data.train_batches(32, seed=0))
    assert isinstance(batch, Batch)
    assert batch.x.shape == (32, 1, 8, 8) and batch.x.dtype == torch.float32
    assert batch.y.shape == (32,) and batch.y.dtype == torch.int64
    assert 0.0 <= batch.x.min() and batch.x.max() <= 1.0
    levels = batch.x * 255
    assert torch.equal(levels, levels.round()), "8-bit data must be exactly k/255"
    assert set(batch.y.tolist()) <= set(range(10))
    assert batch.to("cpu").x is not None and len(batch) == 32


def test_synthetic_is_seeded_and_options_change_it(plugins):
    a = next(synthetic(plugins).eval_batches("test", 100))
    b = next(synthetic(plugins).eval_batches("test", 100))
    c = next(synthetic(plugins, generator_seed=1).eval_batches("test", 100))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    big = synthetic(plugins, size=28, channels=3, classes=4, train=50, test=20)
    assert big.image_shape == (3, 28, 28) and big.num_classes == 4
    assert big.split_sizes == {"train": 40, "validation": 10, "test": 20}


def test_train_stream_covers_each_epoch_once_and_reshuffles(plugins):
    data = synthetic(plugins, train=100, test=10, common=DataOptions(validation=20))
    it = data.train_batches(16, seed=3)
    seen = torch.cat([b.x.flatten(1) for b in take(it, 10)])  # 160 examples: 2 epochs of 80
    reference = torch.cat([b.x.flatten(1) for b in data.eval_batches("train", 80)])
    first = {tuple(r.tolist()) for r in seen[:80]}
    assert first == {tuple(r.tolist()) for r in reference}, "one epoch visits every training example once"
    assert not torch.equal(seen[:80], seen[80:160]), "each epoch is reshuffled"
    again = torch.cat([b.x.flatten(1) for b in take(data.train_batches(16, seed=3), 10)])
    assert torch.equal(seen, again), "same seed, same stream"
    other = torch.cat([b.x.flatten(1) for b in take(data.train_batches(16, seed=4), 10)])
    assert not torch.equal(seen, other)


def test_resume_gives_the_batches_of_an_uninterrupted_run(plugins):
    data = synthetic(plugins, binarize="dynamic")
    straight = take(data.train_batches(48, seed=1), 12)
    it = data.train_batches(48, seed=1)
    take(it, 5)
    state = it.state_dict()
    resumed = data.train_batches(48, seed=1)
    resumed.load_state_dict(state)
    for a, b in zip(straight[5:], take(resumed, 7)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_resume_with_another_recipe_is_an_error(plugins):
    data = synthetic(plugins)
    state = data.train_batches(32, seed=1).state_dict()
    other = data.train_batches(64, seed=1)
    with pytest.raises(DataError, match="batch_size is 32 but this run's is 64"):
        other.load_state_dict(state)


def test_ddp_shards_partition_the_global_batch(plugins):
    # 8-bit images: the ranks' slices, joined, are the single-process batch (dynamic binarization: tests/test_gloo.py)
    data = synthetic(plugins)
    single = take(data.train_batches(40, seed=2), 3)
    ranks = [take(data.train_batches(40, seed=2, rank=r, world_size=4), 3) for r in range(4)]
    for step in range(3):
        joined = torch.cat([ranks[r][step].x for r in range(4)])
        assert torch.equal(joined, single[step].x)
    with pytest.raises(DataError, match="multiple of 3"):
        data.train_batches(40, seed=2, rank=0, world_size=3)


def test_a_batch_reaches_a_gpu_through_pinned_memory_without_waiting(monkeypatch):
    # A copy from pageable memory waits for every kernel the GPU has queued; from pinned memory it need not.
    # torch.cuda is mocked: pin_memory and the copy are recorded, not done.
    done = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: done.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: done.append((str(device), non_blocking)) or self)
    Batch(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)).to_device("cuda:0")
    assert done == ["pin", ("cuda:0", True), "pin", ("cuda:0", True)]
    done.clear()
    Batch(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)).to_device(torch.device("cpu"))
    assert done == []  # already there: nothing to pin or copy (as a batch of a training split on the device)


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_a_training_split_on_the_device_serves_the_same_batches(plugins, binarize):
    # on the CPU ("on_device = true" there) the device path gathers with torch, the host path with NumPy: the same numbers
    common = DataOptions(labeled=6, validation=20)
    host, kept = synthetic(plugins, binarize=binarize, train=100, common=common), synthetic(plugins, binarize=binarize, train=100, common=common)
    kept.keep_train_on("cpu")
    for rank in range(2):  # batches of 48 from 80 examples cross epochs; a labeled batch of 4 from 6, every other step
        (host_train, host_labeled), (kept_train, kept_labeled) = [
            (d.train_batches(48, seed=5, rank=rank, world_size=2), d.train_batches(4, seed=5, labeled=True)) for d in (host, kept)
        ]
        for _ in range(7):
            for a, b in ((next(host_train), next(kept_train)), (next(host_labeled), next(kept_labeled))):
                assert a.x.dtype == b.x.dtype == torch.float32 and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    resumed = kept.train_batches(48, seed=5)  # a state of the host path continues on the device path
    straight = host.train_batches(48, seed=5)
    take(straight, 3)
    resumed.load_state_dict(straight.state_dict())
    assert all(torch.equal(a.x, b.x) for a, b in zip(take(straight, 3), take(resumed, 3)))


def test_with_the_split_on_the_device_a_step_copies_nothing_from_the_host(plugins, monkeypatch):
    # the host path makes each batch from NumPy arrays; the device path sends the epochs' order once and then only indexes
    data = synthetic(plugins, binarize="dynamic", train=100, common=DataOptions(labeled=8, validation=20))
    data.keep_train_on("cpu")
    made = []
    monkeypatch.setattr(torch, "from_numpy", lambda array, made_by=torch.from_numpy: made.append(array.shape) or made_by(array))
    labeled, batches = data.train_batches(8, seed=1, labeled=True), data.train_batches(40, seed=1)
    for _ in range(30):  # a labeled epoch a step, two steps an epoch of the 80 examples
        assert len(next(labeled)) == 8 and len(next(batches)) == 40
    assert sorted(made) == [(819 * 80,), (8192 * 8,)]  # one block of epochs' order each: 819 epochs of 80, 8192 of 8


def test_on_device_auto_keeps_the_split_on_a_gpu_with_room(plugins, monkeypatch):
    # no GPU here: its free memory is mocked, and where the split would go is recorded instead of done
    data = synthetic(plugins)
    kept = []
    monkeypatch.setattr(Data, "keep_train_on", lambda self, device: kept.append(str(device)))
    free = {"bytes": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 << 30))
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: free["bytes"] + (1 << 30), raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 1 << 30, raising=False)
    fits = int(data.train_nbytes / ON_DEVICE_SHARE)
    assert data.train_nbytes == 320 * 8 * 8 + 320 * 8  # uint8 levels and int64 labels
    for device in ("cuda:0", "mps"):
        free["bytes"] = fits
        assert keep_train_split(data, "auto", device) and kept[-1] == device
        free["bytes"] = fits - 100
        assert not keep_train_split(data, "auto", device) and kept[-1] == device and len(kept) in (1, 2)
    assert kept == ["cuda:0", "mps"]
    assert not keep_train_split(data, "auto", "cpu")  # on a CPU the host path stays
    assert not keep_train_split(data, False, "cuda:0")
    free["bytes"] = 0
    assert keep_train_split(data, True, "cuda:1") and keep_train_split(data, True, "cpu") and kept[-2:] == ["cuda:1", "cpu"]
    with pytest.raises(DataError, match="cannot keep its training split on a device"):
        keep_train_split(object(), True, "cuda:0")
    assert not keep_train_split(object(), "auto", "cuda:0")


def test_a_binarization_drawn_on_another_device_is_not_continued_silently(plugins):
    data = synthetic(plugins, binarize="dynamic")
    state = data.train_batches(40, seed=1).state_dict()
    assert state["noise_device"] == "cpu"
    with pytest.raises(DataError, match=r"noise on cuda but this run keeps the training split on cpu.*--set data.on_device=true"):
        data.train_batches(40, seed=1).load_state_dict({**state, "noise_device": "cuda"})
    del state["noise_device"]  # a checkpoint from before data.on_device: drawn on the CPU
    data.train_batches(40, seed=1).load_state_dict(state)
    eight_bit = synthetic(plugins)  # nothing drawn: a stream from a GPU continues on the CPU
    straight = eight_bit.train_batches(40, seed=1)
    take(straight, 2)
    moved = eight_bit.train_batches(40, seed=1)
    moved.load_state_dict({**straight.state_dict(), "noise_device": "cuda", "generator": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(next(moved).x, next(straight).x)


def test_eval_batches_are_ordered_finite_and_sharded(plugins):
    data = synthetic(plugins)
    full = list(data.eval_batches("test", 30))
    assert [len(b) for b in full] == [30, 30, 30, 10]
    x = torch.cat([b.x for b in full])
    shards = [torch.cat([b.x for b in data.eval_batches("test", 7, rank=r, world_size=3)]) for r in range(3)]
    assert torch.equal(torch.cat(shards), x)
    limited = list(data.eval_batches("validation", 50, max_examples=60))
    assert sum(len(b) for b in limited) == 60
    with pytest.raises(DataError, match="unknown split 'valid'"):
        data.eval_batches("valid", 10)


def test_dynamic_binarization_draws_fresh_values_each_batch(plugins):
    data = synthetic(plugins, binarize="dynamic", train=8, test=8, common=DataOptions(validation=0))
    it = data.train_batches(8, seed=0)
    a, b = next(it), next(it)
    assert set(a.x.unique().tolist()) <= {0.0, 1.0}
    order_a, order_b = a.y.argsort(), b.y.argsort()  # same 8 examples, another order and draw
    assert not torch.equal(a.x[order_a], b.x[order_b])
    # Evaluation uses one fixed static binarization, identical every time.
    t1 = torch.cat([b.x for b in data.eval_batches("test", 8)])
    t2 = torch.cat([b.x for b in data.eval_batches("test", 8)])
    assert torch.equal(t1, t2) and set(t1.unique().tolist()) <= {0.0, 1.0}


def test_dynamic_draws_average_to_the_pixel_intensities(plugins):
    common = DataOptions(validation=0)
    data = synthetic(plugins, binarize="dynamic", train=100, common=common)
    probs = synthetic(plugins, train=100, common=common)._splits["train"][0] / 255
    total = np.zeros(probs.shape)
    it = data.train_batches(100, seed=0)  # one batch = one whole epoch, in that epoch's order
    for _ in range(300):
        rows = it._epoch_order()
        total[rows] += next(it).x.numpy()
    assert np.abs(total / 300 - probs).max() < 0.15
    assert np.abs(total / 300 - probs).mean() < 0.03


def test_static_and_threshold_binarization(plugins):
    static = synthetic(plugins, binarize="static")
    again = synthetic(plugins, binarize="static")
    other_seed = synthetic(plugins, binarize="static", binarize_seed=5)
    a = next(static.train_batches(64, seed=0)).x
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, next(again.train_batches(64, seed=0)).x)
    assert not torch.equal(a, next(other_seed.train_batches(64, seed=0)).x)
    plain = next(synthetic(plugins).eval_batches("test", 100)).x
    thresholded = next(synthetic(plugins, binarize="threshold", threshold=0.5).eval_batches("test", 100)).x
    assert torch.equal(thresholded, (plain > 0.5).float())


def test_static_binarize_is_bernoulli_of_the_intensity():
    images = np.full((2000, 1, 4, 4), 64, np.uint8)
    bits = static_binarize(images, 255, seed=0, stream=0)
    assert set(np.unique(bits)) <= {0, 1}
    assert abs(bits.mean() - 64 / 255) < 0.01
    assert np.array_equal(bits, static_binarize(images, 255, seed=0, stream=0))


def test_balanced_subset_exact_counts_and_seed():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(0).shuffle(labels)
    chosen = balanced_subset(labels, 100, 10, seed=7)
    assert len(chosen) == 100 and len(set(chosen.tolist())) == 100
    assert np.bincount(labels[chosen], minlength=10).tolist() == [10] * 10
    assert np.array_equal(chosen, balanced_subset(labels, 100, 10, seed=7))
    assert not np.array_equal(chosen, balanced_subset(labels, 100, 10, seed=8))
    odd = balanced_subset(labels, 23, 10, seed=1)
    counts = np.bincount(labels[odd], minlength=10)
    assert sorted(counts.tolist()) == [2] * 7 + [3] * 3
    with pytest.raises(DataError, match="class 0"):
        balanced_subset(labels, 600, 10, seed=0)


def test_labeled_batches_come_from_the_subset_and_other_labels_are_hidden(plugins, tmp_path):
    data = synthetic(plugins, seed=5, common=DataOptions(labeled=20))
    assert np.bincount(data._splits["train"][1][data.labeled_indices], minlength=10).tolist() == [2] * 10
    labeled = take(data.train_batches(50, seed=5, labeled=True), 2)  # batches larger than the subset work
    subset_x = {tuple(r.tolist()) for r in next(data.eval_batches("train", 400)).x[torch.from_numpy(data.labeled_indices)].flatten(1)}
    for batch in labeled:
        assert (batch.y >= 0).all()
        assert {tuple(r.tolist()) for r in batch.x.flatten(1)} <= subset_x
    unlabeled = torch.cat([b.y for b in take(data.train_batches(64, seed=5), 5)])
    assert (unlabeled == -1).sum() == 320 - 20 and (unlabeled >= 0).sum() == 20
    assert np.array_equal(synthetic(plugins, seed=5, common=DataOptions(labeled=20)).labeled_indices, data.labeled_indices)

    data.write_manifest(tmp_path)
    rows = list(csv.reader((tmp_path / "labeled_indices.csv").open()))
    assert rows[0] == ["train_index", "label"] and len(rows) == 21
    assert [int(r[0]) for r in rows[1:]] == data.labeled_indices.tolist()
    facts = json.loads((tmp_path / "data.json").read_text())
    assert facts["dataset"] == "synthetic" and facts["synthetic"] is True
    assert facts["split_sizes"] == data.split_sizes and facts["labeled_per_class"] == [2] * 10


def test_unsupervised_batches_keep_labels_and_labeled_stream_needs_a_subset(plugins):
    data = synthetic(plugins)
    assert (next(data.train_batches(64, seed=0)).y >= 0).all()
    assert data.labeled_indices.size == 0
    with pytest.raises(DataError, match="labeled subset is empty"):
        data.train_batches(10, seed=0, labeled=True)


def test_validation_option(plugins):
    assert synthetic(plugins, common=DataOptions(validation=0)).split_sizes["validation"] == 0
    assert synthetic(plugins, common=DataOptions(validation=150)).split_sizes == {"train": 250, "validation": 150, "test": 100}
    with pytest.raises(DataError, match="leaves no training examples"):
        synthetic(plugins, common=DataOptions(validation=400))


def test_recipe_data_table_validates_dataset_options(plugins):
    tree = {"name": "t", "data": {"name": "synthetic", "binarize": "dynamic", "batch_size": 20, "labeled": 10}, "model": {"decoder": {"name": "x"}}}
    from gentk.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        recipe_from_dict({**tree, "data": {**tree["data"], "binarize": "dynamc"}}, plugins=plugins)
    assert "data.binarize" in str(err.value) and "dynamic" in str(err.value)
    entry = plugins.get("datasets", "synthetic")
    spec = ComponentSpec("datasets", "synthetic", entry.config(binarize="dynamic"), DataOptions(batch_size=20, labeled=10))
    data = build_data(spec, plugins, seed=0)
    assert data.binarize == "dynamic" and len(data.labeled_indices) == 10


def test_a_plugin_dataset_is_binarized_through_the_shared_image_options():
    import attrs

    from gentk.data import Arrays, ImageOptions, Loaded
    from gentk.recipe import option

    class Gray:  # a plugin's 8-bit dataset
        def __init__(self, *, root=None, download=True, offline=False, **options):
            self.options = self.Config(**options)

        def load(self):
            rng = np.random.default_rng(0)
            split = Arrays(rng.integers(0, 256, (30, 1, 4, 4), dtype=np.uint8), np.arange(30, dtype=np.int64) % 3)
            return Loaded({"train": split, "test": split}, num_classes=3, default_validation=5)

    class Shared(Gray):  # its options derive from ImageOptions
        @attrs.frozen
        class Config(ImageOptions):
            pass

    class ByName(Gray):  # it declares a binarize option of its own
        @attrs.frozen
        class Config:
            binarize: str = option("none", "binarization", choices=("none", "threshold"))

    class Plugin:
        @staticmethod
        def gentk_register_datasets(register):
            register("shared", Shared)
            register("by_name", ByName)

    plugins = load_plugins(builtin=(), plugins=[Plugin()], autoload=False)

    def build(name, **options):
        entry = plugins.get("datasets", name)
        return build_data(ComponentSpec("datasets", name, entry.config(**options), DataOptions()), plugins)

    assert build("shared").levels == 256
    data = build("shared", binarize="threshold")
    assert data.binarize == "threshold" and data.levels == 2
    assert set(np.unique(next(data.train_batches(10, seed=0)).x.numpy())) <= {0.0, 1.0}
    with pytest.raises(DataError, match="gentk.data.ImageOptions"):
        build("by_name", binarize="threshold")
