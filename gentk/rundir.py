"""The run directory: what a training run leaves on disk.

    runs/<recipe>-<YYYYmmdd-HHMMSS>/
      recipe.toml     the resolved recipe (extends merged, --set applied, defaults filled)
      env.json        versions, git revision, device, world size, command line, CPU count
                      and load at the start; the environments of earlier processes of the
                      run under "history"
      run.lock        locked while a process trains the run (run.lock.pid: its pid)
      metrics.h5      every logged scalar: one dataset per name, rows (step, value)
      metrics.jsonl   the same, one JSON object per log event: {"step": .., "name": value, ..}
      checkpoints/    see gentk.checkpoint
      samples/        step-NNNNNNNN.png sample grids, one per evaluation
      eval.json       the final evaluation

``metrics.h5`` is opened, appended to and closed at each log event, so it is readable
while the run goes on: ``h5py.File(path, "r", locking=False)["train/loss"]["step"]``.
Names with slashes become HDF5 groups. Only rank 0 writes any of these files.

A write that fails (a full disk, a read-only place) is a `StorageError` naming the file;
a resumed run repairs metrics files that such a failure or a kill left damaged.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image

from gentk import grid
from gentk.errors import StorageError, TrainingError

METRIC_DTYPE = np.dtype([("step", "<i8"), ("value", "<f8")])


def new_run_dir(base: str | Path, name: str) -> Path:
    """Create ``base/<name>-<time>`` (with a suffix if that exists already)."""
    base = Path(base)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = base / (f"{name}-{stamp}" if n == 0 else f"{name}-{stamp}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
    except OSError as exc:
        raise storage_error(exc, base) from None
    raise FileExistsError(f"cannot create a fresh run directory for {name} under {base}")


def make_layout(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)


def write_text(path: Path, text: str) -> None:
    """Replace a file's text atomically: a process killed at any moment leaves the old text or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # the command line sets PASSIVE (gentk.process)
        "cpus": os.cpu_count(),
        "load_avg": machine_load(),  # 1, 5 and 15 minutes: was the machine busy when the run (re)started?
        "git": _git_revision(),
    }
    if device.type == "cuda":
        env["cuda"] = {"version": torch.version.cuda, "name": torch.cuda.get_device_name(device), "cudnn": torch.backends.cudnn.version()}
    return env


def machine_load() -> list[float] | None:
    """The load average over 1, 5 and 15 minutes (runnable processes; compare with the CPU count), None where the OS has none (Windows).

    Logged with the run's times so that a reader can tell a slow run from a busy machine.
    """
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# Scalars that read the machine or its clock rather than the model: two runs of one recipe
# differ in them, so comparisons of runs (a resume against an uninterrupted run) leave them out.
MACHINE_PREFIXES = ("speed/", "time/", "machine/")


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
        path = self.jsonl_path
        try:
            with path.open("a") as f:
                f.write(json.dumps({"step": step, **{k: _json_number(v) for k, v in scalars.items()}}) + "\n")
            path = self.h5_path
            with h5py.File(path, "a") as f:
                _append(f, step, scalars)
        except OSError as exc:
            raise storage_error(exc, path) from None

    def truncate(self, step: int) -> list[str]:
        """Drop entries logged after `step` (what a run wrote after its last checkpoint).

        Repairs what a cut write or a kill left: a partial last line of metrics.jsonl is
        dropped; a damaged file is moved aside (``*.damaged``) and rebuilt from the other.
        Returns one sentence per repair, for the user; both files damaged is an error.
        """
        notes: list[str] = []
        events, jsonl_problem = self._read_jsonl(notes)
        h5_problem = self._check_h5()
        if jsonl_problem and h5_problem:
            raise TrainingError(
                f"cannot resume: both metrics files of {self.jsonl_path.parent} are damaged ({jsonl_problem}; {h5_problem}), so there is "
                "nothing to rebuild them from. "
                "The checkpoints are not affected: move both aside (mv metrics.jsonl metrics.jsonl.old; mv metrics.h5 metrics.h5.old) and "
                f"resume again; the metrics then start afresh at step {step}."
            )
        if events is not None:
            events = [e for e in events if e["step"] <= step]
        if h5_problem:
            if self.h5_path.exists():
                os.replace(self.h5_path, self.h5_path.with_name("metrics.h5.damaged"))
                notes.append(f"metrics.h5 was damaged ({h5_problem}); moved it to metrics.h5.damaged and rebuilt it from metrics.jsonl.")
            else:
                notes.append("metrics.h5 was missing; rebuilt it from metrics.jsonl.")
            self._write_h5(events)
        elif self.h5_path.exists():
            with h5py.File(self.h5_path, "a") as f:
                for data in _datasets(f):
                    data.resize((int(np.searchsorted(data["step"], step, side="right")),))
                # a series first logged after `step` is cut to no rows, as if it were absent
                rows = {data.name.lstrip("/"): data.shape[0] for data in _datasets(f) if data.shape[0]}
            expected = _rows_per_name(events) if events is not None else rows
            if rows != expected:  # metrics.jsonl is written first
                self._write_h5(events)
                short = sorted(name for name in set(rows) | set(expected) if rows.get(name, 0) != expected.get(name, 0))
                notes.append(
                    f"metrics.h5 lacked rows that metrics.jsonl holds ({short[0]}: {rows.get(short[0], 0)} rows against {expected.get(short[0], 0)}"
                    f"{f', and {len(short) - 1} more series' if len(short) > 1 else ''}; a write cut short between the two files, e.g. by a "
                    "kill); rebuilt it from metrics.jsonl."
                )
        if jsonl_problem:
            if self.jsonl_path.exists():
                os.replace(self.jsonl_path, self.jsonl_path.with_name("metrics.jsonl.damaged"))
                notes.append(f"metrics.jsonl was damaged ({jsonl_problem}); moved it to metrics.jsonl.damaged and rebuilt it from metrics.h5.")
            else:
                notes.append("metrics.jsonl was missing; rebuilt it from metrics.h5.")
            events = self._events_from_h5(step)
        if events is not None:
            tmp = self.jsonl_path.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(json.dumps(e) + "\n" for e in events))
            os.replace(tmp, self.jsonl_path)
        return notes

    def logged(self, step: int, prefix: str) -> bool:
        """Whether metrics.jsonl has a scalar whose name starts with `prefix` at `step`."""
        if not self.jsonl_path.exists():
            return False
        for line in self.jsonl_path.read_text().splitlines():
            event = json.loads(line)
            if event["step"] == step and any(k.startswith(prefix) for k in event):
                return True
        return False

    def _read_jsonl(self, notes: list[str]) -> tuple[list[dict] | None, str | None]:
        """(events, None), or (None, what is wrong); (None, None) when neither file exists."""
        if not self.jsonl_path.exists():
            return None, ("it is missing" if self.h5_path.exists() else None)
        lines = [line for line in self.jsonl_path.read_bytes().decode("utf-8", errors="replace").splitlines() if line.strip()]
        events, bad = [], []
        for number, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
                if not isinstance(event, dict) or not isinstance(event.get("step"), int):
                    raise ValueError(line)
                events.append(event)
            except ValueError:
                bad.append(number)
        if bad == [len(lines)]:
            notes.append(f"metrics.jsonl ended in a partial line (a write cut short, e.g. by a full disk or a kill); dropped it: {lines[-1][:60]!r}.")
        elif bad:
            return None, f"metrics.jsonl line {bad[0]} is not a JSON record"
        return events, None

    def _check_h5(self) -> str | None:
        if not self.h5_path.exists():
            return "metrics.h5 is missing" if self.jsonl_path.exists() else None
        try:
            with h5py.File(self.h5_path, "r") as f:
                for data in _datasets(f):
                    if data.dtype != METRIC_DTYPE:
                        return f"metrics.h5: '{data.name}' is not a (step, value) series"
                    data["step"]
        except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError ... on a damaged file
            return f"metrics.h5 cannot be read: {' '.join(str(exc).split())}"
        return None

    def _write_h5(self, events: list[dict]) -> None:
        tmp = self.h5_path.with_name(".metrics.h5.tmp")
        with h5py.File(tmp, "w") as f:
            for event in events:
                _append(f, event["step"], {k: float(v) for k, v in event.items() if k != "step"})
        os.replace(tmp, self.h5_path)

    def _events_from_h5(self, step: int) -> list[dict]:
        """One JSON record per step, from the (step, value) series (events of one step merged)."""
        by_step: dict[int, dict] = {}
        with h5py.File(self.h5_path, "r") as f:
            for data in _datasets(f):
                for s, value in data[()]:
                    if s <= step:
                        by_step.setdefault(int(s), {"step": int(s)})[data.name.lstrip("/")] = _json_number(value)
        return [by_step[s] for s in sorted(by_step)]


def _rows_per_name(events: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        for name in event:
            if name != "step":
                counts[name] = counts.get(name, 0) + 1
    return counts


def _datasets(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _append(f: h5py.File, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
        if name not in f:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=METRIC_DTYPE, chunks=(256,))
        data = f[name]
        data.resize((data.shape[0] + 1,))
        data[-1] = (step, float(value))


# --------------------------------------------------------------------------- failures and the run's lock

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_ALLOWED = (errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(
    exc: OSError,
    path: str | Path | None = None,
    *,
    kept: str = "Nothing written before is lost: files are replaced atomically, and a run continues from its last checkpoint with --resume.",
) -> StorageError:
    """A one-paragraph error for a write that failed: which file, why, and what to do."""
    path = exc.filename or path
    reason = exc.strerror or " ".join(str(exc).split())
    if exc.errno in FULL:
        advice = "The disk is full: free space there (old runs, old checkpoints; train.keep_last keeps fewer) and run the same command again."
    elif exc.errno in NOT_ALLOWED:
        advice = "gentk may not write there: make the place writable, or choose another one (gentk run --out DIR, gentk sample --out FILE)."
    else:
        advice = "Check the disk, then run the same command again."
    return StorageError(f"cannot write {path}: {reason}. {advice} {kept}")


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL + NOT_ALLOWED


@contextlib.contextmanager
def claim(run_dir: str | Path, *, fresh: bool = False) -> Iterator[Path]:
    """Hold the run directory's lock while a process trains it; on failure remove a fresh, empty one.

    A second process that asks for the lock gets a `TrainingError` naming the holder's pid
    (the lock goes with its process, however that process ends). `fresh`: the directory was
    made for this run; if the run fails before writing any file into it, it is removed.
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    lock = FileLock(run_dir / "run.lock")
    pid_file = run_dir / "run.lock.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = pid_file.read_text().strip() if pid_file.is_file() else "?"
        raise TrainingError(
            f"{run_dir} is being trained by another process (process {holder} holds {run_dir / 'run.lock'}). Two processes must not train one "
            f"run: wait for it to end, or stop it (kill {holder}) and resume again."
        ) from None
    try:
        pid_file.write_text(f"{os.getpid()}\n")
        yield run_dir
    except BaseException:
        if fresh and not any(p.is_file() and p.name not in ("run.lock", "run.lock.pid") for p in run_dir.rglob("*")):
            lock.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if lock.is_locked:
            pid_file.unlink(missing_ok=True)
            lock.release()


def write_environment(run_dir: Path, env: dict[str, Any], step: int) -> None:
    """env.json: this process's environment; those of earlier processes of the run stay under "history"."""
    path = run_dir / "env.json"
    history: list[Any] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            history = previous.pop("history", []) + [previous]
        except ValueError:
            history = []  # a damaged env.json: its history is lost, the new one is right
    write_json(path, {**env, "start_step": step, "history": history})


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
    """Write images (B, C, H, W) in [0, 1] as one PNG grid of `nrow` images per row (`gentk.grid.tile`)."""
    return save_png(grid.to_image(grid.tile(images, nrow=nrow, pad=pad)), path)


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PIL image as PNG in one step: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
