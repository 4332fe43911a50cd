"""Batches: a loaded dataset made ready for training, served as seeded, resumable batches.

    data = build_data(recipe.data, plugins, seed=recipe.seed)
    for batch in data.train_batches(100, seed=recipe.seed):     # infinite, reshuffled
        batch.x   # float32 (B, C, H, W) in [0, 1]; 8-bit data is k/255, binarized data {0, 1}
        batch.y   # int64 (B,); -1 where the label is unknown

Per run, `build_data` loads the recipe's dataset (`gentk.data.datasets`), holds out a
validation split (the end of train), binarizes if asked, picks a class-balanced labeled
subset with the run's seed, and serves batches straight from memory (no DataLoader:
workers only add overhead for in-memory arrays on CPU). Under DDP every rank walks the
same global stream of examples and keeps its slice of each batch.

On a GPU the training split can live on the device (`keep_train_split`, the recipe's
``data.on_device``): a batch is then gathered there by indexing with the epoch's order,
which reaches the device once per epoch, and binarized with noise drawn there; nothing of
a step's batch is assembled or copied on the host.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from gentk.data.datasets import ImageOptions, Loaded
from gentk.data.sources import SPLITS, Arrays
from gentk.download import DataError

ON_DEVICE_SHARE = 0.1  # data.on_device = "auto": the training split may take this share of the device's free memory
ORDER_BLOCK = 1 << 16  # examples' indices sent to a device at once: whole epochs, at least one


@attrs.define
class Batch:
    """A minibatch: ``x`` float32 (B, C, H, W) in [0, 1], ``y`` int64 (B,), -1 = unknown."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> Batch:
        return Batch(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking))

    def to_device(self, device) -> Batch:
        """The batch on `device` (itself when it is there already, as with the training split on the device)."""
        return Batch(to_device(self.x, device), to_device(self.y, device))

    def __len__(self) -> int:
        return self.x.shape[0]


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """`tensor` on `device`; to a GPU through pinned memory, without waiting: a copy from
    ordinary (pageable) memory waits until the GPU has run every kernel queued before it."""
    device = torch.device(device)
    if tensor.device.type == device.type and device.index in (None, tensor.device.index):
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# --------------------------------------------------------------------------- binarization and subsets


def static_binarize(images: np.ndarray, max_value: int, seed: int, stream: int, chunk: int = 8192) -> np.ndarray:
    """One Bernoulli draw per pixel with p = pixel / max_value, seeded by (seed, stream)."""
    rng = np.random.default_rng([seed, stream])
    out = np.empty_like(images)
    for start in range(0, images.shape[0], chunk):  # chunks keep the float noise small
        block = images[start : start + chunk]
        u = rng.random(block.shape, dtype=np.float32)
        out[start : start + chunk] = (u * max_value < block).astype(np.uint8)
    return out


def balanced_subset(labels: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """`n` indices balanced across classes, chosen with `seed`; sorted.

    Each class gets n // K examples; the n % K remaining ones go to classes picked at random.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 2718])
    counts = np.full(num_classes, n // num_classes)
    counts[rng.choice(num_classes, n % num_classes, replace=False)] += 1
    chosen = []
    for k in range(num_classes):
        pool = np.flatnonzero(labels == k)
        if pool.size < counts[k]:
            raise DataError(
                f"labeled = {n} needs {counts[k]} training examples of class {k}, but the training split has {pool.size}. Lower data.labeled."
            )
        chosen.append(rng.choice(pool, counts[k], replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _stream_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


# --------------------------------------------------------------------------- iterators


class TrainBatches(Iterator[Batch]):
    """An infinite stream of training batches: a fresh permutation each epoch, exactly resumable.

    The stream of examples is the concatenation of per-epoch permutations (seeded by
    (seed, stream, epoch)); a batch takes the next `batch_size` of them, crossing epoch
    boundaries when needed, so a labeled subset smaller than a batch still works. Under
    DDP every rank walks the same global stream and keeps its slice of each global batch:
    the union over ranks holds exactly the single-process batch's examples. Dynamic
    binarization draws the noise of this rank's slice only, from a generator of the rank's
    own: rank 0's is seeded as a single process's, so one process draws what it always
    drew, and every other rank draws a stream of its own (the noise, not the examples,
    then depends on the number of ranks).
    """

    def __init__(self, data: Data, indices: np.ndarray, batch_size: int, *, seed: int, stream: int, rank: int, world_size: int):
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1, got {batch_size}.")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}.")
        if batch_size % world_size:
            raise DataError(f"the global batch size {batch_size} does not split evenly across {world_size} ranks; choose a multiple of {world_size}.")
        if len(indices) == 0:
            raise DataError("no training examples to draw from (the labeled subset is empty: set data.labeled > 0 for labeled batches).")
        self.data, self.indices, self.batch_size = data, indices, batch_size
        self.seed, self.stream, self.rank, self.world_size = seed, stream, rank, world_size
        self.epoch, self.position = 0, 0
        self.device = data.train_device  # None: the training split is in host memory
        noise_key = (seed, stream, 31337) if rank == 0 else (seed, stream, 31337, rank)
        # the noise is drawn where the data lives
        self.generator = torch.Generator(device=self.device or "cpu").manual_seed(_stream_seed(*noise_key))
        # the order of the epochs [first, first + epochs): one epoch in host memory; on a device as many as fit in
        # ORDER_BLOCK, so that a labeled subset of one batch does not send its next order every step
        self._epochs = 1 if self.device is None else max(1, ORDER_BLOCK // len(indices))
        self._first, self._orders = 0, None

    def _epoch_order(self) -> np.ndarray | torch.Tensor:
        """This epoch's examples in the order they are served: on the data's device when it holds the training split."""
        n = len(self.indices)
        if self._orders is None or not self._first <= self.epoch < self._first + self._epochs:
            epochs = range(self.epoch, self.epoch + self._epochs)
            orders = np.concatenate([self.indices[np.random.default_rng([self.seed, self.stream, e]).permutation(n)] for e in epochs])
            self._orders = orders if self.device is None else to_device(torch.from_numpy(orders), self.device)
            self._first = self.epoch
        start = (self.epoch - self._first) * n
        return self._orders[start : start + n]

    def __next__(self) -> Batch:
        parts, need = [], self.batch_size
        while need:
            order = self._epoch_order()
            take = min(need, len(order) - self.position)
            parts.append(order[self.position : self.position + take])
            self.position += take
            need -= take
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
        rows = (np.concatenate if self.device is None else torch.cat)(parts)
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        noise = None
        if self.data.binarize == "dynamic":
            noise = torch.rand((share, *self.data.image_shape), generator=self.generator, device=self.generator.device)
        return self.data.train_batch(rows[mine], noise)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "generator": self.generator.get_state(),
            "noise_device": self.generator.device.type,
            "seed": self.seed,
            "stream": self.stream,
            "examples": len(self.indices),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = {"seed": self.seed, "stream": self.stream, "examples": len(self.indices), "batch_size": self.batch_size}
        for key, value in mine.items():
            if state[key] != value:
                raise DataError(
                    f"cannot resume the batch stream: the checkpoint's {key} is {state[key]} but this run's is {value}. "
                    "Resume with the same recipe (seed, data.batch_size, data.labeled, data.validation)."
                )
        saved = state.get("noise_device", "cpu")  # checkpoints from before data.on_device drew on the CPU
        if saved == self.generator.device.type:
            self.generator.set_state(state["generator"])
        elif self.data.binarize == "dynamic":  # without it the generator draws nothing: any device continues the stream
            keep = "true" if saved != "cpu" else "false"
            raise DataError(
                f"cannot resume the batch stream: the checkpoint drew its binarization noise on {saved} but this run keeps the training split "
                f"on {self.generator.device.type}, whose generator cannot continue it. Resume with --set data.on_device={keep}."
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# --------------------------------------------------------------------------- the built dataset


class Data:
    """A dataset ready for training: splits in memory, a labeled subset, batch iterators."""

    def __init__(
        self,
        name: str,
        loaded: Loaded,
        *,
        validation: int | None,
        labeled: int,
        seed: int,
        binarize: str,
        threshold: float,
        binarize_seed: int,
        options: Mapping[str, Any],
    ):
        self.name = name
        self.num_classes = loaded.num_classes
        self.binarize = binarize
        self.facts = dict(loaded.facts)
        splits = dict(loaded.splits)
        if "validation" in splits and validation is not None:
            raise DataError(f"dataset '{name}' brings its own validation split, so data.validation must not be set (it is {validation}).")
        if "validation" not in splits:
            splits["train"], splits["validation"] = _hold_out(name, splits["train"], loaded.default_validation if validation is None else validation)
        first = splits["train"].images
        self.image_shape = tuple(int(d) for d in first.shape[1:])
        for split, arrays in splits.items():
            if tuple(arrays.images.shape[1:]) != self.image_shape:
                raise DataError(
                    f"dataset '{name}': {split} images are {arrays.images.shape[1:]} but train images are {self.image_shape}; all splits must "
                    "share one shape."
                )
        self.split_sizes = {s: len(splits[s]) if s in splits else 0 for s in SPLITS}

        # Pixels as served: uint8 `levels` divided by `scale` (255 or max_value, or 1 once binary).
        self._max_value = loaded.max_value
        self._splits = {}
        for index, split in enumerate(SPLITS):
            arrays = splits.get(split, Arrays(np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int64)))
            self._splits[split] = self._represent(arrays, split, index, binarize, threshold, binarize_seed)
        self._train_source = splits["train"]  # dynamic binarization draws from the 8-bit levels

        self.labeled_indices = balanced_subset(splits["train"].labels, labeled, self.num_classes, seed) if labeled else np.zeros(0, np.int64)
        train_labels = splits["train"].labels
        if labeled:
            # In a semi-supervised run, labels outside the labeled subset are unknown.
            visible = np.full_like(train_labels, -1)
            visible[self.labeled_indices] = train_labels[self.labeled_indices]
            train_labels = visible
        self._train_labels = train_labels
        self.train_device: torch.device | None = None  # where `keep_train_on` put the training split (None: host memory)
        self._device_train: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.seed = seed
        self._binarize_seed = binarize_seed
        self.options = dict(options)
        # Distinct pixel values a batch can hold: 2 for binarized data (a Bernoulli
        # likelihood fits), else max_value + 1 (256 for 8-bit data: x * 255 is an integer).
        self.levels = 2 if binarize != "none" or loaded.max_value == 1 else loaded.max_value + 1

    def _represent(self, arrays: Arrays, split: str, index: int, binarize: str, threshold: float, binarize_seed: int):
        levels, scale = arrays.images, self._max_value
        if binarize == "threshold":
            levels, scale = (levels > threshold * self._max_value).astype(np.uint8), 1
        elif binarize == "static" or (binarize == "dynamic" and split != "train"):
            levels, scale = static_binarize(levels, self._max_value, binarize_seed, index), 1
        return levels, arrays.labels, scale

    # -- the training split on a device

    @property
    def train_nbytes(self) -> int:
        """Bytes the training split takes on a device: its uint8 levels and int64 labels."""
        return self._splits["train"][0].nbytes + self._train_labels.nbytes

    def keep_train_on(self, device) -> None:
        """Keep the training split on `device`: the batch iterators made afterwards gather their batches there."""
        levels, _, scale = self._splits["train"]
        device = torch.device(device)
        self._device_train = (torch.tensor(levels, device=device), torch.tensor(self._train_labels, device=device), scale)
        self.train_device = device

    # -- batches

    def train_batch(self, rows: np.ndarray | torch.Tensor, noise: torch.Tensor | None) -> Batch:
        """The training examples at `rows` as a batch; `noise` (uniform, the batch's shape) binarizes it dynamically.

        `rows` is a tensor on the device that holds the training split (`keep_train_on`), else an array.
        """
        if torch.is_tensor(rows):
            levels, labels, scale = self._device_train
            x, y = levels[rows].to(torch.float32) / scale, labels[rows]
        else:
            levels, _, scale = self._splits["train"]
            # Gather with NumPy: torch's indexing kernels spread tiny gathers over threads,
            # which on a loaded CPU made a 100-image MNIST batch 100x slower (27 ms vs 0.2 ms).
            x, y = torch.from_numpy(_to_unit(levels[rows], scale)), torch.from_numpy(self._train_labels[rows])
        if noise is not None:  # dynamic binarization: pixel is on with probability x
            x = (noise < x).to(torch.float32)
        return Batch(x, y)

    def train_batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, labeled: bool = False) -> TrainBatches:
        """An infinite iterator of training batches (global `batch_size`, this rank's share).

        labeled=True draws from the labeled subset only (a separate, separately seeded stream).
        """
        if labeled:
            return TrainBatches(self, self.labeled_indices, batch_size, seed=seed, stream=1, rank=rank, world_size=world_size)
        indices = np.arange(self.split_sizes["train"], dtype=np.int64)
        return TrainBatches(self, indices, batch_size, seed=seed, stream=0, rank=rank, world_size=world_size)

    def eval_batches(self, split: str, batch_size: int, *, max_examples: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Batches of a split in order (finite, deterministic); each rank gets a contiguous chunk.

        Under dynamic binarization, every split served here is a fixed seeded binarization.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}.")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"eval_batches needs batch_size >= 1 and 0 <= rank < world_size; got {batch_size}, {rank}, {world_size}.")
        levels, labels, scale = self._splits[split]
        if split == "train" and self.binarize == "dynamic":
            levels, scale = self._static_train(), 1
        n = levels.shape[0] if max_examples is None else min(max_examples, levels.shape[0])
        mine = np.array_split(np.arange(n), world_size)[rank]
        lo, hi = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)

        def batches() -> Iterator[Batch]:
            for start in range(lo, hi, batch_size):
                stop = min(start + batch_size, hi)
                yield Batch(torch.from_numpy(_to_unit(levels[start:stop], scale)), torch.from_numpy(labels[start:stop].copy()))

        return batches()

    def _static_train(self) -> np.ndarray:
        if not hasattr(self, "_static_train_levels"):
            self._static_train_levels = static_binarize(self._train_source.images, self._max_value, self._binarize_seed, 0)
        return self._static_train_levels

    # -- provenance

    def manifest(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "options": self.options,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "split_sizes": self.split_sizes,
            "binarize": self.binarize,
            "labeled": int(len(self.labeled_indices)),
            "labeled_seed": self.seed,
            "labeled_per_class": np.bincount(self._splits["train"][1][self.labeled_indices], minlength=self.num_classes).tolist()
            if len(self.labeled_indices)
            else [],
            **self.facts,
        }

    def write_manifest(self, run_dir: str | os.PathLike) -> Path:
        """Write ``data.json`` (facts, checksums, sizes) and ``labeled_indices.csv`` into `run_dir`."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data.json").write_text(json.dumps(self.manifest(), indent=2, default=str) + "\n")
        labels = self._splits["train"][1]
        with (run_dir / "labeled_indices.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["train_index", "label"])
            for i in self.labeled_indices:
                writer.writerow([int(i), int(labels[i])])
        return run_dir / "data.json"


def keep_train_split(data, choice: str | bool, device) -> bool:
    """Whether `data` serves its training batches from `device` (``data.on_device``); if so, put the split there.

    "auto" keeps it on a GPU (CUDA or MPS) when it takes at most `ON_DEVICE_SHARE` of the
    device's free memory, and never on a CPU, where the host path gathers faster
    (`Data.train_batch`); true and false decide, true on a CPU too (the same batches, by
    torch indexing). A data object without `keep_train_on` stays where it is.
    """
    device = torch.device(device)
    if choice == "auto":
        if device.type not in ("cuda", "mps") or not hasattr(data, "keep_train_on"):
            return False
        choice = data.train_nbytes <= ON_DEVICE_SHARE * free_memory(device)
    if choice is True and not hasattr(data, "keep_train_on"):
        raise DataError(f"data.on_device = true, but this data object ({type(data).__name__}) cannot keep its training split on a device.")
    if choice:
        data.keep_train_on(device)
    return bool(choice)


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA or MPS device (0 where this torch cannot tell)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if not hasattr(torch.mps, "recommended_max_memory"):  # an older torch
        return 0
    return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()


def evaluation_split(data) -> str:
    """The split a run's evaluations use: "validation" when it has examples, else "test"."""
    return "validation" if data.split_sizes.get("validation", 0) > 0 else "test"


def check_held_out(data, metrics: Sequence[str]) -> None:
    """Refuse data without validation or test examples, before a run trains on it.

    Every evaluation (each ``eval.every`` steps and at the end) computes the held-out
    losses and `metrics` on the split `evaluation_split` names; without examples there the
    first evaluation would fail, after the training up to it.
    """
    if data.split_sizes.get(evaluation_split(data), 0) > 0:
        return
    file = getattr(data, "facts", {}).get("file")
    computed = "the held-out losses" + (f" and the metric{'s' if len(metrics) > 1 else ''} {', '.join(metrics)}" if metrics else "")
    raise DataError(
        f"dataset '{data.name}'{f' ({file})' if file else ''} has only a train split ({data.split_sizes.get('train', 0)} examples), "
        f"but every evaluation (each eval.every steps and at the end of the run) computes {computed} on validation or test examples. "
        "Give it a test split (npz: test_images and test_labels; HDF5: /test/images and /test/labels), "
        "or hold out the end of the training split with data.validation = N (--set data.validation=1000)."
    )


def _to_unit(levels: np.ndarray, scale: int) -> np.ndarray:
    """uint8 levels -> float32 in [0, 1] (a fresh array: batches never alias the dataset)."""
    return levels.astype(np.float32) / np.float32(scale)


def _hold_out(name: str, train: Arrays, count: int) -> tuple[Arrays, Arrays]:
    """Split the last `count` training examples off as validation."""
    if count >= len(train):
        raise DataError(f"dataset '{name}': data.validation = {count} leaves no training examples (train has {len(train)}). Lower data.validation.")
    cut = len(train) - count
    return Arrays(train.images[:cut], train.labels[:cut]), Arrays(train.images[cut:], train.labels[cut:])


def build_data(spec, plugins, *, seed: int = 0, offline: bool = False) -> Data:
    """Build the dataset a recipe's ``[data]`` table names (a `ComponentSpec`)."""
    from gentk.recipe import DataOptions

    common = spec.common if spec.common is not None else DataOptions()
    entry = plugins.registries["datasets"].get(spec.name)
    source = entry.build(spec.config, root=common.root, download=common.download, offline=offline)
    loaded = source.load()
    opts = getattr(source, "options", None)
    options = attrs.asdict(opts) if opts is not None and attrs.has(type(opts)) else {}
    if isinstance(opts, ImageOptions):
        image = opts
    elif "binarize" in options:
        raise DataError(
            f"dataset '{spec.name}' declares its own `binarize` option, which gentk does not apply: derive its options class from "
            "gentk.data.ImageOptions (binarize, threshold, binarize_seed) instead of declaring them by name."
        )
    else:
        image = ImageOptions()  # not binarized
    return Data(
        spec.name,
        loaded,
        validation=common.validation,
        labeled=common.labeled,
        seed=seed,
        binarize=image.binarize,
        threshold=image.threshold,
        binarize_seed=image.binarize_seed,
        options=options,
    )
