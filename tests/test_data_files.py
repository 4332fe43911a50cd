"""Datasets read from files: real MNIST and Fashion-MNIST, SVHN and smallNORB in their
on-disk formats, the user's npz/HDF5 files, the HDF5 cache and damaged-file errors.

The full SVHN and smallNORB files were not available where these tests were written (no
network): their loaders are tested on small files that the tests write in the real
formats (MATLAB v5 .mat via scipy; LeCun's binary matrices, gzipped or not).
"""

from __future__ import annotations

import errno
import gzip
import io
import logging
import os
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gentk.data import FASHION_SYSTEM_DIR, build_data, describe_datasets, prepare_dataset
from gentk.download import ChecksumError, CorruptFileError, DataError, DataMissingError, data_root
from gentk.errors import GentkError
from gentk.plugins import load_plugins
from gentk.recipe import ComponentSpec, DataOptions

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(autoload=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, writable cache root (the data root may be read-only)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GENTK_CACHE", str(path))
    return path


def build(plugins, name, *, root=None, seed=0, offline=True, common=None, **options):
    entry = plugins.get("datasets", name)
    common = common or DataOptions(root=str(root) if root is not None else None)
    return build_data(ComponentSpec("datasets", name, entry.config(**options), common), plugins, seed=seed, offline=offline)


def load(plugins, name, *, root, offline=True, **options):
    entry = plugins.get("datasets", name)
    return entry.factory(**options, root=root, download=True, offline=offline).load()


# --------------------------------------------------------------------------- real MNIST


def _shared(name: str) -> Path:
    directory = data_root() / name
    if not all(any((directory / (f + ext)).is_file() for ext in ("", ".gz")) for f in MNIST_FILES):
        pytest.skip(f"the {name} IDX files are not in {directory} (set GENTK_DATA to the folder holding {name}/)")
    return directory


@pytest.fixture(scope="module")
def mnist_cache(tmp_path_factory):
    """Real MNIST converted once per session into a temporary cache."""
    _shared("mnist")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENTK_CACHE", str(tmp_path_factory.mktemp("mnist-cache")))
        yield Path(os.environ["GENTK_CACHE"])


def test_real_mnist_known_statistics(plugins, mnist_cache, monkeypatch):
    monkeypatch.setenv("GENTK_CACHE", str(mnist_cache))
    loaded = load(plugins, "mnist", root=None)
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert round(float(train.images.mean()) / 255, 4) == 0.1307
    assert loaded.facts["checksums_verified"] is True
    assert loaded.facts["sources"]["train-images-idx3-ubyte"] == "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
    assert (mnist_cache / "mnist.h5").is_file(), "the cache goes to GENTK_CACHE, not beside the (read-only) data"


def test_real_mnist_batches_validation_and_labeled_subset(plugins, mnist_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("GENTK_CACHE", str(mnist_cache))
    data = build(plugins, "mnist", common=DataOptions(labeled=100), seed=3)
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert data.split_sizes == {"train": 50000, "validation": 10000, "test": 10000}
    full = load(plugins, "mnist", root=None).splits["train"]
    val = torch.cat([b.x for b in data.eval_batches("validation", 5000)])
    assert torch.equal(val, torch.from_numpy(full.images[50000:]).float() / 255), "validation is the last 10k of train"
    assert np.bincount(full.labels[data.labeled_indices], minlength=10).tolist() == [10] * 10
    assert data.labeled_indices.max() < 50000
    batch = next(data.train_batches(100, seed=3, labeled=True))
    assert batch.x.shape == (100, 1, 28, 28) and (batch.y >= 0).all()
    data.write_manifest(tmp_path)
    assert "ba891046" in (tmp_path / "data.json").read_text()
    binary = build(plugins, "binarized_mnist", common=DataOptions(validation=1000))
    x = torch.cat([b.x for b in binary.eval_batches("test", 5000)])
    assert set(x.unique().tolist()) == {0.0, 1.0} and abs(float(x.mean()) - 0.1325) < 0.005


@pytest.mark.skipif(
    not FASHION_SYSTEM_DIR.is_dir(), reason=f"Fashion-MNIST is not installed in {FASHION_SYSTEM_DIR} (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_from_debian(plugins, cache, tmp_path):
    loaded = load(plugins, "fashion_mnist", root=tmp_path / "empty-root")
    assert loaded.splits["train"].images.shape == (60000, 1, 28, 28)
    assert loaded.splits["test"].images.shape == (10000, 1, 28, 28)
    assert np.bincount(loaded.splits["train"].labels).tolist() == [6000] * 10
    assert np.bincount(loaded.splits["test"].labels).tolist() == [1000] * 10
    assert loaded.facts["checksums_verified"] is True


# --------------------------------------------------------------------------- small files in real formats


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x800 + array.ndim
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()


def write_fake_mnist(directory: Path, n_train=60, n_test=20, seed=0, gz=True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


def test_idx_files_compressed_or_not(plugins, cache, tmp_path):
    arrays = write_fake_mnist(tmp_path / "a" / "mnist", gz=True)
    write_fake_mnist(tmp_path / "b" / "mnist", gz=False)
    for root in (tmp_path / "a", tmp_path / "b"):
        loaded = load(plugins, "mnist", root=root, verify=False)
        assert np.array_equal(loaded.splits["train"].images[:, 0], arrays["train-images-idx3-ubyte"])
        assert loaded.splits["test"].labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
        assert loaded.facts["checksums_verified"] is False


def test_checksum_mismatch_names_the_file_and_the_published_digest(plugins, cache, tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    with pytest.raises(ChecksumError) as err:
        load(plugins, "mnist", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mnist") in message and "-idx" in message
    assert "sha256" in message and "verify = false" in message
    assert err.value.exit_code == 2


def test_truncated_and_mismatched_files(plugins, cache, tmp_path):
    directory = tmp_path / "mnist"
    write_fake_mnist(directory)
    good = (directory / "train-images-idx3-ubyte.gz").read_bytes()
    (directory / "train-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])  # a cut-off download
    with pytest.raises(CorruptFileError, match=r"train-images-idx3-ubyte\.gz.*(truncated|damaged).*download it again"):
        load(plugins, "mnist", root=tmp_path, verify=False)

    raw = gzip.decompress(good)
    (directory / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))  # valid gzip, short payload
    with pytest.raises(CorruptFileError, match=r"train-images-idx3-ubyte\.gz: the header announces 60x28x28"):
        load(plugins, "mnist", root=tmp_path, verify=False)

    (directory / "train-images-idx3-ubyte.gz").write_bytes((directory / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(CorruptFileError, match=r"not an IDX file of images.*magic number is 2049"):
        load(plugins, "mnist", root=tmp_path, verify=False)

    write_fake_mnist(directory)
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(59) % 10)))
    with pytest.raises(CorruptFileError, match="60 images but 59 labels"):
        load(plugins, "mnist", root=tmp_path, verify=False)


def test_offline_error_lists_files_checksums_directory_and_sources(plugins, cache, tmp_path):
    with pytest.raises(DataMissingError) as err:
        build(plugins, "mnist", root=tmp_path, offline=True)
    message = str(err.value)
    for name in MNIST_FILES:
        assert name + ".gz" in message
    assert "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" in message
    assert str(tmp_path / "mnist") in message and "offline" in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    assert isinstance(err.value, GentkError) and err.value.exit_code == 2
    with pytest.raises(DataMissingError, match="downloads are disabled"):
        build(plugins, "mnist", offline=False, common=DataOptions(root=str(tmp_path), download=False))


def test_cache_is_reused_then_rebuilt_when_truncated_or_stale(plugins, cache, tmp_path, caplog, monkeypatch):
    arrays = write_fake_mnist(tmp_path / "mnist", n_train=30)
    load(plugins, "mnist", root=tmp_path, verify=False)
    path = cache / "mnist.h5"
    with h5py.File(path, "r") as f:
        assert f["train/images"].dtype == np.uint8 and f["train/labels"].dtype == np.int64
        assert f["train/images"].shape == (30, 1, 28, 28) and f.attrs["format_version"] == 1
        assert "train-images-idx3-ubyte" in f.attrs["sources"]

    import gentk.data.datasets as data_module

    calls = []
    real = data_module._convert_idx
    monkeypatch.setattr(data_module, "_convert_idx", lambda files: calls.append(1) or real(files))
    load(plugins, "mnist", root=tmp_path, verify=False)
    assert calls == [], "a valid cache is read, not rebuilt"

    path.write_bytes(path.read_bytes()[:5000])  # truncated cache
    with caplog.at_level(logging.WARNING, logger="gentk.data"):
        loaded = load(plugins, "mnist", root=tmp_path, verify=False)
    assert calls == [1] and "rebuilding the cache" in caplog.text
    assert np.array_equal(loaded.splits["train"].images[:, 0], arrays["train-images-idx3-ubyte"])

    changed = write_fake_mnist(tmp_path / "mnist", n_train=30, seed=1)  # new content under the same names
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gentk.data"):
        loaded = load(plugins, "mnist", root=tmp_path, verify=False)
    assert calls == [1, 1] and "has changed since the cache was built" in caplog.text
    assert np.array_equal(loaded.splits["train"].images[:, 0], changed["train-images-idx3-ubyte"])

    os.utime(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", ns=(1, 1))  # touched, same content
    load(plugins, "mnist", root=tmp_path, verify=False)
    assert calls == [1, 1]

    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 0
    load(plugins, "mnist", root=tmp_path, verify=False)
    assert calls == [1, 1, 1]

    with pytest.raises(ChecksumError):  # a cache of unverified files is not trusted once checksums are required
        load(plugins, "mnist", root=tmp_path, verify=True)


@pytest.fixture
def read_only(monkeypatch):
    """read_only(directory): writing under `directory` fails with EROFS, as on a read-only mount.

    Tests run as root in CI, where a mode bit does not stop a write, so the refusal is
    simulated where Python opens files (os.open: lock files, temporary files) and checks
    access (os.access).
    """
    refused = []

    def inside(path) -> bool:
        return any(Path(os.path.abspath(path)).is_relative_to(d) for d in refused)

    real_open, real_access = os.open, os.access

    def open_(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if inside(path) and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "access", access)
    return lambda directory: refused.append(Path(directory).resolve())


def test_a_read_only_cache_directory_with_a_valid_cache_is_used(plugins, cache, tmp_path, read_only, monkeypatch):
    arrays = write_fake_mnist(tmp_path / "mnist", n_train=30)
    load(plugins, "mnist", root=tmp_path, verify=False)  # converted once, where it may write
    read_only(cache)
    loaded = load(plugins, "mnist", root=tmp_path, verify=False)
    assert np.array_equal(loaded.splits["train"].images[:, 0], arrays["train-images-idx3-ubyte"])

    write_fake_mnist(tmp_path / "mnist", n_train=30, seed=1)  # the cache no longer matches the files
    with pytest.raises(DataError) as error:
        load(plugins, "mnist", root=tmp_path, verify=False)
    message = str(error.value)
    assert f"{cache} is not writable" in message and "has changed since the cache was built" in message and "GENTK_CACHE" in message
    assert (cache / "mnist.h5").is_file(), "the stale cache is left where it is"

    empty = tmp_path / "empty-cache"
    empty.mkdir()
    read_only(empty)
    monkeypatch.setenv("GENTK_CACHE", str(empty))
    with pytest.raises(DataError, match=r"empty-cache is not writable.*no cache of dataset 'mnist' there yet.*GENTK_CACHE"):
        load(plugins, "mnist", root=tmp_path, verify=False)


def test_a_cache_that_cannot_be_written_is_one_paragraph(plugins, cache, tmp_path, monkeypatch):
    import gentk.data.sources as sources

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    write_fake_mnist(tmp_path / "mnist", n_train=30)
    monkeypatch.setattr(sources, "write_cache", full)
    with pytest.raises(DataError, match=r"cannot write the cache .*mnist\.h5 \(No space left on device\)\. Free space there, or set GENTK_CACHE"):
        load(plugins, "mnist", root=tmp_path, verify=False)


def test_svhn_mat_v5(plugins, cache, tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="SVHN needs scipy (pip install 'gentk[svhn]')")
    rng = np.random.default_rng(0)
    directory = tmp_path / "svhn"
    directory.mkdir()
    written = {}
    for split, n in (("train", 30), ("test", 12), ("extra", 8)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # SVHN labels 1..10, 10 = digit 0
        buffer = io.BytesIO()
        scipy_io.savemat(buffer, {"X": x, "y": y}, format="5")
        if split == "extra":  # a gzipped copy is accepted too
            (directory / f"{split}_32x32.mat.gz").write_bytes(gzip.compress(buffer.getvalue()))
        else:
            (directory / f"{split}_32x32.mat").write_bytes(buffer.getvalue())
        written[split] = (x, y)
    data = build(plugins, "svhn", root=tmp_path, verify=False, common=DataOptions(root=str(tmp_path), validation=5))
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10
    assert data.split_sizes == {"train": 25, "validation": 5, "test": 12}
    test = next(data.eval_batches("test", 12))
    x, y = written["test"]
    assert torch.equal(test.x[3, 1, 5, 7], torch.tensor(x[5, 7, 1, 3] / 255, dtype=torch.float32)), "(H, W, C, N) -> (N, C, H, W)"
    assert test.y.tolist() == [int(v) % 10 for v in y[:, 0]] and 0 in test.y.tolist() and 10 not in test.y.tolist()
    extra = build(plugins, "svhn", extra=True, verify=False, common=DataOptions(root=str(tmp_path), validation=5))
    assert extra.split_sizes["train"] == 33
    first = next(extra.eval_batches("train", 8))
    assert torch.equal(first.x[0], torch.from_numpy(written["extra"][0][..., 0]).permute(2, 0, 1).float() / 255), "extra comes first"
    with pytest.raises(ChecksumError, match=r"train_32x32\.mat.*md5 e26dedcc434d2e4c54c9b2d4a06d8373"):
        build(plugins, "svhn", root=tmp_path)
    (directory / "test_32x32.mat").write_bytes((directory / "test_32x32.mat").read_bytes()[:3000])
    with pytest.raises(CorruptFileError, match=r"test_32x32\.mat: cannot be read"):
        build(plugins, "svhn", root=tmp_path, verify=False, common=DataOptions(root=str(tmp_path)))


NORB = {
    "train": ("smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat", "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat"),
    "test": ("smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat", "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat"),
}


def norb_bytes(array: np.ndarray) -> bytes:
    magic = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}[array.dtype]
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)  # the format stores at least 3 dims
    return struct.pack("<ii", magic, array.ndim) + struct.pack(f"<{len(dims)}i", *dims) + array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_smallnorb_binary_matrices(plugins, cache, tmp_path):
    rng = np.random.default_rng(0)
    directory = tmp_path / "smallnorb"
    directory.mkdir()
    written = {}
    for split, (dat_name, cat_name) in NORB.items():
        n = 10 if split == "train" else 6
        dat = rng.integers(0, 256, (n, 2, 96, 96), dtype=np.uint8)
        cat = (np.arange(n) % 5).astype(np.int32)
        (directory / (dat_name + ".gz")).write_bytes(gzip.compress(norb_bytes(dat)))  # as distributed
        (directory / cat_name).write_bytes(norb_bytes(cat))  # or decompressed
        written[split] = (dat, cat)
    data = build(plugins, "smallnorb", verify=False, camera="right", size=96, common=DataOptions(root=str(tmp_path), validation=2))
    assert data.image_shape == (1, 96, 96) and data.num_classes == 5
    assert data.split_sizes == {"train": 8, "validation": 2, "test": 6}
    test = next(data.eval_batches("test", 6))
    dat, cat = written["test"]
    assert torch.equal(test.x[:, 0], torch.from_numpy(dat[:, 1]).float() / 255) and test.y.tolist() == cat.tolist()

    small = build(plugins, "smallnorb", verify=False, common=DataOptions(root=str(tmp_path), validation=2))  # left camera, 32x32
    assert small.image_shape == (1, 32, 32)
    expected = np.round(dat[:, 0].reshape(6, 32, 3, 32, 3).astype(np.float64).mean(axis=(2, 4)) + 1e-9).astype(np.uint8)
    got = (next(small.eval_batches("test", 6)).x[:, 0] * 255).round().to(torch.uint8).numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    both = build(plugins, "smallnorb", verify=False, camera="both", size=48, common=DataOptions(root=str(tmp_path), validation=2))
    assert both.image_shape == (2, 48, 48)

    with pytest.raises(ChecksumError, match="md5 8138a0902307b32dfa0025a36dfa45ec"):
        build(plugins, "smallnorb", root=tmp_path)
    cat_path = directory / NORB["train"][1]
    cat_path.write_bytes(norb_bytes(np.arange(9, dtype=np.int32)))
    with pytest.raises(CorruptFileError, match="10 images but 9 labels"):
        build(plugins, "smallnorb", verify=False, size=48, common=DataOptions(root=str(tmp_path)))
    cat_path.write_bytes(norb_bytes(np.arange(10, dtype=np.int32))[:-8])
    with pytest.raises(CorruptFileError, match="training-cat.mat: the header announces 10 values"):
        build(plugins, "smallnorb", verify=False, size=48, common=DataOptions(root=str(tmp_path)))


# --------------------------------------------------------------------------- the user's own files


def test_npz_and_hdf5_user_files(plugins, cache, tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (40, 12, 10), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 12, 10), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", train_images=train, train_labels=np.arange(40) % 4, test_images=test)
    data = build(plugins, "npz", path=str(tmp_path / "mine.npz"), common=DataOptions(validation=8))
    assert data.image_shape == (1, 12, 10) and data.num_classes == 4
    assert data.split_sizes == {"train": 32, "validation": 8, "test": 10}
    assert (next(data.eval_batches("test", 10)).y == -1).all(), "absent labels are -1"

    rgb = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", train_images=rgb, test_images=rgb[:5])
    channels_last = build(plugins, "npz", path="rgb.npz", layout="NHWC", common=DataOptions(root=str(tmp_path), validation=0))
    assert channels_last.image_shape == (3, 8, 8)
    assert torch.equal(next(channels_last.eval_batches("test", 5)).x[2, 1], torch.from_numpy(rgb[2, :, :, 1]).float() / 255)

    with h5py.File(tmp_path / "mine.h5", "w") as f:
        for split, n in (("train", 30), ("validation", 6), ("test", 6)):
            f.create_dataset(f"{split}/images", data=rng.integers(0, 2, (n, 1, 5, 5), dtype=np.uint8))
            f.create_dataset(f"{split}/labels", data=np.arange(n) % 3)
    data = build(plugins, "hdf5", path=str(tmp_path / "mine.h5"), max_value=1)
    assert data.split_sizes == {"train": 30, "validation": 6, "test": 6}, "the file's own validation split is used"
    assert set(next(data.train_batches(30, seed=0)).x.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(DataError, match="brings its own validation split"):
        build(plugins, "hdf5", path=str(tmp_path / "mine.h5"), max_value=1, common=DataOptions(validation=3))

    np.savez(tmp_path / "float.npz", train_images=train.astype(np.float32))
    with pytest.raises(DataError, match="float32; store uint8"):
        build(plugins, "npz", path=str(tmp_path / "float.npz"))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptFileError, match=r"broken\.npz: cannot be read"):
        build(plugins, "npz", path=str(tmp_path / "broken.npz"))
    with pytest.raises(DataError, match=r"data file 'nope\.npz' not found"):
        build(plugins, "npz", path="nope.npz", common=DataOptions(root=str(tmp_path)))


@pytest.mark.parametrize(
    "labels, found",
    [
        (np.array(["cat", "dog"] * 10), r"hold strings \('cat', 'dog'.*map the class names to numbers"),
        (np.r_[np.arange(19) % 4, np.nan], r"hold 1 value that is not a number \(NaN or infinite; the first at index 19\).*store -1 instead"),
        (np.r_[np.arange(19) % 4, 2.5], r"hold 1 fractional value \(2\.5 at index 19\).*class numbers, not scores"),
        (np.r_[np.arange(19) % 4, -3], r"hold 1 value below -1 \(-3 at index 19\).*-1 where a label is unknown"),
    ],
    ids=["strings", "nan", "fractional", "negative"],
)
def test_labels_that_are_not_class_numbers_are_refused_not_cast(plugins, tmp_path, labels, found):
    np.savez(tmp_path / "mine.npz", train_images=np.zeros((20, 4, 4), np.uint8), train_labels=labels)
    with pytest.raises(DataError, match=rf"mine\.npz: train_labels {found}") as error:
        build(plugins, "npz", path=str(tmp_path / "mine.npz"))
    assert "\n" not in str(error.value) and "0..num_classes-1" in str(error.value)

    with h5py.File(tmp_path / "mine.h5", "w") as f:  # the same checks for HDF5 (strings stored as bytes)
        f["train/images"] = np.zeros((20, 4, 4), np.uint8)
        f["train/labels"] = labels.astype("S") if labels.dtype.kind == "U" else labels
    with pytest.raises(DataError, match=r"mine\.h5: /train/labels hold"):
        build(plugins, "hdf5", path=str(tmp_path / "mine.h5"))


def test_whole_float_and_unknown_labels_are_class_numbers(plugins, tmp_path):
    np.savez(tmp_path / "mine.npz", train_images=np.zeros((6, 4, 4), np.uint8), train_labels=np.array([0.0, 1.0, 2.0, -1.0, 1.0, 0.0]))
    data = build(plugins, "npz", path=str(tmp_path / "mine.npz"))
    assert data.num_classes == 3
    assert next(data.eval_batches("train", 6)).y.tolist() == [0, 1, 2, -1, 1, 0]


def test_an_hdf5_file_laid_out_otherwise_says_where_each_array_goes(plugins, tmp_path):
    images = np.zeros((10, 4, 4), np.uint8)
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["train"] = images  # the images themselves, not a group holding them
    with pytest.raises(DataError, match=r"flat\.h5: '/train' is a dataset of shape \(10, 4, 4\), but it must be a group.*/train/images") as error:
        build(plugins, "hdf5", path=str(tmp_path / "flat.h5"))
    assert "\n" not in str(error.value)

    with h5py.File(tmp_path / "nested.h5", "w") as f:
        f["train/images/a"] = images  # a group where the pixels belong
    with pytest.raises(DataError, match=r"nested\.h5: '/train/images' is a group \(holding a\), but it must be a dataset of uint8 pixels"):
        build(plugins, "hdf5", path=str(tmp_path / "nested.h5"))

    with h5py.File(tmp_path / "labels-only.h5", "w") as f:
        f["train/images"] = images
        f["test/labels"] = np.zeros(10, np.int64)
    with pytest.raises(DataError, match=r"labels-only\.h5: the group '/test' has no dataset 'images' \(it holds labels\)"):
        build(plugins, "hdf5", path=str(tmp_path / "labels-only.h5"))


def test_channels_last_images_without_their_layout_are_refused_with_the_fix(plugins, tmp_path):
    np.savez(tmp_path / "gray.npz", train_images=np.zeros((10, 28, 28, 1), np.uint8), test_images=np.zeros((4, 28, 28, 1), np.uint8))
    with pytest.raises(
        DataError,
        match=r"gray\.npz: train_images have shape \(10, 28, 28, 1\): read as layout = \"NCHW\" \(the default\), that is 28 channels of 28x1 "
        r"pixels.*set layout = \"NHWC\" in \[data\] \(--set data\.layout=NHWC\)",
    ) as error:
        build(plugins, "npz", path=str(tmp_path / "gray.npz"))
    assert "\n" not in str(error.value)
    assert build(plugins, "npz", path=str(tmp_path / "gray.npz"), layout="NHWC").image_shape == (1, 28, 28)

    np.savez(tmp_path / "rgb.npz", train_images=np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"32 channels of 32x3 pixels.*layout = \"NHWC\""):
        build(plugins, "npz", path=str(tmp_path / "rgb.npz"))

    np.savez(tmp_path / "first.npz", train_images=np.zeros((10, 3, 32, 32), np.uint8))  # the reverse mistake
    with pytest.raises(DataError, match=r"read as layout = \"NHWC\", that is 32 channels of 3x32 pixels.*set layout = \"NCHW\""):
        build(plugins, "npz", path=str(tmp_path / "first.npz"), layout="NHWC")


# --------------------------------------------------------------------------- `gentk data list / prepare`


def test_describe_and_prepare(plugins, cache, tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    table = describe_datasets(plugins, root=tmp_path)
    for name in ("mnist", "binarized_mnist", "fashion_mnist", "svhn", "smallnorb", "npz", "hdf5", "synthetic"):
        assert f"\n{name} " in table
    assert str(tmp_path / "mnist") in table and "absent" in table and "synthetic, no files" in table
    assert f"missing (expected in {tmp_path / 'svhn'})" in table
    summary = prepare_dataset("synthetic", plugins)
    assert "train: 400 images of shape (1, 8, 8)" in summary
    with pytest.raises(DataMissingError, match="svhn"):
        prepare_dataset("svhn", plugins, root=tmp_path, offline=True)
    with pytest.raises(DataError, match="nothing to prepare"):
        prepare_dataset("npz", plugins, root=tmp_path)
