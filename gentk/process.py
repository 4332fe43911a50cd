"""The command line's process: what it sets before torch loads, then `gentk.cli.main`.

OpenMP's worker threads spin while they wait for the next parallel region (the default
wait policy). On a CPU that other processes share, a spinning thread holds a core another
process needs, and a thread whose core is taken stalls every region until the scheduler
returns it: a 2-thread run beside one other busy process can be many times slower than
idle. With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep instead, which bounds that
slowdown but costs speed on an idle machine (a third of the PixelGAN CPU recipe's steps
per second), so the command line sets it only when the machine is already busy as it
starts: a 1-minute load average of at least `BUSY_LOAD` (docs/benchmarks.md, "Threads on
a shared CPU"). OpenMP reads the variable once, when torch loads its runtime, so this
runs before anything imports torch; a policy already in the environment is kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

BUSY_LOAD = 0.5  # another process using half a core on average


def prepare(load: Callable[[], tuple[float, float, float]] = os.getloadavg) -> None:
    """On a machine already busy, make OpenMP's threads sleep while they wait, unless the environment chose a policy."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:  # too late, or chosen
        return
    if load()[0] >= BUSY_LOAD:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main() -> int:
    """The `gentk` command (console script and ``python -m gentk``)."""
    prepare()
    from gentk.cli import main as cli_main

    return cli_main()
