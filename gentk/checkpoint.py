"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is one ``torch.save`` file of a `TrainState` (its docstring lists every key),
holding plain data only (tensors, numbers, strings, lists, dicts), so loading it with
``torch.load(weights_only=True)`` never unpickles code. The engine builds a `TrainState`
to save and restores a run from the `TrainState` it loads.

Loading checks the format, the checksum and that every key a run needs is there, so a
file damaged after it was written (a flipped bit, a truncated copy) is an error that
names the file, never weights that load and train on as NaN. Files of format 1 (before
the checksum and the log interval) still load, unchecked, and resume.

Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then
renamed over the target (and the directory fsync'ed), so a crash at any moment leaves
either the old file or the new one, never half of one. Layout of ``checkpoints/``:
``step-NNNNNNNN.pt`` files (the last ``keep_last`` kept), ``latest.pt`` and ``best.pt``
as hard links to one of them (a copy where links are not supported).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from gentk.errors import TrainingError

CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: without checksum, interval
LATEST = "latest.pt"
BEST = "best.pt"


@attrs.define(eq=False)
class TrainState:
    """A run's state at one step, as a checkpoint holds it: one field per key of the file.

        format       CHECKPOINT_FORMAT (written by `to_dict`; not a field)
        step         training steps done
        model        the model's state_dict
        ema          the EMA weights (a state_dict), or None when train.ema = 0
        optimizers   {training step name: optimizer state_dict}
        schedules    {training step name: scheduler state_dict}
        scalers      {training step name: GradScaler state_dict} (fp16 AMP only; else {})
        data         [per rank: {"train": iterator state, "labeled": iterator state or None}]
        rng          [per rank: python, numpy, torch CPU and its own GPU's generator states (`rng_state`)]
        recipe       the resolved recipe as a dict (what `Recipe.to_dict` gives)
        image_shape  [C, H, W] of the data the model was built for
        best         {"name": metric, "value": float, "step": int} of best.pt, or None
        world_size   ranks that trained it
        elapsed      seconds the run has spent so far, over resumes (train.minutes counts
                     them); 0.0 when a file has none
        interval     [per rank: {"sums": {scalar: running sum}, "counted": steps}] of the log
                     interval in progress, so that a resumed run logs the same means; None
                     in format 1
        cpu_elapsed  CPU seconds this process and the earlier ones of the run used (rank 0's
                     ``time/cpu_minutes``); 0.0 when a file has none
        checksum     SHA-256 of everything above (see `content_digest`), added by
                     `atomic_save` and checked by `load` (format 2; not a field)

    The keys up to ``world_size`` are required (`RUN_KEYS`); ``elapsed``, ``interval`` and
    ``cpu_elapsed`` may be missing from older files.
    """

    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizers: dict[str, Any]
    schedules: dict[str, Any]
    scalers: dict[str, Any]
    data: list[dict[str, Any]]
    rng: list[dict[str, Any]]
    recipe: dict[str, Any]
    image_shape: list[int]
    best: dict[str, Any] | None
    world_size: int
    elapsed: float = 0.0
    interval: list[dict[str, Any]] | None = None
    cpu_elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint file's content, keys in the order above (without the checksum)."""
        return {"format": CHECKPOINT_FORMAT, **attrs.asdict(self, recurse=False)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        """From what `load` returned (format 1 or 2)."""
        return cls(**{field.name: state[field.name] for field in attrs.fields(cls) if field.name in state})

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TrainState:
        """`load` a checkpoint file (checked) as a `TrainState`."""
        return cls.from_dict(load(path, map_location))

    def log_interval(self, rank: int) -> tuple[dict[str, float], int]:
        """Rank `rank`'s running sums and step count of the log interval the checkpoint was written in (``({}, 0)`` in format 1)."""
        if self.interval is None:
            return {}, 0
        mine = self.interval[rank]
        return {k: float(v) for k, v in mine["sums"].items()}, int(mine["counted"])


RUN_KEYS = tuple(field.name for field in attrs.fields(TrainState) if field.default is attrs.NOTHING)


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


def content_digest(value: Any) -> str:
    """SHA-256 of nested plain data: keys, types, numbers, strings, and each tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            digest.update(f"D{len(v)}".encode())
            for key in sorted(v, key=repr):
                feed(key)
                feed(v[key])
        elif isinstance(v, (list, tuple)):
            digest.update(f"L{len(v)}".encode())
            for item in v:
                feed(item)
        else:  # None, bool, int, float, str: repr tells their types apart (1, 1.0, True, "1")
            digest.update(f"S{v!r};".encode())

    feed(value)
    return digest.hexdigest()


def atomic_save(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` so that readers see the old file or the complete new one.

    The file gets a ``checksum`` of the state's content (the caller's dict is not changed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    state = {k: v for k, v in state.items() if k != "checksum"}
    state["checksum"] = content_digest(state)
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
    """Read a checkpoint with ``weights_only=True``; check its format, checksum and keys."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint '{path}' does not exist. Pass a run directory or a .pt file under its checkpoints/.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and what to do (never torch's advice to unpickle code)
        unsafe = _unsafe_global(exc)
        if unsafe is not None:
            raise TrainingError(
                f"cannot read checkpoint '{path}': it holds a Python object of type {unsafe}, and gentk checkpoints hold plain data only "
                "(tensors, numbers, strings, lists, dicts), so that loading one never runs code. gentk did not write this file, or it was "
                f"changed since; pick another file in {path.parent}."
            ) from None
        raise TrainingError(
            f"cannot read checkpoint '{path}': {type(exc).__name__}: {_one_line(exc)}. It may be incomplete; pick another file in {path.parent}."
        ) from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise TrainingError(f"'{path}' is not a gentk checkpoint of format {CHECKPOINT_FORMAT}.")
    if state["format"] >= 2:
        stored = state.pop("checksum", None)
        if stored != content_digest(state):
            raise TrainingError(
                f"checkpoint '{path}' is damaged: its content does not match the checksum written with it "
                f"({'none' if stored is None else 'a different one'}), so a weight or a state changed after it was saved (a disk or copy "
                f"error). Its values cannot be trusted; resume from another file in {path.parent} (a run directory resumes from the newest "
                "intact one by itself)."
            )
    missing = [key for key in RUN_KEYS if key not in state]
    if missing:
        raise TrainingError(
            f"checkpoint '{path}' has no {', '.join(repr(k) for k in missing)}: it is not a complete gentk checkpoint (the engine writes "
            f"{', '.join(RUN_KEYS)}). It was cut or edited after it was written; use another file in {path.parent}."
        )
    return state


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()).rstrip(".")


def _unsafe_global(exc: BaseException) -> str | None:
    """The class torch's weights-only unpickler refused, if that was the error."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
    return match.group(1) if match else None


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path, *, ema: bool = True) -> None:
    """Put a checkpoint's weights into `model` (its EMA weights, when the run kept them and `ema`)."""
    try:
        model.load_state_dict(state["model"])
        if ema and state["ema"]:
            live = model.state_dict()
            with torch.no_grad():
                for key, value in state["ema"].items():
                    live[key].copy_(value)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise TrainingError(
            f"checkpoint '{path}' does not fit the model its own recipe builds: {_one_line(exc)}. The file was changed after the run wrote it, "
            f"or comes from another version of a plugin; use another file in {Path(path).parent}."
        ) from None


# --------------------------------------------------------------------------- the checkpoints/ folder


def step_file(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.pt"


def save(state: dict[str, Any], directory: str | Path, *, keep_last: int, best: bool = False) -> Path:
    """Save a periodic checkpoint, point ``latest.pt`` (and ``best.pt``) at it, prune old ones.

    Returns the step file. Files named by ``best.pt`` survive pruning through their link.
    """
    directory = Path(directory)
    path = step_file(directory, state["step"])
    try:
        atomic_save(state, path)
        atomic_link(path, directory / LATEST)
        if best:
            atomic_link(path, directory / BEST)
        periodic = sorted(directory.glob("step-*.pt"))
        for old in periodic[:-keep_last]:
            old.unlink()
    except OSError as exc:  # a full disk, a read-only directory: what was saved before stays
        from gentk.rundir import storage_error

        raise storage_error(
            exc, path, kept=f"The previous checkpoint is intact ({LATEST} still names it), and the run continues from it with --resume."
        ) from None
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
    """The checkpoint file a ``--resume PATH`` means: a file, a run directory or its checkpoints/.

    For a directory that is its ``latest.pt``, even when only step files are left: then
    `load_resumable` falls back to them.
    """
    path = Path(resume)
    for candidate in (path, path / "checkpoints" / LATEST, path / LATEST):
        if candidate.is_file():
            return candidate
    for directory in (path / "checkpoints", path):
        if any(directory.glob("step-*.pt")):
            return directory / LATEST
    if path.is_dir():
        raise TrainingError(
            f"'{path}' holds no checkpoint (looked for checkpoints/{LATEST}). The run may have stopped before its first checkpoint; start it "
            "again without --resume."
        )
    raise TrainingError(f"--resume '{path}': no such file or directory. Pass a run directory (runs/NAME-TIME), a checkpoint file, or 'auto'.")


def latest_run(base: str | Path, name: str) -> Path | None:
    """The newest run directory of recipe `name` under `base` that holds a checkpoint."""
    base = Path(base)
    if not base.is_dir():
        return None
    newest = {}
    for run in base.glob(f"{name}-*"):
        files = [p for p in (run / "checkpoints").glob("*.pt") if p.name != BEST] if (run / "checkpoints").is_dir() else []
        if files:
            newest[run] = max(p.stat().st_mtime for p in files)
    if not newest:
        return None
    return max(newest, key=lambda d: (newest[d], d.name))


def load_resumable(path: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any], str | None]:
    """Load the checkpoint to resume from: ``(file, state, note)``.

    A ``latest.pt`` that is missing or damaged gives way to the newest intact
    ``step-*.pt`` beside it; `note` then says which files were passed over (else None).
    Any other file is loaded as it is.
    """
    path = Path(path)
    if path.name != LATEST:
        return path, load(path, map_location), None
    skipped = []
    if path.is_file():
        try:
            return path, load(path, map_location), None
        except TrainingError as exc:
            skipped.append((path, str(exc)))
    for candidate in sorted(path.parent.glob("step-*.pt"), reverse=True):
        try:
            state = load(candidate, map_location)
        except TrainingError as exc:
            skipped.append((candidate, str(exc)))
            continue
        passed = ([] if path.is_file() else [f"there is no {LATEST}"]) + [f"{p.name} is unusable ({why.rstrip('.')})" for p, why in skipped]
        return candidate, state, f"{'; '.join(passed)}. Resuming from {candidate.name} (step {state['step']}) instead."
    if skipped:
        raise TrainingError(f"no intact checkpoint in {path.parent}: " + " ".join(why for _, why in skipped))
    raise TrainingError(
        f"'{path.parent}' holds no checkpoint. The run may have stopped before its first checkpoint; start it again without --resume."
    )


# --------------------------------------------------------------------------- random number generators


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states a run draws from, as plain data (safe for weights_only).

    Python's, NumPy's, torch's CPU generator and, when `device` is a GPU, that GPU's
    generator: a rank draws on its own GPU only, and the states of every visible GPU would
    not fit where a run resumes with fewer visible (``"cuda"``: a list of one state, or
    none).
    """
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
        "cuda": [torch.cuda.get_rng_state(device)] if _on_gpu(device) else [],
    }
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what `rng_state` captured; its GPU state goes to `device`.

    Checkpoints written before gentk saved the rank's own GPU only hold one state per GPU
    that was visible: `device`'s index picks the rank's own (none is restored when that
    GPU was not among them).
    """
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
    saved = state["cuda"]
    if _on_gpu(device) and saved:
        index = 0 if len(saved) == 1 else device.index
        if index < len(saved):
            torch.cuda.set_rng_state(saved[index].cpu(), device)


def _on_gpu(device: torch.device | None) -> bool:
    return device is not None and device.type == "cuda" and torch.cuda.is_available()


class preserved_rng:
    """Run a block (an evaluation, a sample grid) without moving any global RNG (`device`'s among them).

    Training then draws the same random numbers whether or not, and however often, the
    run evaluates: a run with eval.every = 100 trains exactly like one with 1000.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def __enter__(self):
        self.state = rng_state(self.device)
        return self

    def __exit__(self, *exc):
        set_rng_state(self.state, self.device)
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
