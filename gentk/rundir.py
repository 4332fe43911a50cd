"""The run directory (DESIGN.md §3): what a training run leaves on disk.

    runs/<recipe>-<YYYYmmdd-HHMMSS>/
      recipe.toml     the resolved recipe (extends merged, --set applied, defaults filled)
      env.json        versions, git revision, device, world size, command line
      metrics.h5      every logged scalar: one dataset per name, rows (step, value)
      metrics.jsonl   the same, one JSON object per log event: {"step": .., "name": value, ..}
      checkpoints/    see gentk.checkpoint
      samples/        step-NNNNNNNN.png sample grids, one per evaluation
      eval.json       the final evaluation

``metrics.h5`` is opened, appended to and closed at each log event, so it is readable
while the run goes on: ``h5py.File(path, "r", locking=False)["train/loss"]["step"]``.
Names with slashes become HDF5 groups. Only rank 0 writes any of these files.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from einops import rearrange
from PIL import Image

METRIC_DTYPE = np.dtype([("step", "<i8"), ("value", "<f8")])


def new_run_dir(base: str | Path, name: str) -> Path:
    """Create ``base/<name>-<time>`` (with a suffix if that exists already)."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (f"{name}-{stamp}" if n == 0 else f"{name}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"cannot create a fresh run directory for {name} under {base}")


def make_layout(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """What env.json records: enough to tell two runs' software and hardware apart."""

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env: dict[str, Any] = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "packages": {d: version(d) for d in ("gentk", "torch", "numpy", "h5py", "pluggy", "attrs", "einops", "Pillow", "tqdm")},
        "device": str(device),
        "world_size": world_size,
        "torch_threads": torch.get_num_threads(),
        "git": _git_revision(),
    }
    if device.type == "cuda":
        env["cuda"] = {"version": torch.version.cuda, "name": torch.cuda.get_device_name(device), "cudnn": torch.backends.cudnn.version()}
    return env


def _git_revision() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


class MetricsLog:
    """Appends scalars to metrics.h5 and metrics.jsonl."""

    def __init__(self, run_dir: Path) -> None:
        self.h5_path = run_dir / "metrics.h5"
        self.jsonl_path = run_dir / "metrics.jsonl"

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not scalars:
            return
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: _json_number(v) for k, v in scalars.items()}}) + "\n")
        with h5py.File(self.h5_path, "a") as f:
            for name, value in scalars.items():
                if name not in f:
                    f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=METRIC_DTYPE, chunks=(256,))
                data = f[name]
                data.resize((data.shape[0] + 1,))
                data[-1] = (step, float(value))

    def truncate(self, step: int) -> None:
        """Drop entries logged after `step` (what a run wrote after its last checkpoint)."""
        if self.jsonl_path.exists():
            keep = [line for line in self.jsonl_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            tmp = self.jsonl_path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.jsonl_path)
        if self.h5_path.exists():
            with h5py.File(self.h5_path, "a") as f:
                datasets: list[h5py.Dataset] = []
                f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
                for data in datasets:
                    n = int(np.searchsorted(data["step"], step, side="right"))
                    data.resize((n,))


def _json_number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf


def read_metrics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Every scalar series of a run (finished or running) as {name: array of (step, value)}."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(Path(run_dir) / "metrics.h5", "r", locking=False) as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def save_grid(images: torch.Tensor, path: Path, *, nrow: int, pad: int = 2) -> Path:
    """Write images (B, C, H, W) in [0, 1] as one PNG grid of `nrow` images per row."""
    images = images.detach().float().clamp(0, 1).cpu()
    b, c, h, w = images.shape
    rows = math.ceil(b / nrow)
    if rows * nrow > b:  # fill the last row with white
        images = torch.cat([images, torch.ones(rows * nrow - b, c, h, w)])
    images = torch.nn.functional.pad(images, (pad, 0, pad, 0), value=1.0)
    grid = rearrange(images, "(r n) c h w -> (r h) (n w) c", n=nrow)
    grid = torch.nn.functional.pad(grid, (0, 0, 0, pad, 0, pad), value=1.0)
    array = (grid * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
