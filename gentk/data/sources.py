"""Dataset sources: published file formats and the HDF5 cache they are converted into.

A published dataset (MNIST's IDX files, SVHN's MATLAB ``.mat``, smallNORB's binary
matrices) is a `FileSet`: its source files (`gentk.download.SourceFile`: names, mirrors,
checksums of the content), the directories to look in, and a conversion into one
`Arrays` per split. The conversion runs once: its result is one HDF5 file in the cache
root (a group per split with uint8 ``images`` (N, C, H, W) and int64 ``labels``;
attributes: the source files' sha256 and a format version). Later loads read the HDF5; a
cache that is damaged, of an older format or built from other source files is rebuilt,
never used. Finding, downloading and verifying the source files is `gentk.download`'s.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import filelock
import h5py
import numpy as np
from einops import rearrange

from gentk.download import (
    CorruptFileError,
    DataError,
    SourceFile,
    cache_root,
    content_digests,
    ensure_files,
    open_source,
    read_content,
    verify,
)

log = logging.getLogger("gentk.data")

FORMAT_VERSION = 1  # of the HDF5 cache; bump when the layout or a conversion changes
SPLITS = ("train", "validation", "test")


# --------------------------------------------------------------------------- one split in memory


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
        raise CorruptFileError(
            f"{path}: not an IDX file of {what}: its magic number is {magic}. Check that the file is the right one (images vs labels) and not "
            "damaged."
        )
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
        raise CorruptFileError(
            f"{path}: {len(raw)} bytes is too short for a smallNORB header; the file is truncated. Delete it and download it again."
        )
    magic, ndim = struct.unpack("<ii", raw[:8])
    magic &= 0xFFFFFFFF
    if magic not in _NORB_TYPES or not 1 <= ndim <= 8:
        raise CorruptFileError(
            f"{path}: not a smallNORB binary matrix (magic {magic:#x}, {ndim} dims). Check that it is the right file and not damaged."
        )
    stored = max(ndim, 3)
    dims = struct.unpack(f"<{stored}i", raw[8 : 8 + 4 * stored])[:ndim]
    dtype = np.dtype(_NORB_TYPES[magic]).newbyteorder("<")
    offset = 8 + 4 * stored
    count = int(np.prod(dims))
    if len(raw) - offset != count * dtype.itemsize:
        raise CorruptFileError(
            f"{path}: the header announces {'x'.join(map(str, dims))} values ({count * dtype.itemsize} bytes) but the file holds "
            f"{len(raw) - offset} bytes; "
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
        raise CorruptFileError(
            f"{path}: cannot be read as a MATLAB v5 .mat file ({type(exc).__name__}: {exc}); it is truncated or damaged. Delete it and download "
            "it again."
        ) from None
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
        """The splits, from the cache when it is valid for the source files, else rebuilt.

        A cache directory gentk may not write to (a shared, read-only copy) is fine as long
        as the cache there is valid: it is read without the lock, since nobody can replace it.
        """
        path = self.cache_path
        lock = filelock.FileLock(str(path) + ".lock")  # one rank converts, the others wait
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:
            return self._read_only(path, exc)
        try:
            located = self.locate()
            if path.is_file():
                try:
                    splits, meta = read_cache(path)
                    self._check_sources(meta, located)
                    return splits, meta
                except StaleCache as exc:
                    log.warning("rebuilding the cache %s of dataset '%s': %s", path, self.dataset, exc)
            return self._rebuild(path, download=download, offline=offline)
        finally:
            lock.release()

    def _read_only(self, path: Path, exc: OSError) -> tuple[dict[str, Arrays], dict[str, Any]]:
        """The cache in a directory gentk cannot write to (`exc` says why): used when valid, else a clear error."""
        reason = f"there is no cache of dataset '{self.dataset}' there yet ({path.name})"
        if path.is_file():
            try:
                splits, meta = read_cache(path)
                self._check_sources(meta, self.locate())
                log.info("using the cache %s of dataset '%s' from a directory gentk cannot write to", path, self.dataset)
                return splits, meta
            except StaleCache as stale:
                reason = f"its cache {path.name} cannot be used: {stale}"
        state = "is not writable" if path.parent.is_dir() else "cannot be created"
        raise DataError(
            f"the cache directory {path.parent} {state} ({exc.strerror or exc}), and {reason}. "
            "Set GENTK_CACHE to a writable directory (gentk converts the dataset there once; the data files themselves may stay read-only), "
            "or run `gentk data prepare` where the cache directory is writable."
        ) from None

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
        try:
            write_cache(path, splits, {"dataset": self.dataset, "sources": sources, "verified": self.verify})
        except OSError as exc:  # a full disk, or a directory whose lock file alone is writable
            raise DataError(
                f"cannot write the cache {path} ({exc.strerror or exc}). Free space there, or set GENTK_CACHE to a writable directory with "
                "room for the converted dataset."
            ) from None
        return read_cache(path)
