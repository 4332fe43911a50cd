"""Dataset source files: where they live, their checksums, downloading them safely.

A dataset is made of source files in their standard formats (MNIST's IDX, SVHN's MATLAB
``.mat``, smallNORB's binary matrices). Each `SourceFile` names the file, the mirrors it
can be fetched from and the published checksums of its *content*: the bytes after gzip
decompression. Checking the content rather than the ``.gz`` archive accepts a file
whether it is compressed or not, and accepts re-compressed copies (the MNIST and
Fashion-MNIST ``.gz`` files shipped by Debian and by our CI differ byte-wise from the
originals but decompress to exactly the published content).

Fetching follows the usual safe pattern: a file lock per target file (so DDP ranks or
parallel jobs do not download twice), a download into a temporary file in the target
directory with a tqdm progress bar, checksum verification, then an atomic rename. Without
a network (or with ``offline=True``) the error lists each missing file, its checksums,
the directory it belongs in and where to get it: a `DataMissingError` (exit code 2).

Locations:
- data root: the recipe's ``data.root``, else ``$GENTK_DATA``, else ``<user cache>/data``;
  a dataset's files live in ``<data root>/<dataset dir>/`` (e.g. ``$GENTK_DATA/mnist/``);
- cache root (the converted HDF5 files, see `gentk.data`): ``$GENTK_CACHE``, else the
  per-user cache directory (``platformdirs.user_cache_dir("gentk")``). It is kept apart
  from the data root because the data root may be read-only (a shared dataset folder).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import filelock
import platformdirs

from gentk.errors import GentkError

CHUNK = 1 << 20  # bytes read per step when hashing and downloading


class DataError(GentkError):
    """A dataset that cannot be found, read or verified."""


class DataMissingError(DataError):
    """Source files are absent and cannot be downloaded (offline, or no mirror answered)."""


class ChecksumError(DataError):
    """A source file whose content does not match the published checksum."""


class CorruptFileError(DataError):
    """A source file that cannot be parsed (truncated, wrong format, damaged)."""


# --------------------------------------------------------------------------- locations


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The directory holding dataset folders: `root`, else $GENTK_DATA, else the user cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("GENTK_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("gentk")) / "data"


def cache_root() -> Path:
    """The directory of converted HDF5 caches: $GENTK_CACHE, else the user cache."""
    env = os.environ.get("GENTK_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("gentk")) / "hdf5"


# --------------------------------------------------------------------------- source files


@attrs.frozen
class Checksum:
    """A published digest of a file's content (the bytes after gzip decompression)."""

    algorithm: str  # a hashlib name: "sha256" or "md5"
    digest: str

    def __str__(self) -> str:
        return f"{self.algorithm} {self.digest}"


@attrs.frozen
class SourceFile:
    """One file of a dataset as its publisher distributes it.

    name: the file name without ``.gz``; the file may be present as NAME or NAME.gz.
    urls: mirrors, tried in order (each URL points at NAME.gz when `gzipped`).
    checksums: digests of the decompressed content; a file passes if every one matches.
    """

    name: str
    urls: tuple[str, ...]
    checksums: tuple[Checksum, ...]
    gzipped: bool = True
    size: int | None = None  # bytes of the decompressed content
    note: str = ""  # where the checksums come from

    @property
    def download_name(self) -> str:
        return self.name + ".gz" if self.gzipped else self.name

    def candidates(self, directory: Path) -> list[Path]:
        return [directory / self.name, directory / (self.name + ".gz")]

    def locate(self, directories: Iterable[Path]) -> Path | None:
        """The first existing copy (compressed or not) in `directories`, else None."""
        for directory in directories:
            for path in self.candidates(Path(directory)):
                if path.is_file():
                    return path
        return None

    def describe(self) -> str:
        sums = ", ".join(str(c) for c in self.checksums) or "no published checksum"
        return f"{self.download_name} (content {sums}; from {' or '.join(self.urls) or 'the publisher'})"


def open_source(path: Path):
    """Open a source file for reading its content, decompressing ``.gz`` transparently."""
    path = Path(path)
    with path.open("rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


def read_content(path: Path) -> bytes:
    """The whole decompressed content; a damaged archive is a `CorruptFileError`."""
    try:
        with open_source(path) as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise CorruptFileError(
            f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is truncated or damaged. "
            f"Delete it and download it again (`gentk data prepare NAME`), or copy an intact one there."
        ) from None


def content_digests(path: Path, algorithms: Sequence[str] = ("sha256",)) -> dict[str, str]:
    """Digests of the decompressed content of `path`, computed in one streaming pass."""
    hashers = {a: hashlib.new(a) for a in dict.fromkeys(("sha256", *algorithms))}
    try:
        with open_source(path) as f:
            while chunk := f.read(CHUNK):
                for h in hashers.values():
                    h.update(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptFileError(
            f"{path}: the gzip archive is truncated or damaged ({type(exc).__name__}: {exc}). "
            f"Delete it and download it again (`gentk data prepare NAME`), or copy an intact one there."
        ) from None
    return {a: h.hexdigest() for a, h in hashers.items()}


def verify(path: Path, source: SourceFile) -> str:
    """Check `path` against the published checksums; return the content's sha256.

    A mismatch is a `ChecksumError` that names the file, both digests and what to do.
    """
    found = content_digests(path, [c.algorithm for c in source.checksums])
    for expected in source.checksums:
        if found[expected.algorithm] != expected.digest:
            raise ChecksumError(
                f"{path}: its content has {expected.algorithm} {found[expected.algorithm]}, but {source.name} should have "
                f"{expected.algorithm} {expected.digest}. The file is damaged, incomplete or a different file under the same name. "
                f"Delete it and run `gentk data prepare` again, or replace it with the file from {' or '.join(source.urls)} "
                "(to use a file of your own on purpose, set verify = false in the [data] table)."
            )
    return found["sha256"]


# --------------------------------------------------------------------------- downloading


def missing_message(dataset: str, sources: Sequence[SourceFile], directory: Path, reason: str, looked_in: Sequence[Path] = ()) -> str:
    """The error text for absent files: names, checksums, target directory, where to get them."""
    lines = [f"dataset '{dataset}': {reason}. Put these files (compressed .gz or not) in {directory}:"]
    for s in sources:
        lines.append(f"  - {s.describe()}")
    if looked_in:
        lines.append(f"Looked in: {', '.join(str(p) for p in looked_in)}.")
    lines.append(
        "Then run `gentk data prepare " + dataset + "` to verify and convert them. The directory is data.root in the recipe, "
        "else $GENTK_DATA, else the per-user cache."
    )
    return "\n".join(lines)


def fetch(source: SourceFile, directory: Path, *, dataset: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `source` into `directory` (verified, atomically); return its path.

    A lock file next to the target makes concurrent callers (DDP ranks) wait for the first
    one instead of downloading again. Each mirror is tried in turn; if none delivers a
    file with the published checksums, a `DataMissingError` lists what was tried.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataMissingError(missing_message(dataset, [source], directory, f"cannot create the directory to download into ({exc})")) from None
    target = directory / source.download_name
    with filelock.FileLock(str(target) + ".lock"):
        existing = source.locate([directory])
        if existing is not None:
            return existing  # another rank finished the download while we waited
        failures = []
        for url in source.urls:
            try:
                _download(url, target, source, progress=progress, timeout=timeout)
                return target
            except (urllib.error.URLError, OSError, ChecksumError, CorruptFileError) as exc:
                failures.append(f"{url}: {exc}")
        tried = "; ".join(failures) or "no mirror is known"
        raise DataMissingError(missing_message(dataset, [source], directory, f"could not download {source.download_name} ({tried})"))


def _download(url: str, target: Path, source: SourceFile, *, progress: bool, timeout: float) -> None:
    from tqdm.auto import tqdm

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        verify(tmp, source)
        os.replace(tmp, target)  # atomic: readers see no file or the whole verified file
    finally:
        tmp.unlink(missing_ok=True)


def ensure_files(
    dataset: str,
    sources: Sequence[SourceFile],
    directories: Sequence[Path],
    download_dir: Path,
    *,
    download: bool,
    offline: bool,
    progress: bool = True,
) -> dict[str, Path]:
    """Find every source file, downloading the missing ones when allowed.

    Returns {source name: path}. Offline (or with downloads disabled) a missing file is a
    `DataMissingError` listing every missing file at once.
    """
    found = {s.name: s.locate(directories) for s in sources}
    missing = [s for s in sources if found[s.name] is None]
    if missing and (offline or not download):
        why = "offline mode (--offline) is on" if offline else "downloads are disabled (data.download = false)"
        raise DataMissingError(missing_message(dataset, missing, download_dir, f"{len(missing)} file(s) missing and {why}", directories))
    for s in missing:
        found[s.name] = fetch(s, download_dir, dataset=dataset, progress=progress)
    return found  # type: ignore[return-value]
