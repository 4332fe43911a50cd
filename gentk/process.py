"""The command line's process: what it sets before torch loads, then `gentk.cli.main`.

OpenMP's worker threads spin while they wait for the next parallel region (the default
wait policy). On a CPU that other processes share, a spinning thread holds a core another
process needs, and a thread whose core is taken stalls every region until the scheduler
returns it: a 2-thread run beside one other busy process can be many times slower than
idle (docs/benchmarks.md, "Threads on a shared CPU"). With ``OMP_WAIT_POLICY=PASSIVE``
waiting threads sleep instead. OpenMP reads the variable once, when torch loads its
runtime, so it is set here, before anything imports torch; a value already in the
environment is kept. Research code that imports gentk sets it itself, if it wants it.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def prepare() -> None:
    """Make the process's OpenMP threads sleep while they wait, unless the environment says otherwise."""
    if "torch" not in sys.modules:  # later, the runtime has read its settings already
        os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def main() -> int:
    """The `gentk` command (console script and ``python -m gentk``)."""
    prepare()
    from gentk.cli import main as cli_main

    return cli_main()
