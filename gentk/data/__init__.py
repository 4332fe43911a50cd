"""Data: datasets turned into seeded, resumable batches of images in [0, 1].

The PixelGAN autoencoder paper (Makhzani & Frey, NIPS 2017) runs on MNIST (binarized for
likelihoods), SVHN and NORB; its semi-supervised results use a few labeled examples per
class. One idea a module:

- `gentk.data.sources`: published file formats, the HDF5 cache they are converted into
  (`FileSet`), one split in memory (`Arrays`); finding and downloading the files with
  checksums is `gentk.download`'s;
- `gentk.data.datasets`: one class per dataset (MNIST, binarized MNIST, Fashion-MNIST,
  SVHN, smallNORB, the user's npz / hdf5 files, synthetic), the options that image
  datasets share (`ImageOptions`), their registration through ``gentk_register_datasets``
  like any plugin's, and ``gentk data list / prepare``;
- `gentk.data.batches`: `Batch`, the built dataset (`Data`: validation hold-out,
  binarization, labeled subset), its iterators and `build_data`.

    data = build_data(recipe.data, plugins, seed=recipe.seed)
    for batch in data.train_batches(100, seed=recipe.seed):     # infinite, reshuffled
        batch.x   # float32 (B, C, H, W) in [0, 1]; 8-bit data is k/255, binarized data {0, 1}
        batch.y   # int64 (B,); -1 where the label is unknown

Every name below is importable from `gentk.data` itself; see docs/data.md.
"""

from __future__ import annotations

from gentk.data.batches import (
    ON_DEVICE_SHARE,
    Batch,
    Data,
    TrainBatches,
    balanced_subset,
    build_data,
    check_held_out,
    evaluation_split,
    keep_train_split,
    static_binarize,
)
from gentk.data.datasets import (
    BINARIZE,
    FASHION_SOURCES,
    FASHION_SYSTEM_DIR,
    HDF5,
    MNIST,
    MNIST_SOURCES,
    NPZ,
    SVHN,
    ArrayFileOptions,
    BinarizedMNIST,
    BinarizedMNISTOptions,
    FashionMNIST,
    ImageOptions,
    Loaded,
    PublishedOptions,
    SmallNORB,
    SmallNORBOptions,
    SVHNOptions,
    Synthetic,
    SyntheticOptions,
    describe_datasets,
    downsample,
    prepare_dataset,
)
from gentk.data.sources import (
    FORMAT_VERSION,
    SPLITS,
    Arrays,
    FileSet,
    StaleCache,
    cache_state,
    read_cache,
    read_idx,
    read_norb,
    read_svhn,
    write_cache,
)

__all__ = [
    "BINARIZE",
    "FASHION_SOURCES",
    "FASHION_SYSTEM_DIR",
    "FORMAT_VERSION",
    "HDF5",
    "MNIST",
    "MNIST_SOURCES",
    "NPZ",
    "ON_DEVICE_SHARE",
    "SPLITS",
    "SVHN",
    "ArrayFileOptions",
    "Arrays",
    "Batch",
    "BinarizedMNIST",
    "BinarizedMNISTOptions",
    "Data",
    "FashionMNIST",
    "FileSet",
    "ImageOptions",
    "Loaded",
    "PublishedOptions",
    "SVHNOptions",
    "SmallNORB",
    "SmallNORBOptions",
    "StaleCache",
    "Synthetic",
    "SyntheticOptions",
    "TrainBatches",
    "balanced_subset",
    "build_data",
    "cache_state",
    "check_held_out",
    "describe_datasets",
    "downsample",
    "evaluation_split",
    "keep_train_split",
    "prepare_dataset",
    "read_cache",
    "read_idx",
    "read_norb",
    "read_svhn",
    "static_binarize",
    "write_cache",
]
