"""Checkpoints: atomic writes (even under SIGKILL), weights_only loading, RNG states, layout."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from gentk import checkpoint
from gentk.errors import TrainingError


def state(step: int, size: int = 4) -> dict:
    rest = {key: None for key in checkpoint.RUN_KEYS}  # every key a run's checkpoint has
    return {**rest, "format": checkpoint.CHECKPOINT_FORMAT, "step": step, "model": {"w": torch.full((size,), float(step))}}


def test_save_links_latest_and_best_and_keeps_the_last_n(tmp_path):
    for step in range(1, 6):
        checkpoint.save(state(step), tmp_path, keep_last=2, best=step == 2)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000004.pt", "step-00000005.pt"]
    assert checkpoint.load(tmp_path / "latest.pt")["step"] == 5
    assert checkpoint.load(tmp_path / "best.pt")["step"] == 2  # survives pruning of its step file
    assert not list(tmp_path.glob(".*tmp*"))


def test_load_refuses_pickled_code_and_foreign_files(tmp_path):
    import fractions

    # an instance of a class: loading it would run that class's unpickling code
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "step": 1, "model": fractions.Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(TrainingError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="not a gentk checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:50])
    with pytest.raises(TrainingError, match="may be incomplete"):
        checkpoint.load(tmp_path / "cut.pt")
    with pytest.raises(TrainingError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_find_accepts_a_run_directory_or_a_file(tmp_path):
    run = tmp_path / "vae-20260101-000000"
    checkpoint.save(state(3), run / "checkpoints", keep_last=1)
    assert checkpoint.find(run) == run / "checkpoints" / "latest.pt"
    assert checkpoint.find(run / "checkpoints" / "step-00000003.pt").name == "step-00000003.pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="holds no checkpoint"):
        checkpoint.find(tmp_path / "empty")
    assert checkpoint.latest_run(tmp_path, "vae") == run
    assert checkpoint.latest_run(tmp_path, "aae") is None


def test_rng_state_round_trip_restores_every_generator():
    saved = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    checkpoint.set_rng_state(saved)
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])
    # plain data only: it survives a weights_only load
    torch.save(saved, buf := __import__("io").BytesIO())
    buf.seek(0)
    checkpoint.set_rng_state(torch.load(buf, weights_only=True))
    assert random.random() == first[0]


def test_preserved_rng_leaves_the_generators_where_they_were():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    with checkpoint.preserved_rng():
        torch.rand(100)
        np.random.rand(7)
    assert torch.equal(torch.rand(2), expected)


def test_each_rank_saves_and_restores_its_own_gpu_generator(monkeypatch):
    # A mocked torch.cuda with 2 visible GPUs; a checkpoint of a machine with 4 held every GPU's state
    # (set_rng_state_all then raised an IndexError here), and this rank runs on GPU 1.
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    restored = []

    def set_all(new_states):
        if len(new_states) > len(states):
            raise IndexError("list index out of range")
        states.update(enumerate(new_states))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states.values()))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new_state, device="cuda": restored.append((new_state.tolist(), torch.device(device))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    gpu = torch.device("cuda", 1)

    saved = checkpoint.rng_state(gpu)
    assert [s.tolist() for s in saved["cuda"]] == [[1]]  # this rank's GPU only
    checkpoint.set_rng_state(saved, gpu)
    older = {**saved, "cuda": [torch.tensor([10 + i], dtype=torch.uint8) for i in range(4)]}  # one per GPU of a 4-GPU machine
    checkpoint.set_rng_state(older, gpu)
    assert restored == [([1], gpu), ([11], gpu)]
    assert checkpoint.rng_state(torch.device("cpu"))["cuda"] == []  # a CPU run has no GPU state


WRITER = textwrap.dedent(
    """
    import sys, torch
    from gentk import checkpoint
    directory = sys.argv[1]
    rest = {key: None for key in checkpoint.RUN_KEYS}
    checkpoint.save({**rest, "format": checkpoint.CHECKPOINT_FORMAT, "step": 1, "model": {"w": torch.ones(4)}}, directory, keep_last=3)
    print("first saved", flush=True)
    big = {**rest, "format": checkpoint.CHECKPOINT_FORMAT, "step": 2, "model": {"w%d" % i: torch.rand(1_000_000) for i in range(10)}}
    while True:  # keep writing the big one until killed
        checkpoint.save(big, directory, keep_last=3)
    """
)


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    directory = tmp_path / "checkpoints"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "first saved"
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in directory.glob(".step-00000002.pt.tmp-*") if p.exists()):
            assert time.monotonic() < deadline, "the writer never started the second checkpoint"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)  # mid-write: the temporary file is partly written
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    latest = checkpoint.load(directory / "latest.pt")
    assert latest["step"] in (1, 2)  # the old one, or the new one if its rename had happened
    if latest["step"] == 1:
        assert torch.equal(latest["model"]["w"], torch.ones(4))
    leftovers = list(directory.glob(".*.tmp-*"))
    # the next save of another process removes what the killed writer left behind
    checkpoint.save(state(3), directory, keep_last=3)
    assert leftovers and not any(p.exists() for p in leftovers)
