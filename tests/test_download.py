"""Downloads: mirrors in order, checksum verification, atomic writes, one download under a lock.

Mirrors are file:// URLs to files the tests write, so no network is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path

import pytest

import gentk.download as download
from gentk.download import Checksum, ChecksumError, CorruptFileError, DataMissingError, SourceFile, cache_root, data_root, ensure_files, fetch, verify

CONTENT = b"gentk test payload\n" * 1000


def published(tmp_path: Path, content: bytes = CONTENT, name: str = "payload.bin") -> Path:
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    path = server / (name + ".gz")
    path.write_bytes(gzip.compress(content))
    return path


def source(*urls: str, content: bytes = CONTENT) -> SourceFile:
    return SourceFile(
        "payload.bin", tuple(urls), (Checksum("sha256", hashlib.sha256(content).hexdigest()), Checksum("md5", hashlib.md5(content).hexdigest()))
    )


def test_fetch_tries_mirrors_in_order_and_verifies(tmp_path):
    good = published(tmp_path)
    dead = (tmp_path / "nowhere" / "payload.bin.gz").as_uri()
    target_dir = tmp_path / "data" / "toy"
    path = fetch(source(dead, good.as_uri()), target_dir, dataset="toy", progress=False)
    assert path == target_dir / "payload.bin.gz"
    assert gzip.decompress(path.read_bytes()) == CONTENT
    assert sorted(p.name for p in target_dir.iterdir()) == ["payload.bin.gz", "payload.bin.gz.lock"], "no temporary file is left"
    assert fetch(source("file:///never/used"), target_dir, dataset="toy") == path, "a present file is not fetched again"


def test_a_corrupt_download_is_rejected_and_leaves_nothing(tmp_path):
    bad = published(tmp_path, content=b"something else")
    target_dir = tmp_path / "data"
    with pytest.raises(DataMissingError) as err:
        fetch(source(bad.as_uri()), target_dir, dataset="toy", progress=False)
    message = str(err.value)
    assert "could not download payload.bin.gz" in message and "sha256" in message and str(target_dir) in message
    assert [p.name for p in target_dir.iterdir()] == ["payload.bin.gz.lock"]


def test_concurrent_fetches_download_once(tmp_path, monkeypatch):
    good = published(tmp_path)
    calls = []
    real = download._download

    def slow(url, target, src, **kwargs):
        calls.append(url)
        threading.Event().wait(0.2)  # hold the lock long enough for the other caller to wait on it
        real(url, target, src, **kwargs)

    monkeypatch.setattr(download, "_download", slow)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch(source(good.as_uri()), tmp_path / "d", dataset="toy", progress=False))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3


def test_ensure_files_downloads_only_when_allowed(tmp_path):
    good = published(tmp_path)
    src = source(good.as_uri())
    with pytest.raises(DataMissingError) as err:
        ensure_files("toy", [src], [tmp_path / "d"], tmp_path / "d", download=True, offline=True)
    message = str(err.value)
    assert "payload.bin.gz" in message and hashlib.sha256(CONTENT).hexdigest() in message and good.as_uri() in message
    assert str(tmp_path / "d") in message and "offline" in message
    found = ensure_files("toy", [src], [tmp_path / "d"], tmp_path / "d", download=True, offline=False, progress=False)
    assert found["payload.bin"] == tmp_path / "d" / "payload.bin.gz"


def test_verify_accepts_recompressed_and_plain_copies(tmp_path):
    src = source()
    plain = tmp_path / "payload.bin"
    plain.write_bytes(CONTENT)
    recompressed = tmp_path / "other.gz"
    recompressed.write_bytes(gzip.compress(CONTENT, compresslevel=1, mtime=12345))
    assert verify(plain, src) == verify(recompressed, src) == hashlib.sha256(CONTENT).hexdigest()
    plain.write_bytes(CONTENT[:-1])
    with pytest.raises(ChecksumError, match="payload.bin: its content has sha256"):
        verify(plain, src)
    recompressed.write_bytes(recompressed.read_bytes()[:40])
    with pytest.raises(CorruptFileError, match="other.gz: the gzip archive is truncated"):
        verify(recompressed, src)


def test_locations_follow_recipe_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GENTK_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("GENTK_CACHE", str(tmp_path / "cache"))
    assert data_root(tmp_path / "recipe") == tmp_path / "recipe"
    assert data_root() == tmp_path / "env"
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("GENTK_DATA")
    monkeypatch.delenv("GENTK_CACHE")
    assert data_root().name == "data" and cache_root().name == "hdf5"
    assert data_root().parent == cache_root().parent, "both default to the per-user cache directory"
