"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, numbers,
strings, lists, dicts), so loading it with ``torch.load(weights_only=True)`` never
unpickles code:

    format       CHECKPOINT_FORMAT
    step         training steps done
    model        the model's state_dict
    ema          the EMA weights (a state_dict) or None
    optimizers   {training step name: optimizer state_dict}
    schedules    {training step name: scheduler state_dict}
    scalers      {training step name: GradScaler state_dict} (fp16 AMP only)
    data         [per rank: {"train": iterator state, "labeled": iterator state or None}]
    rng          [per rank: python, numpy, torch CPU and CUDA generator states]
    recipe       the resolved recipe as a dict (what `Recipe.to_dict` gives)
    image_shape  [C, H, W] of the data the model was built for
    best         {"name": metric, "value": float, "step": int} or None
    world_size   ranks that trained it

Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then
renamed over the target (and the directory fsync'ed), so a crash at any moment leaves
either the old file or the new one, never half of one. Layout of ``checkpoints/``:
``step-NNNNNNNN.pt`` files (the last ``keep_last`` kept), ``latest.pt`` and ``best.pt``
as hard links to one of them (a copy where links are not supported).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gentk.errors import TrainingError

CHECKPOINT_FORMAT = 1
LATEST = "latest.pt"
BEST = "best.pt"


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_save(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` so that readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def atomic_link(source: Path, target: Path) -> None:
    """Point `target` at `source`'s content atomically (hard link, or a copy)."""
    tmp = _temp_path(target)
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint '{path}' does not exist. Pass a run directory or a .pt file under its checkpoints/.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do
        raise TrainingError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}. It may be incomplete; pick another file in {path.parent}.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"'{path}' is not a gentk checkpoint of format {CHECKPOINT_FORMAT}.")
    return state


# --------------------------------------------------------------------------- the checkpoints/ folder


def step_file(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def save(state: dict[str, Any], directory: str | Path, *, keep_last: int, best: bool = False) -> Path:
    """Save a periodic checkpoint, point ``latest.pt`` (and ``best.pt``) at it, prune old ones.

    Returns the step file. Files named by ``best.pt`` survive pruning through their link.
    """
    directory = Path(directory)
    path = atomic_save(state, step_file(directory, state["step"]))
    atomic_link(path, directory / LATEST)
    if best:
        atomic_link(path, directory / BEST)
    periodic = sorted(directory.glob("step-*.pt"))
    for old in periodic[:-keep_last]:
        old.unlink()
    for stale in directory.glob(".*.tmp-*"):  # left by a process killed mid-write
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            stale.unlink(missing_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(resume: str | Path) -> Path:
    """The checkpoint file a ``--resume PATH`` means: a file, a run directory or its checkpoints/."""
    path = Path(resume)
    for candidate in (path, path / "checkpoints" / LATEST, path / LATEST):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise TrainingError(f"'{path}' holds no checkpoint (looked for checkpoints/{LATEST}). The run may have stopped before its first checkpoint; start it again without --resume.")
    raise TrainingError(f"--resume '{path}': no such file or directory. Pass a run directory (runs/NAME-TIME), a checkpoint file, or 'auto'.")


def latest_run(base: str | Path, name: str) -> Path | None:
    """The newest run directory of recipe `name` under `base` that holds a checkpoint."""
    base = Path(base)
    if not base.is_dir():
        return None
    runs = [d for d in base.glob(f"{name}-*") if (d / "checkpoints" / LATEST).is_file()]
    if not runs:
        return None
    return max(runs, key=lambda d: ((d / "checkpoints" / LATEST).stat().st_mtime, d.name))


# --------------------------------------------------------------------------- random number generators


def rng_state() -> dict[str, Any]:
    """Every global RNG state of this process, as plain data (safe for weights_only)."""
    version, internal, gauss = random.getstate()
    numpy = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": numpy["bit_generator"],
            "key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy["bit_generator"],
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class preserved_rng:
    """Run a block (an evaluation, a sample grid) without moving any global RNG.

    Training then draws the same random numbers whether or not, and however often, the
    run evaluates: a run with eval.every = 100 trains exactly like one with 1000.
    """

    def __enter__(self):
        self.state = rng_state()
        return self

    def __exit__(self, *exc):
        set_rng_state(self.state)
        return False


def plain(value: Any) -> Any:
    """Convert NumPy values in nested containers to tensors / Python numbers (weights_only-safe)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value
