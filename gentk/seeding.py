"""Seeding: one call that seeds every global random-number generator a run draws from.

Python's `random`, NumPy's legacy global generator and torch (CPU and every CUDA device).
The engine seeds with it before building the data and the model, and again, per rank,
before the loop; evaluation seeds with it so that metrics that draw random numbers give
the same result each time. Saving and restoring these states lives in `gentk.checkpoint`.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and CUDA) with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
