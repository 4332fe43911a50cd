"""Two CPU processes joined in a gloo process group, kept up for a test module.

A process that imports torch takes seconds to start on a loaded machine, and a run under
torchrun about 25 s, so the multi-process tests share one pair of workers: a test hands
them a function, ``pool.run(fn, *args)``, which each rank runs with the process group
already joined and the environment torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE), and gets back each rank's result in rank order. The function must be
importable by name (a module-level function of a test module); an exception on any rank
fails the test with every rank's traceback, and the workers are then started afresh.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

TIMEOUT_S = 60  # of every collective: a rank that waits longer fails instead of hanging the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, inbox, outbox) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    while (job := inbox.get()) is not None:
        fn, args = job
        try:
            outbox.put(("ok", fn(*args)))
        except BaseException:  # noqa: B036 (reported to the test, whatever it was)
            outbox.put(("error", traceback.format_exc()))
    tdist.destroy_process_group()


class GlooPool:
    def __init__(self, world_size: int = 2) -> None:
        self.world_size = world_size
        self.workers: list = []

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        port = _free_port()
        self.inboxes = [context.Queue() for _ in range(self.world_size)]
        self.outboxes = [context.Queue() for _ in range(self.world_size)]
        self.workers = [
            context.Process(target=_worker, args=(rank, self.world_size, port, self.inboxes[rank], self.outboxes[rank]), daemon=True)
            for rank in range(self.world_size)
        ]
        for worker in self.workers:
            worker.start()

    def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float = 180) -> list[Any]:
        """`fn(*args)` on every rank; the results in rank order."""
        if not self.workers:
            self._start()
        for inbox in self.inboxes:
            inbox.put((fn, args))
        answers = [self._answer(rank, timeout_s) for rank in range(self.world_size)]
        failed = [f"rank {rank}:\n{detail}" for rank, (status, detail) in enumerate(answers) if status != "ok"]
        if failed:
            self.close()  # a failed collective may leave the group unusable: start afresh next time
            raise AssertionError(f"{fn.__name__} failed under {self.world_size} gloo processes:\n" + "\n".join(failed))
        return [result for _, result in answers]

    def _answer(self, rank: int, timeout_s: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                return self.outboxes[rank].get(timeout=0.5)
            except queue.Empty:
                if not self.workers[rank].is_alive():  # died in C++ (gloo aborts on a mismatched collective)
                    return "error", f"the worker died (exit code {self.workers[rank].exitcode})"
        return "error", f"no answer within {timeout_s} s"

    def close(self) -> None:
        for worker, inbox in zip(self.workers, self.inboxes):
            if worker.is_alive():
                inbox.put(None)
        for worker in self.workers:
            worker.join(timeout=0.5)  # an interpreter with torch takes seconds to exit; nothing is left to keep
            if worker.is_alive():
                worker.kill()
                worker.join()
        self.workers = []
