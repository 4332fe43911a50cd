"""Datasets: MNIST (plain and binarized), Fashion-MNIST, SVHN, smallNORB, the user's own
arrays and a tiny synthetic set, served as seeded, resumable batches.

The PixelGAN autoencoder paper (Makhzani & Frey, NIPS 2017) runs on MNIST (binarized for
likelihoods), SVHN and NORB; its semi-supervised results use a few labeled examples per
class. This module turns each dataset into in-memory uint8 arrays and serves them:

    data = build_data(recipe.data, plugins, seed=recipe.seed)
    for batch in data.train_batches(100, seed=recipe.seed):     # infinite, reshuffled
        batch.x   # float32 (B, C, H, W) in [0, 1]; 8-bit data is k/255, binarized data {0, 1}
        batch.y   # int64 (B,); -1 where the label is unknown

Pipeline, once per dataset: find the source files (`gentk.download`: data.root, else
$GENTK_DATA, else the user cache; downloaded with checksums when allowed) -> verify their
checksums -> convert them into one HDF5 file in the cache root (a group per split with
uint8 ``images`` (N, C, H, W) and int64 ``labels``; attributes: the source files'
sha256 and a format version). Later loads read the HDF5; a cache that is damaged, of an
older format or built from other source files is rebuilt, never used.

Then, per run: hold out a validation split (the end of train), binarize if asked, pick a
class-balanced labeled subset with the run's seed, and serve batches straight from memory
(no DataLoader: workers only add overhead for in-memory arrays on CPU).

Datasets are registered through ``gentk_register_datasets`` like any plugin's. A dataset
factory is called as ``factory(**options, root=..., download=..., offline=...)`` and
returns an object whose ``load()`` gives a `Loaded`; see docs/data.md.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import filelock
import h5py
import numpy as np
import torch
from einops import rearrange, reduce

from gentk.download import (
    Checksum,
    CorruptFileError,
    DataError,
    SourceFile,
    cache_root,
    content_digests,
    data_root,
    ensure_files,
    open_source,
    read_content,
    verify,
)
from gentk.plugins import hookimpl
from gentk.recipe import REQUIRED, option

log = logging.getLogger("gentk.data")

FORMAT_VERSION = 1  # of the HDF5 cache; bump when the layout or a conversion changes
SPLITS = ("train", "validation", "test")
BINARIZE = ("none", "dynamic", "static", "threshold")


# --------------------------------------------------------------------------- batches


@attrs.define
class Batch:
    """A minibatch: ``x`` float32 (B, C, H, W) in [0, 1], ``y`` int64 (B,), -1 = unknown."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> Batch:
        return Batch(self.x.to(device, non_blocking=non_blocking), self.y.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.x.shape[0]


# --------------------------------------------------------------------------- what a dataset loads


@attrs.frozen
class Arrays:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,), -1 where unknown."""

    images: np.ndarray
    labels: np.ndarray

    def __attrs_post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be a uint8 array (N, C, H, W); got {self.images.dtype} {self.images.shape}.")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"labels must have shape ({self.images.shape[0]},) to match the images; got {self.labels.shape}.")

    def __len__(self) -> int:
        return self.images.shape[0]


@attrs.frozen
class Loaded:
    """A dataset in memory, as a dataset factory's ``load()`` returns it.

    splits: "train" and "test" (and "validation" when the source defines one).
    max_value: the pixel value of white: 255 for 8-bit images, 1 for images already binary.
    default_validation: examples held out of the end of train when the recipe does not say.
    facts: JSON-ready provenance (source files and their sha256, the cache file, ...).
    """

    splits: dict[str, Arrays]
    num_classes: int
    max_value: int = 255
    default_validation: int = 0
    facts: dict[str, Any] = attrs.Factory(dict)


# --------------------------------------------------------------------------- file formats


def read_idx(path: Path, *, images: bool) -> np.ndarray:
    """Read an MNIST IDX file (``.gz`` or not): uint8 images (N, 1, H, W) or labels (N,).

    Layout (big-endian): magic 0x00000803 (ubyte, 3 dims) or 0x00000801 (1 dim), the dims
    as int32, then the bytes. A short payload is a truncated file, not a smaller dataset.
    """
    raw = read_content(path)
    ndim = 3 if images else 1
    expected_magic = 0x800 + ndim
    if len(raw) < 4 + 4 * ndim:
        raise CorruptFileError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated. Delete it and download it again.")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic != expected_magic:
        what = "images (magic 2051)" if images else "labels (magic 2049)"
        raise CorruptFileError(f"{path}: not an IDX file of {what}: its magic number is {magic}. Check that the file is the right one (images vs labels) and not damaged.")
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise CorruptFileError(
            f"{path}: the header announces {'x'.join(map(str, dims))} = {int(np.prod(dims))} bytes of data but the file holds {payload.size}; "
            "it is truncated or damaged. Delete it and download it again."
        )
    if images:
        return rearrange(payload, "(n h w) -> n 1 h w", h=dims[1], w=dims[2]).copy()
    return payload.astype(np.int64)


_NORB_TYPES = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32}  # byte matrix, integer matrix


def read_norb(path: Path) -> np.ndarray:
    """Read a smallNORB binary matrix (``.mat``, ``.gz`` or not; LeCun's format, not MATLAB).

    Layout (little-endian int32): a type magic (0x1E3D4C55 bytes, 0x1E3D4C54 int32), the
    number of dims n, then max(n, 3) dims (unused ones are 1), then the data.
    """
    raw = read_content(path)
    if len(raw) < 20:
        raise CorruptFileError(f"{path}: {len(raw)} bytes is too short for a smallNORB header; the file is truncated. Delete it and download it again.")
    magic, ndim = struct.unpack("<ii", raw[:8])
    magic &= 0xFFFFFFFF
    if magic not in _NORB_TYPES or not 1 <= ndim <= 8:
        raise CorruptFileError(f"{path}: not a smallNORB binary matrix (magic {magic:#x}, {ndim} dims). Check that it is the right file and not damaged.")
    stored = max(ndim, 3)
    dims = struct.unpack(f"<{stored}i", raw[8 : 8 + 4 * stored])[:ndim]
    dtype = np.dtype(_NORB_TYPES[magic]).newbyteorder("<")
    offset = 8 + 4 * stored
    count = int(np.prod(dims))
    if len(raw) - offset != count * dtype.itemsize:
        raise CorruptFileError(
            f"{path}: the header announces {'x'.join(map(str, dims))} values ({count * dtype.itemsize} bytes) but the file holds {len(raw) - offset} bytes; "
            "it is truncated or damaged. Delete it and download it again."
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset, count=count).reshape(dims).copy()


def read_svhn(path: Path) -> Arrays:
    """Read an SVHN cropped-digits ``.mat`` (MATLAB version 5): X (32, 32, 3, N), y (N, 1).

    SVHN labels digit 0 as 10; it is mapped to 0, as is standard.
    """
    try:
        import scipy.io
    except ImportError:
        raise DataError("reading SVHN's .mat files needs scipy: pip install 'gentk[svhn]' (or pip install scipy).") from None
    try:
        with open_source(path) as f:  # a .gz copy is read through gzip
            mat = scipy.io.loadmat(f)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError... for damaged files
        raise CorruptFileError(f"{path}: cannot be read as a MATLAB v5 .mat file ({type(exc).__name__}: {exc}); it is truncated or damaged. Delete it and download it again.") from None
    if "X" not in mat or "y" not in mat:
        raise CorruptFileError(f"{path}: expected variables X and y (SVHN's format), found {sorted(k for k in mat if not k.startswith('__'))}.")
    x, y = mat["X"], mat["y"].reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise CorruptFileError(f"{path}: X has shape {x.shape} and y {mat['y'].shape}; SVHN's are (32, 32, 3, N) and (N, 1).")
    images = np.ascontiguousarray(rearrange(x, "h w c n -> n c h w")).astype(np.uint8)
    labels = y.astype(np.int64) % 10  # 10 -> 0
    return Arrays(images, labels)


# --------------------------------------------------------------------------- the HDF5 cache


def write_cache(path: Path, splits: Mapping[str, Arrays], attributes: Mapping[str, Any]) -> None:
    """Write splits to an HDF5 file atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with h5py.File(tmp, "w") as f:
            for name, arrays in splits.items():
                group = f.create_group(name)
                group.create_dataset("images", data=arrays.images, chunks=True)
                group.create_dataset("labels", data=arrays.labels.astype(np.int64))
                group.attrs["count"] = len(arrays)
            for key, value in attributes.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["complete"] = True  # written last: a file without it was cut short
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StaleCache(Exception):
    """Internal: a cache that must be rebuilt, with the reason."""


def read_cache(path: Path) -> tuple[dict[str, Arrays], dict[str, Any]]:
    """Read every split of a cache file; raise `StaleCache` when it is damaged or outdated."""
    try:
        with h5py.File(path, "r") as f:
            meta = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "{[" else v) for k, v in f.attrs.items()}
            if meta.get("format_version") != FORMAT_VERSION:
                raise StaleCache(f"format version {meta.get('format_version')} (this gentk writes {FORMAT_VERSION})")
            if not meta.get("complete"):
                raise StaleCache("it was not completely written")
            splits = {}
            for name, group in f.items():
                images, labels = group["images"][()], group["labels"][()]
                if images.shape[0] != group.attrs["count"] or labels.shape != (group.attrs["count"],):
                    raise StaleCache(f"split '{name}' holds {images.shape[0]} images and {labels.shape[0]} labels, not {group.attrs['count']}")
                splits[name] = Arrays(images.astype(np.uint8, copy=False), labels.astype(np.int64, copy=False))
    except StaleCache:
        raise
    except (OSError, KeyError, ValueError, DataError) as exc:
        raise StaleCache(f"it cannot be read ({type(exc).__name__}: {exc})") from None
    return splits, meta


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_state(path: Path, sources: Mapping[str, Path | None]) -> str:
    """'valid', 'absent', or why it would be rebuilt; compares fingerprints only (cheap)."""
    if not path.is_file():
        return "absent"
    try:
        with h5py.File(path, "r") as f:
            meta = {k: v for k, v in f.attrs.items()}
    except OSError as exc:
        return f"damaged ({exc})"
    if meta.get("format_version") != FORMAT_VERSION or not meta.get("complete"):
        return "stale (old format or incomplete)"
    stored = json.loads(meta.get("sources", "{}"))
    for name, located in sources.items():
        if located is not None and (name not in stored or stored[name]["fingerprint"] != _fingerprint(located)):
            return "to re-check (source files changed or moved)"
    return "valid"


@attrs.frozen
class FileSet:
    """A dataset made of published source files, converted once into an HDF5 cache.

    convert: maps {source name: path} to {split: Arrays}.
    """

    dataset: str  # the registered name, for messages
    cache_name: str  # file stem in the cache root (variants of a dataset get their own)
    sources: tuple[SourceFile, ...]
    directories: tuple[Path, ...]  # where to look, in order; the first is the download target
    convert: Any
    verify: bool = True

    @property
    def cache_path(self) -> Path:
        return cache_root() / f"{self.cache_name}.h5"

    def locate(self) -> dict[str, Path | None]:
        return {s.name: s.locate(self.directories) for s in self.sources}

    def load(self, *, download: bool, offline: bool) -> tuple[dict[str, Arrays], dict[str, Any]]:
        """The splits, from the cache when it is valid for the source files, else rebuilt."""
        path = self.cache_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the cache directory {path.parent} ({exc}). Set GENTK_CACHE to a writable directory.") from None
        if not os.access(path.parent, os.W_OK):
            raise DataError(f"the cache directory {path.parent} is not writable. Set GENTK_CACHE to a writable directory (the data files themselves may stay read-only).")
        with filelock.FileLock(str(path) + ".lock"):  # one rank converts, the others wait
            located = self.locate()
            if path.is_file():
                try:
                    splits, meta = read_cache(path)
                    self._check_sources(meta, located)
                    return splits, meta
                except StaleCache as exc:
                    log.warning("rebuilding the cache %s of dataset '%s': %s", path, self.dataset, exc)
            return self._rebuild(path, download=download, offline=offline)

    def _check_sources(self, meta: Mapping[str, Any], located: Mapping[str, Path | None]) -> None:
        stored = meta.get("sources", {})
        if self.verify and not meta.get("verified", False):
            raise StaleCache("it was built from unverified files and checksums are now required")
        for s in self.sources:
            if s.name not in stored:
                raise StaleCache(f"it was not built from {s.name}")
            found = located[s.name]
            if found is None:
                continue  # the source was removed after conversion: the cache stands alone
            if stored[s.name]["fingerprint"] == _fingerprint(found):
                continue
            digest = content_digests(found)["sha256"]  # moved or touched: compare the content
            if digest != stored[s.name]["sha256"]:
                raise StaleCache(f"{found} has changed since the cache was built (sha256 {digest}, was {stored[s.name]['sha256']})")

    def _rebuild(self, path: Path, *, download: bool, offline: bool) -> tuple[dict[str, Arrays], dict[str, Any]]:
        files = ensure_files(self.dataset, self.sources, self.directories, self.directories[0], download=download, offline=offline)
        sources = {}
        for s in self.sources:
            digest = verify(files[s.name], s) if self.verify else content_digests(files[s.name])["sha256"]
            sources[s.name] = {"sha256": digest, "fingerprint": _fingerprint(files[s.name])}
        splits = self.convert(files)
        write_cache(path, splits, {"dataset": self.dataset, "sources": sources, "verified": self.verify})
        return read_cache(path)


# --------------------------------------------------------------------------- published datasets

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
# sha256 of the decompressed IDX files: computed here from the CI copies and identical to
# the values published with many MNIST loaders (their .gz md5s are LeCun's f68b3c2d..., ...).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/")
# sha256 and md5 of the decompressed files: computed here from Debian's dataset-fashion-mnist
# and equal to published values; Zalando's README gives the .gz md5s (8d4fb7e6..., ...).
_FASHION_SUMS = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", "9018921c3c673c538a1fc5bad174d6f9"),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", "8181f5470baa50b63fa0f6fddb340f0a"),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", "15d484375f8d13e6eb1aabb0c3f46965"),
}
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
# md5 of the .mat files as published with torchvision's SVHN loader (the files are not compressed).
_SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3", "extra": "a93ce644f1a588dc4d68dda5feec44a7"}
_NORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
# md5 of the decompressed .mat files as published with public smallNORB loaders (their
# .gz md5s: training-dat 66054832..., training-cat 23c8b861..., testing-dat e4ad7156...,
# testing-cat 5aa791cd...). The two -cat files have equal content: same category order.
_NORB_FILES = {
    "train_dat": ("smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat", "8138a0902307b32dfa0025a36dfa45ec"),
    "train_cat": ("smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat", "fd5120d3f770ad57ebe620eb61a0b633"),
    "test_dat": ("smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat", "e9920b7f7b2869a8f1a12e945b2c166c"),
    "test_cat": ("smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat", "fd5120d3f770ad57ebe620eb61a0b633"),
}


def _idx_sources(names: Mapping[str, tuple[Checksum, ...]], mirrors: tuple[str, ...], note: str) -> tuple[SourceFile, ...]:
    return tuple(SourceFile(n, tuple(m + n + ".gz" for m in mirrors), sums, note=note) for n, sums in names.items())


MNIST_SOURCES = _idx_sources({n: (Checksum("sha256", d),) for n, d in _MNIST_SHA256.items()}, _MNIST_MIRRORS, "sha256 of the decompressed IDX file")
FASHION_SOURCES = _idx_sources({n: (Checksum("sha256", s), Checksum("md5", m)) for n, (s, m) in _FASHION_SUMS.items()}, _FASHION_MIRRORS, "digests of the decompressed IDX file")


def _convert_idx(files: Mapping[str, Path]) -> dict[str, Arrays]:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path, label_path = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
        images, labels = read_idx(image_path, images=True), read_idx(label_path, images=False)
        _check_counts(f"{image_path} and {label_path}", images, labels)
        out[split] = Arrays(images, labels)
    return out


def _check_counts(path_hint: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.shape[0] != labels.shape[0]:
        raise CorruptFileError(f"{path_hint}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together. Replace them with matching files.")


@attrs.frozen
class ImageOptions:
    """Binarization options of grayscale datasets."""

    binarize: Literal["none", "dynamic", "static", "threshold"] = option(
        "none",
        "none (8-bit, k/255), dynamic (a fresh Bernoulli draw per training batch), static (one seeded draw, used for every split), threshold",
        choices=BINARIZE,
    )
    threshold: float = option(0.5, "pixels above this intensity become 1 (binarize = \"threshold\")", gt=0.0, lt=1.0)
    binarize_seed: int = option(0, "seed of the static binarization (and of the evaluation splits under dynamic); fixed so likelihoods are comparable across runs", ge=0)


@attrs.frozen
class PublishedOptions(ImageOptions):
    verify: bool = option(True, "check source files against the published checksums (false: accept other files under these names; their sha256 is still recorded)")


class _Published:
    """Shared by the datasets read from published files: locations, cache, status."""

    dir_names: tuple[str, ...] = ()
    system_dirs: tuple[Path, ...] = ()

    def __init__(self, *, root=None, download: bool = True, offline: bool = False, **options):
        self.options = self.Config(**options)
        self.root = data_root(root)
        self.download = download
        self.offline = offline

    def directories(self) -> tuple[Path, ...]:
        return tuple(self.root / d for d in self.dir_names) + self.system_dirs

    def status(self) -> tuple[str, str]:
        fs = self.fileset()
        located = fs.locate()
        present = [p for p in located.values() if p is not None]
        if len(present) == len(located):
            where = ", ".join(sorted({str(p.parent) for p in present}))
        elif present:
            where = f"incomplete: {len(present)} of {len(located)} files in {fs.directories[0]}"
        else:
            where = f"missing (expected in {fs.directories[0]})"
        return where, f"{cache_state(fs.cache_path, located)} ({fs.cache_path})"

    def _load(self, num_classes: int, default_validation: int) -> Loaded:
        fs = self.fileset()
        splits, meta = fs.load(download=self.download, offline=self.offline)
        facts = {"sources": {k: v["sha256"] for k, v in meta["sources"].items()}, "cache": str(fs.cache_path), "checksums_verified": bool(meta.get("verified"))}
        return Loaded(splits, num_classes, 255, default_validation, facts)


class MNIST(_Published):
    """MNIST handwritten digits (LeCun et al. 1998): 28x28 grayscale, 60000 train / 10000 test."""

    Config = PublishedOptions
    dir_names = ("mnist", "MNIST")
    image_shape = (1, 28, 28)  # known without reading a file: `gentk check` needs no data

    def fileset(self) -> FileSet:
        return FileSet("mnist", "mnist", MNIST_SOURCES, self.directories(), _convert_idx, self.options.verify)

    def load(self) -> Loaded:
        return self._load(10, 10000)


@attrs.frozen
class BinarizedMNISTOptions(PublishedOptions):
    binarize: Literal["none", "dynamic", "static", "threshold"] = option("static", "how pixels become {0, 1}: static (one seeded draw), dynamic (a fresh draw per batch), threshold", choices=BINARIZE)


class BinarizedMNIST(MNIST):
    """MNIST binarized by a seeded Bernoulli draw (gentk's own; not the Larochelle file)."""

    Config = BinarizedMNISTOptions


class FashionMNIST(_Published):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale clothing, 10 classes, 60000 / 10000."""

    Config = PublishedOptions
    dir_names = ("fashion_mnist", "fashion-mnist")
    image_shape = (1, 28, 28)
    system_dirs = (FASHION_SYSTEM_DIR,)

    def fileset(self) -> FileSet:
        return FileSet("fashion_mnist", "fashion_mnist", FASHION_SOURCES, self.directories(), _convert_idx, self.options.verify)

    def load(self) -> Loaded:
        return self._load(10, 10000)


@attrs.frozen
class SVHNOptions:
    extra: bool = option(False, "add the 531131 'extra' images to train")
    verify: bool = option(True, "check source files against the published checksums")


class SVHN(_Published):
    """SVHN cropped digits (Netzer et al. 2011): 32x32 RGB, 73257 train / 26032 test (+ extra)."""

    Config = SVHNOptions
    dir_names = ("svhn", "SVHN")
    image_shape = (3, 32, 32)

    def fileset(self) -> FileSet:
        splits = ("train", "test", "extra") if self.options.extra else ("train", "test")
        sources = tuple(SourceFile(f"{s}_32x32.mat", (_SVHN_URL + f"{s}_32x32.mat",), (Checksum("md5", _SVHN_MD5[s]),), gzipped=False, note="md5 of the .mat file") for s in splits)

        def convert(files):
            out = {s: read_svhn(files[f"{s}_32x32.mat"]) for s in splits}
            if "extra" in out:  # extra examples join train, before the held-out validation tail
                extra = out.pop("extra")
                train = out["train"]
                out["train"] = Arrays(np.concatenate([extra.images, train.images]), np.concatenate([extra.labels, train.labels]))
            return out

        return FileSet("svhn", "svhn+extra" if self.options.extra else "svhn", sources, self.directories(), convert, self.options.verify)

    def load(self) -> Loaded:
        return self._load(10, 5000)


@attrs.frozen
class SmallNORBOptions:
    camera: Literal["left", "right", "both"] = option("left", "which image of each stereo pair: left (the first), right, or both as 2 channels", choices=("left", "right", "both"))
    size: Literal[96, 48, 32] = option(32, "image side: 96 (original) or downsampled by area averaging to 48 or 32 (as the semi-supervised literature does)", choices=(96, 48, 32))
    verify: bool = option(True, "check source files against the published checksums")


class SmallNORB(_Published):
    """smallNORB (LeCun et al. 2004): 96x96 stereo pairs of toys, 5 categories, 24300 / 24300."""

    Config = SmallNORBOptions
    dir_names = ("smallnorb", "smallNORB", "norb")

    def fileset(self) -> FileSet:
        sources = tuple(SourceFile(n, (_NORB_URL + n + ".gz",), (Checksum("md5", m),), note="md5 of the decompressed .mat") for n, m in _NORB_FILES.values())
        camera, size = self.options.camera, self.options.size

        def convert(files):
            out = {}
            for split in ("train", "test"):
                dat_path, cat_path = files[_NORB_FILES[f"{split}_dat"][0]], files[_NORB_FILES[f"{split}_cat"][0]]
                dat, cat = read_norb(dat_path), read_norb(cat_path)
                if dat.ndim != 4 or dat.shape[1:] != (2, 96, 96) or dat.dtype != np.uint8:
                    raise CorruptFileError(f"{dat_path}: holds a {dat.dtype} matrix of shape {dat.shape}; smallNORB images are uint8 (N, 2, 96, 96).")
                _check_counts(f"{dat_path} and {cat_path}", dat, cat.reshape(-1))
                picked = dat if camera == "both" else dat[:, (0 if camera == "left" else 1)][:, None]
                out[split] = Arrays(downsample(picked, 96 // size), cat.reshape(-1).astype(np.int64))
            return out

        return FileSet("smallnorb", f"smallnorb-{camera}-{size}", sources, self.directories(), convert, self.options.verify)

    def load(self) -> Loaded:
        return self._load(5, 1000)


def downsample(images: np.ndarray, factor: int, chunk: int = 2048) -> np.ndarray:
    """Average factor x factor blocks of uint8 images (N, C, H, W), rounding to the nearest level."""
    if factor == 1:
        return np.ascontiguousarray(images)
    n, c, h, w = images.shape
    out = np.empty((n, c, h // factor, w // factor), np.uint8)
    area = factor * factor
    for start in range(0, n, chunk):  # in chunks: a wide copy of all 24300 pairs would need GBs
        block = images[start : start + chunk].astype(np.uint32)
        total = reduce(block, "n c (h fh) (w fw) -> n c h w", "sum", fh=factor, fw=factor)
        out[start : start + chunk] = ((total + area // 2) // area).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- the user's own files


@attrs.frozen
class ArrayFileOptions(ImageOptions):
    path: str = option(REQUIRED, "the file; a relative path is looked up in the working directory, then in the data root")
    layout: Literal["NCHW", "NHWC"] = option("NCHW", "axis order of 4-D image arrays (3-D arrays are (N, H, W), one channel)", choices=("NCHW", "NHWC"))
    max_value: Literal[255, 1] = option(255, "the value of white: 255 for 8-bit images, 1 for images already in {0, 1}", choices=(255, 1))
    num_classes: int | None = option(None, "number of classes (default: the largest label + 1)", ge=1)


class _ArrayFile:
    """Shared by `npz` and `hdf5`: the user's arrays, read directly (they need no conversion)."""

    Config = ArrayFileOptions

    def __init__(self, *, root=None, download: bool = True, offline: bool = False, **options):
        self.options = self.Config(**options)
        self.root = data_root(root)

    def file(self) -> Path:
        path = Path(self.options.path).expanduser()
        for candidate in (path, self.root / path):
            if candidate.is_file():
                return candidate
        raise DataError(f"data file '{self.options.path}' not found (looked at {path.resolve()} and {self.root / path}). Set data.path to an existing file; the schema is in docs/data.md.")

    def status(self) -> tuple[str, str]:
        return "the user's file named by data.path", "not cached (read directly)"

    def load(self) -> Loaded:
        path = self.file()
        raw = self.read(path)
        if "train" not in raw:
            raise DataError(f"{path}: has no training images. {self.schema_hint} Found: {', '.join(sorted(raw)) or 'nothing'}.")
        splits = {name: self._arrays(path, name, images, labels) for name, (images, labels) in raw.items()}
        labels = np.concatenate([a.labels for a in splits.values()])
        k = self.options.num_classes or (int(labels.max()) + 1 if (labels >= 0).any() else 1)
        if labels.max(initial=-1) >= k:
            raise DataError(f"{path}: a label is {int(labels.max())} but num_classes is {k}; labels must be 0..num_classes-1 (or -1 for unknown).")
        facts = {"sources": {path.name: content_digests(path)["sha256"]}, "file": str(path.resolve())}
        return Loaded(splits, k, self.options.max_value, 0, facts)

    def _arrays(self, path: Path, split: str, images: np.ndarray, labels: np.ndarray | None) -> Arrays:
        if images.dtype != np.uint8:
            raise DataError(f"{path}: {split} images are {images.dtype}; store uint8 pixels (0..255, or 0/1 with max_value = 1). {self.schema_hint}")
        if images.ndim == 3:
            images = images[:, None]
        elif images.ndim == 4 and self.options.layout == "NHWC":
            images = np.ascontiguousarray(rearrange(images, "n h w c -> n c h w"))
        elif images.ndim != 4:
            raise DataError(f"{path}: {split} images have shape {images.shape}; expected (N, H, W) or (N, C, H, W). {self.schema_hint}")
        if self.options.max_value == 1 and images.max(initial=0) > 1:
            raise DataError(f"{path}: {split} images hold values up to {images.max()} but max_value is 1; set max_value = 255 for 8-bit images.")
        labels = np.full(images.shape[0], -1, np.int64) if labels is None else np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{path}: {images.shape[0]} {split} images but {labels.shape[0]} labels; they must match.")
        return Arrays(images, labels)


class NPZ(_ArrayFile):
    """The user's arrays in a NumPy .npz: train_images, train_labels, test_images, ... (docs/data.md)."""

    schema_hint = "An .npz needs train_images (uint8) and optionally train_labels, validation_images/_labels, test_images/_labels."

    def read(self, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError on damaged files
            raise CorruptFileError(f"{path}: cannot be read as a NumPy .npz ({type(exc).__name__}: {exc}). Re-save it with numpy.savez.") from None
        return {s: (arrays[f"{s}_images"], arrays.get(f"{s}_labels")) for s in SPLITS if f"{s}_images" in arrays}


class HDF5(_ArrayFile):
    """The user's arrays in an HDF5 file: groups train/validation/test with images, labels (docs/data.md)."""

    schema_hint = "An HDF5 file needs a group 'train' with a uint8 dataset 'images' and optionally 'labels'; likewise 'validation' and 'test'."

    def read(self, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        try:
            with h5py.File(path, "r") as f:
                return {s: (f[s]["images"][()], f[s]["labels"][()] if "labels" in f[s] else None) for s in SPLITS if s in f and "images" in f[s]}
        except OSError as exc:
            raise CorruptFileError(f"{path}: cannot be read as HDF5 ({exc}). Check that it is a complete HDF5 file.") from None


# --------------------------------------------------------------------------- synthetic


@attrs.frozen
class SyntheticOptions(ImageOptions):
    size: int = option(8, "image side in pixels", ge=4, le=64)
    channels: int = option(1, "channels", ge=1, le=4)
    classes: int = option(10, "number of classes", ge=2, le=100)
    train: int = option(400, "training examples (before the validation hold-out)", ge=1)
    test: int = option(100, "test examples", ge=1)
    generator_seed: int = option(0, "seed of the generated images (fixed, independent of the run's seed)", ge=0)


class Synthetic:
    """SYNTHETIC tiny seeded images (class templates + noise): for tests and smoke runs, not real data."""

    Config = SyntheticOptions

    def __init__(self, *, root=None, download: bool = True, offline: bool = False, **options):
        self.options = self.Config(**options)

    def status(self) -> tuple[str, str]:
        return "generated in memory (synthetic, no files)", "not cached"

    def load(self) -> Loaded:
        o = self.options
        rng = np.random.default_rng(o.generator_seed)
        # Each class has a template of on-probabilities; an example is a Bernoulli draw of it
        # plus gray noise, so classes are separable and pixels are near 0 or 255 ("binary-ish").
        templates = np.where(rng.random((o.classes, o.channels, o.size, o.size)) < 0.3, 0.9, 0.08)

        def draw(n: int) -> Arrays:
            labels = np.arange(n, dtype=np.int64) % o.classes
            rng.shuffle(labels)
            on = rng.random((n, o.channels, o.size, o.size)) < templates[labels]
            gray = rng.integers(0, 40, size=on.shape)
            images = np.where(on, 255 - gray, gray).astype(np.uint8)
            return Arrays(images, labels)

        splits = {"train": draw(o.train), "test": draw(o.test)}
        return Loaded(splits, o.classes, 255, max(1, o.train // 5), {"synthetic": True, "generator_seed": o.generator_seed})


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
            raise DataError(f"labeled = {n} needs {counts[k]} training examples of class {k}, but the training split has {pool.size}. Lower data.labeled.")
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
    the union over ranks is exactly the single-process batch, dynamic binarization
    included (the noise is drawn for the global batch from the iterator's generator).
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
        self.generator = torch.Generator().manual_seed(_stream_seed(seed, stream, 31337))
        self._perm_epoch, self._perm = -1, None

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.stream, self.epoch]).permutation(len(self.indices))
            self._perm_epoch = self.epoch
        return self._perm

    def __next__(self) -> Batch:
        parts, need = [], self.batch_size
        while need:
            perm = self._permutation()
            take = min(need, len(perm) - self.position)
            parts.append(self.indices[perm[self.position : self.position + take]])
            self.position += take
            need -= take
            if self.position == len(perm):
                self.epoch, self.position = self.epoch + 1, 0
        rows = np.concatenate(parts)
        share = self.batch_size // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        noise = None
        if self.data.binarize == "dynamic":
            shape = (self.batch_size, *self.data.image_shape)
            noise = torch.rand(shape, generator=self.generator)[mine]
        return self.data._train_batch(rows[mine], noise)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "generator": self.generator.get_state(),
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
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.generator.set_state(state["generator"])


# --------------------------------------------------------------------------- the built dataset


class Data:
    """A dataset ready for training: splits in memory, a labeled subset, batch iterators."""

    def __init__(self, name: str, loaded: Loaded, *, validation: int | None, labeled: int, seed: int, binarize: str, threshold: float, binarize_seed: int, options: Mapping[str, Any]):
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
                raise DataError(f"dataset '{name}': {split} images are {arrays.images.shape[1:]} but train images are {self.image_shape}; all splits must share one shape.")
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

    # -- batches

    def _train_batch(self, rows: np.ndarray, noise: torch.Tensor | None) -> Batch:
        levels, _, scale = self._splits["train"]
        # Gather with NumPy: torch's indexing kernels spread tiny gathers over threads,
        # which on a loaded CPU made a 100-image MNIST batch 100x slower (27 ms vs 0.2 ms).
        x = torch.from_numpy(_to_unit(levels[rows], scale))
        if noise is not None:  # dynamic binarization: pixel is on with probability x
            x = (noise < x).to(torch.float32)
        return Batch(x, torch.from_numpy(self._train_labels[rows]))

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
            "labeled_per_class": np.bincount(self._splits["train"][1][self.labeled_indices], minlength=self.num_classes).tolist() if len(self.labeled_indices) else [],
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
    return Data(
        spec.name,
        loaded,
        validation=common.validation,
        labeled=common.labeled,
        seed=seed,
        binarize=options.get("binarize", "none"),
        threshold=options.get("threshold", 0.5),
        binarize_seed=options.get("binarize_seed", 0),
        options=options,
    )


# --------------------------------------------------------------------------- `gentk data list / prepare`


def _default_source(entry, root, offline: bool, download: bool = True):
    config = entry.config
    if config is not None and any(f.default is REQUIRED for f in attrs.fields(config)):
        return None  # needs options only a recipe gives (e.g. npz's path)
    return entry.factory(**(attrs.asdict(config()) if config is not None else {}), root=root, download=download, offline=offline)


def describe_datasets(plugins, root=None) -> str:
    """A table of registered datasets: plugin, where the files are, the cache state."""
    rows = [("name", "plugin", "files", "cache", "description")]
    for entry in plugins.registries["datasets"]:
        try:
            source = _default_source(entry, root, offline=True)
            where, cache = source.status() if source is not None and hasattr(source, "status") else ("set by the recipe's options", "-")
        except Exception as exc:  # one broken plugin dataset must not hide the others
            where, cache = f"error: {exc}", "-"
        rows.append((entry.name, entry.plugin, where, cache, entry.doc))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 11)
    lines.append("")
    lines.append(f"data root: {data_root(root)}   cache root: {cache_root()}")
    return "\n".join(lines)


def prepare_dataset(name: str, plugins, *, root=None, offline: bool = False) -> str:
    """Download (if allowed), verify and convert a dataset; return a printable summary."""
    entry = plugins.registries["datasets"].get(name)
    source = _default_source(entry, root, offline=offline)
    if source is None:
        raise DataError(f"dataset '{name}' reads a file named in the recipe ([data] path = ...); there is nothing to prepare. Run `gentk check RECIPE` to validate it.")
    loaded = source.load()
    lines = [f"dataset '{name}': ready"]
    for split, arrays in sorted(loaded.splits.items(), key=lambda item: SPLITS.index(item[0]) if item[0] in SPLITS else len(SPLITS)):
        lines.append(f"  {split}: {len(arrays)} images of shape {tuple(arrays.images.shape[1:])}")
    for key, value in loaded.facts.items():
        if isinstance(value, dict):
            lines.append(f"  {key}:")
            lines.extend(f"    {k}: {v}" for k, v in value.items())
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


@hookimpl
def gentk_register_datasets(register):
    register("mnist", MNIST)
    register("binarized_mnist", BinarizedMNIST)
    register("fashion_mnist", FashionMNIST)
    register("svhn", SVHN)
    register("smallnorb", SmallNORB)
    register("npz", NPZ)
    register("hdf5", HDF5)
    register("synthetic", Synthetic)
