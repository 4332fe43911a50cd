"""Datasets: MNIST (plain and binarized), Fashion-MNIST, SVHN, smallNORB, the user's own
arrays and a tiny synthetic set, one class each, registered like any plugin's.

The PixelGAN autoencoder paper (Makhzani & Frey, NIPS 2017) runs on MNIST (binarized for
likelihoods), SVHN and NORB; its semi-supervised results use a few labeled examples per
class. A dataset factory is called as ``factory(config=..., root=..., download=...,
offline=...)`` (its validated options) and returns an object whose ``load()`` gives a `Loaded`: the splits as
uint8 arrays, the number of classes, the value of white and provenance facts
(docs/data.md). The published datasets read their files through a `FileSet`
(`gentk.data.sources`).

A dataset whose pixels may be binarized declares its options with `ImageOptions`
(``binarize``, ``threshold``, ``binarize_seed``): `gentk.data.build_data` applies them to
any dataset whose options are an `ImageOptions`, built-in or a plugin's.

This module also answers ``gentk data list`` and ``gentk data prepare``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import h5py
import numpy as np
from einops import rearrange, reduce

from gentk.data.sources import SPLITS, Arrays, FileSet, cache_state, read_idx, read_norb, read_svhn
from gentk.download import Checksum, CorruptFileError, DataError, SourceFile, cache_root, content_digests, data_root
from gentk.options import REQUIRED, configured, option
from gentk.plugins import hookimpl

BINARIZE = ("none", "dynamic", "static", "threshold")


# --------------------------------------------------------------------------- what a dataset loads


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


@attrs.frozen
class ImageOptions:
    """The options every dataset whose pixels may be binarized shares; `build_data` applies them.

    Derive a dataset's options class from it (``class Config(ImageOptions): ...``) to offer
    ``binarize``, ``threshold`` and ``binarize_seed``; a dataset without them is served as
    it loads.
    """

    binarize: Literal["none", "dynamic", "static", "threshold"] = option(
        "none",
        "none (8-bit, k/255), dynamic (a fresh Bernoulli draw per training batch), static (one seeded draw, used for every split), threshold",
        choices=BINARIZE,
    )
    threshold: float = option(0.5, 'pixels above this intensity become 1 (binarize = "threshold")', gt=0.0, lt=1.0)
    binarize_seed: int = option(
        0, "seed of the static binarization (and of the evaluation splits under dynamic); fixed so likelihoods are comparable across runs", ge=0
    )


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
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
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
FASHION_SOURCES = _idx_sources(
    {n: (Checksum("sha256", s), Checksum("md5", m)) for n, (s, m) in _FASHION_SUMS.items()}, _FASHION_MIRRORS, "digests of the decompressed IDX file"
)


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
        raise CorruptFileError(
            f"{path_hint}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together. Replace them with matching files."
        )


@attrs.frozen
class PublishedOptions(ImageOptions):
    verify: bool = option(
        True, "check source files against the published checksums (false: accept other files under these names; their sha256 is still recorded)"
    )


class _Published:
    """Shared by the datasets read from published files: locations, cache, status."""

    dir_names: tuple[str, ...] = ()
    system_dirs: tuple[Path, ...] = ()

    def __init__(self, config=None, *, root=None, download: bool = True, offline: bool = False, **options):
        self.options = configured(self.Config, config, options)
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
        facts = {
            "sources": {k: v["sha256"] for k, v in meta["sources"].items()},
            "cache": str(fs.cache_path),
            "checksums_verified": bool(meta.get("verified")),
        }
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
    binarize: Literal["none", "dynamic", "static", "threshold"] = option(
        "static", "how pixels become {0, 1}: static (one seeded draw), dynamic (a fresh draw per batch), threshold", choices=BINARIZE
    )


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
        sources = tuple(
            SourceFile(
                f"{s}_32x32.mat", (_SVHN_URL + f"{s}_32x32.mat",), (Checksum("md5", _SVHN_MD5[s]),), gzipped=False, note="md5 of the .mat file"
            )
            for s in splits
        )

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
    camera: Literal["left", "right", "both"] = option(
        "left", "which image of each stereo pair: left (the first), right, or both as 2 channels", choices=("left", "right", "both")
    )
    size: Literal[96, 48, 32] = option(
        32, "image side: 96 (original) or downsampled by area averaging to 48 or 32 (as the semi-supervised literature does)", choices=(96, 48, 32)
    )
    verify: bool = option(True, "check source files against the published checksums")


class SmallNORB(_Published):
    """smallNORB (LeCun et al. 2004): 96x96 stereo pairs of toys, 5 categories, 24300 / 24300."""

    Config = SmallNORBOptions
    dir_names = ("smallnorb", "smallNORB", "norb")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Known from the options without reading a file (`gentk check` needs no data)."""
        return (2 if self.options.camera == "both" else 1, self.options.size, self.options.size)

    def fileset(self) -> FileSet:
        sources = tuple(
            SourceFile(n, (_NORB_URL + n + ".gz",), (Checksum("md5", m),), note="md5 of the decompressed .mat") for n, m in _NORB_FILES.values()
        )
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
    layout: Literal["NCHW", "NHWC"] = option(
        "NCHW", "axis order of 4-D image arrays (3-D arrays are (N, H, W), one channel)", choices=("NCHW", "NHWC")
    )
    max_value: Literal[255, 1] = option(255, "the value of white: 255 for 8-bit images, 1 for images already in {0, 1}", choices=(255, 1))
    num_classes: int | None = option(None, "number of classes (default: the largest label + 1)", ge=1)


class _ArrayFile:
    """Shared by `npz` and `hdf5`: the user's arrays, read directly (they need no conversion)."""

    Config = ArrayFileOptions

    def __init__(self, config=None, *, root=None, download: bool = True, offline: bool = False, **options):
        self.options = configured(self.Config, config, options)
        self.root = data_root(root)

    def file(self) -> Path:
        path = Path(self.options.path).expanduser()
        for candidate in (path, self.root / path):
            if candidate.is_file():
                return candidate
        raise DataError(
            f"data file '{self.options.path}' not found (looked at {path.resolve()} and {self.root / path}). Set data.path to an existing file; "
            "the schema is in docs/data.md."
        )

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
        elif images.ndim == 4:
            self._check_layout(path, split, images.shape)
            if self.options.layout == "NHWC":
                images = np.ascontiguousarray(rearrange(images, "n h w c -> n c h w"))
        else:
            raise DataError(f"{path}: {split} images have shape {images.shape}; expected (N, H, W) or (N, C, H, W). {self.schema_hint}")
        if self.options.max_value == 1 and images.max(initial=0) > 1:
            raise DataError(f"{path}: {split} images hold values up to {images.max()} but max_value is 1; set max_value = 255 for 8-bit images.")
        labels = np.full(images.shape[0], -1, np.int64) if labels is None else class_numbers(labels, f"{path}: {self.array_name(split, 'labels')}")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{path}: {images.shape[0]} {split} images but {labels.shape[0]} labels; they must match.")
        return Arrays(images, labels)

    def _check_layout(self, path: Path, split: str, shape: tuple[int, ...]) -> None:
        """Refuse 4-D images whose layout cannot be right: more than 4 channels of images at
        most 4 pixels wide (or high), where the other layout gives a few channels.

        (N, 28, 28, 1) read as NCHW is 28 channels of 28x1 pixels; as NHWC it is 1 channel of 28x28.
        """
        layout, other = self.options.layout, "NHWC" if self.options.layout == "NCHW" else "NCHW"
        channels, other_channels = (shape[1], shape[3]) if layout == "NCHW" else (shape[3], shape[1])
        if channels > MAX_CHANNELS >= other_channels:
            c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
            default = " (the default)" if layout == "NCHW" else ""
            raise DataError(
                f'{path}: {self.array_name(split, "images")} have shape {tuple(shape)}: read as layout = "{layout}"{default}, that is {c} '
                f"channels of {h}x{w} pixels, "
                f"which cannot be right; the axis of size {other_channels} looks like the channels. If the array is {other} "
                f"({'channels last' if other == 'NHWC' else 'channels first'}), "
                f'set layout = "{other}" in [data] (--set data.layout={other}).'
            )


MAX_CHANNELS = 4  # gray, gray + alpha or two cameras, RGB, RGBA: more is taken for a misread layout


def class_numbers(labels: np.ndarray, where: str) -> np.ndarray:
    """A user's labels as int64 (N,): whole numbers from -1 (unknown) up, never silently cast.

    Strings, NaN or infinite values, fractions and values below -1 are a `DataError` that
    starts with `where` (the file and the array) and says what to store instead.
    """
    labels = np.asarray(labels).reshape(-1)
    rule = "labels must be integers 0..num_classes-1, or -1 where a label is unknown"
    if labels.dtype.kind in "USO":
        shown = ", ".join(repr(v.decode() if isinstance(v, bytes) else str(v)) for v in labels[:2].tolist())
        raise DataError(
            f"{where} hold strings ({shown}, ...); {rule}: map the class names to numbers (e.g. names, labels = numpy.unique(labels, "
            "return_inverse=True)) and save the numbers."
        )
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{where} hold {labels.dtype} values; {rule}.")
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels))
        if bad.size:
            raise DataError(
                f"{where} hold {_count(bad.size, 'value')} that {'is' if bad.size == 1 else 'are'} not a number (NaN or infinite; the first "
                f"at index {bad[0]}); {rule}. Where NaN marks a missing label, store -1 instead."
            )
        bad = np.flatnonzero(labels != np.round(labels))
        if bad.size:
            raise DataError(
                f"{where} hold {_count(bad.size, 'fractional value')} ({labels[bad[0]]:g} at index {bad[0]}); {rule}. Check that the array "
                "holds class numbers, not scores or probabilities."
            )
    bad = np.flatnonzero(labels < -1)
    if bad.size:
        raise DataError(
            f"{where} hold {_count(bad.size, 'value')} below -1 ({labels[bad[0]]:g} at index {bad[0]}); {rule}. Renumber the classes from 0."
        )
    return labels.astype(np.int64)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class NPZ(_ArrayFile):
    """The user's arrays in a NumPy .npz: train_images, train_labels, test_images, ... (docs/data.md)."""

    schema_hint = "An .npz needs train_images (uint8) and optionally train_labels, validation_images/_labels, test_images/_labels."

    @staticmethod
    def array_name(split: str, kind: str) -> str:
        return f"{split}_{kind}"

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

    @staticmethod
    def array_name(split: str, kind: str) -> str:
        return f"/{split}/{kind}"

    def read(self, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        try:
            with h5py.File(path, "r") as f:
                return {s: self._split(path, f[s]) for s in SPLITS if s in f}
        except OSError as exc:
            raise CorruptFileError(f"{path}: cannot be read as HDF5 ({exc}). Check that it is a complete HDF5 file.") from None

    def _split(self, path: Path, group) -> tuple[np.ndarray, np.ndarray | None]:
        """A split's images and labels, after checking that the group holds them as datasets."""
        name = group.name
        if not isinstance(group, h5py.Group):
            raise DataError(
                f"{path}: '{name}' is a dataset of shape {group.shape}, but it must be a group holding the dataset 'images' (and optionally "
                "'labels'): "
                f"store the pixels as {name}/images and the labels as {name}/labels (h5py: f.create_dataset('{name[1:]}/images', "
                f"data=images)). {self.schema_hint}"
            )
        for key in ("images", "labels"):
            if key in group and not isinstance(group[key], h5py.Dataset):
                raise DataError(
                    f"{path}: '{name}/{key}' is a group (holding {', '.join(group[key]) or 'nothing'}), but it must be a dataset of "
                    f"{'uint8 pixels (N, H, W) or (N, C, H, W)' if key == 'images' else 'integer labels (N,)'}. {self.schema_hint}"
                )
        if "images" not in group:
            raise DataError(f"{path}: the group '{name}' has no dataset 'images' (it holds {', '.join(group) or 'nothing'}). {self.schema_hint}")
        return group["images"][()], group["labels"][()] if "labels" in group else None


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

    def __init__(self, config=None, *, root=None, download: bool = True, offline: bool = False, **options):
        self.options = configured(self.Config, config, options)

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


# --------------------------------------------------------------------------- `gentk data list / prepare`


def _default_source(entry, root, offline: bool, download: bool = True):
    config = entry.config
    if config is not None and any(f.default is REQUIRED for f in attrs.fields(config)):
        return None  # needs options only a recipe gives (e.g. npz's path)
    return entry.build(None, root=root, download=download, offline=offline)


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
        raise DataError(
            f"dataset '{name}' reads a file named in the recipe ([data] path = ...); there is nothing to prepare. Run `gentk check RECIPE` to "
            "validate it."
        )
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
