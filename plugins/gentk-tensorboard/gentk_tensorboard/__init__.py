"""TensorBoard logging for gentk runs, through gentk's run callbacks (gentk/hookspecs.py).

Every run gets its event files in ``RUN/tensorboard/``: the training scalars of each
``train.log_every`` interval (``gentk_log``), the evaluation metrics (``gentk_after_eval``),
the sample grids and code-space scatters the engine writes (``gentk_log_image``) and the
resolved recipe as text. Watch them with ``tensorboard --logdir runs/``; run without
them with ``gentk -p no:tensorboard run ...``.

One writer per run directory, opened in ``gentk_run_start`` and closed in
``gentk_run_end``; a resumed run drops the events a previous process logged after its
checkpoint (TensorBoard's ``purge_step``), as the run's metrics files do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

import gentk

SUBDIR = "tensorboard"
FLUSH_SECS = 10  # how stale a live TensorBoard may be; evaluations are flushed at once

_writers: dict[Path, SummaryWriter] = {}  # open writers by run directory (a process may train several runs)


def _writer(run_dir, step: int = 0) -> SummaryWriter:
    """The run's writer, opened on first use (a resumed run purges what came after `step`)."""
    run_dir = Path(run_dir)
    if run_dir not in _writers:
        purge_step = step + 1 if step > 0 else None  # rows at `step` itself were logged before its checkpoint
        _writers[run_dir] = SummaryWriter(log_dir=str(run_dir / SUBDIR), purge_step=purge_step, flush_secs=FLUSH_SECS)
    return _writers[run_dir]


@gentk.hookimpl
def gentk_run_start(run_dir, step, recipe):
    writer = _writer(run_dir, step)
    writer.add_text("recipe", "```toml\n" + recipe.to_toml() + "\n```", global_step=step)


@gentk.hookimpl
def gentk_log(run_dir, step, scalars):
    writer = _writer(run_dir)
    for name, value in scalars.items():
        writer.add_scalar(name, value, global_step=step)


@gentk.hookimpl
def gentk_log_image(run_dir, step, tag, path):
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8, whatever the PNG's mode
    _writer(run_dir).add_image(tag, pixels, global_step=step, dataformats="HWC")


@gentk.hookimpl
def gentk_after_eval(run_dir, step, metrics):
    writer = _writer(run_dir)
    for name, value in metrics.items():
        writer.add_scalar(name, value, global_step=step)
    writer.flush()


@gentk.hookimpl
def gentk_run_end(run_dir, status):
    writer = _writers.pop(Path(run_dir), None)
    if writer is not None:
        writer.close()
