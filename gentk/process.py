"""The command line's process: what it sets before torch loads, then `gentk.cli.main`.

OpenMP's worker threads spin while they wait for the next parallel region (the default
wait policy). On a CPU that other processes share, a spinning thread holds a core another
process needs, and a thread whose core is taken stalls every region until the scheduler
returns it: a 2-thread run beside one other busy process can be many times slower than
idle. With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep instead, which bounds that
slowdown but costs speed on an idle machine (a third of the PixelGAN CPU recipe's steps
per second), so the commands that compute set it only when the machine is busy as they
start: other processes keeping at least `BUSY_CORES` cores busy (docs/benchmarks.md,
"Threads on a shared CPU"). OpenMP reads the variable once, when torch loads its runtime,
so this runs before anything imports torch; a policy already in the environment is kept.

Busy means busy now. Where the kernel counts CPU time (Linux's ``/proc/stat``) it is
measured over `SAMPLE_S`; elsewhere the 1-minute load average stands in, which lags: it
takes a minute and a half to fall under 0.5 after a 2-thread job ends, so a run started
right after another one would be slowed a third for nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

BUSY_CORES = 0.5  # another process using half a core on average
SAMPLE_S = 0.25  # how long the CPU counters are watched: 25 clock ticks per core at 100 Hz
COMPUTING = frozenset({"run", "compare", "eval", "sample"})  # the commands that train or evaluate


def cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from the kernel's ``cpu`` line; None without one."""
    try:
        with open(stat) as f:
            name, *fields = f.readline().split()
    except OSError:
        return None
    if name != "cpu" or len(fields) < 4:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return sum(ticks) - sum(ticks[3:5]), sum(ticks)  # idle and iowait are not busy


def busy_cores(
    seconds: float = SAMPLE_S,
    ticks: Callable[[], tuple[int, int] | None] = cpu_ticks,
    cpus: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> float | None:
    """How many cores other processes keep busy now: the busy share of all CPU ticks over `seconds`,
    times the cores; None where the kernel does not count them. This process sleeps meanwhile,
    so what is counted is the others'."""
    before = ticks()
    if before is None:
        return None
    sleep(seconds)
    after = ticks()
    if after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (cpus or os.cpu_count() or 1)


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def prepare(
    argv: list[str] | None = None,
    busy: Callable[[], float | None] = busy_cores,
    load: Callable[[], float | None] = _load_average,
) -> None:
    """Before a command that computes, on a machine already busy, make OpenMP's threads sleep while they wait.

    A policy the environment chose is kept. argv: the command line's arguments (default ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else argv
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or not COMPUTING.intersection(argv):  # too late, chosen, or nothing to compute
        return
    now = busy()
    if now is None:
        now = load()
    if now is not None and now >= BUSY_CORES:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def main() -> int:
    """The `gentk` command (console script and ``python -m gentk``)."""
    prepare()
    from gentk.cli import main as cli_main

    return cli_main()
