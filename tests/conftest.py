"""Shared fixtures: fresh plugin managers and toy components for foundation tests.

Tests never share a plugin manager: each builds its own with `gentk.load_plugins`.
GENTK_DATA points at ../shared/data when it exists (as in CI), so data tests find real
MNIST; tests that need an absent file skip and say which.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if "GENTK_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["GENTK_DATA"] = str(SHARED_DATA)
# Tests must not depend on whatever third-party plugins the environment has installed.
os.environ.setdefault("GENTK_DISABLE_PLUGIN_AUTOLOAD", "1")
# Started as a shell script's background job, pytest ignores SIGINT, and so would the runs it
# starts (an ignored signal stays ignored, across exec too): the signal tests need the
# terminal's behaviour wherever the suite runs.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny networks are faster so, and the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy_plugins():
    from gentk.plugins import load_plugins

    return load_plugins(builtin=("gentk.optim",), plugins=["toyplugin"], autoload=False)


@pytest.fixture
def write(tmp_path):
    """write("name.toml", text) -> path of a file in tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def generators_like_cuda(monkeypatch):
    """torch.rand and torch.randn refuse a generator of another device than the tensor's, as CUDA
    refuses a CPU generator for a CUDA tensor: a model on the meta device then plays one on a GPU."""
    import torch

    def strict(draw):
        def draw_strictly(*shape, generator=None, device=None, **options):
            if generator is not None and torch.device(device or "cpu") != generator.device:
                raise RuntimeError(f"Expected a '{torch.device(device).type}' device type for generator but found '{generator.device.type}'")
            return draw(*shape, generator=generator, device=device, **options)

        return draw_strictly

    for name in ("rand", "randn"):
        monkeypatch.setattr(torch, name, strict(getattr(torch, name)))


@pytest.fixture
def signal_group_when():
    """signal_group_when(process, ready, signum) -> (stdout, stderr): once ready() holds, signal the
    process's group (started with start_new_session=True, as a terminal's foreground job) and wait."""
    import time

    def send(process, ready, signum, *, wait_s: float = 120, exit_s: float = 120):
        try:
            deadline = time.monotonic() + wait_s
            while not ready():
                assert time.monotonic() < deadline and process.poll() is None, process.communicate()
                time.sleep(0.05)
            os.killpg(process.pid, signum)
            return process.communicate(timeout=exit_s)
        finally:  # nothing of the group outlives the test, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    return send
