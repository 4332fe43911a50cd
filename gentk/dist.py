"""Devices and data-parallel training: one process, or many under ``torchrun``.

A run is distributed when ``torchrun`` has set ``WORLD_SIZE`` > 1 in the environment.
Each rank then holds a full copy of the model and a shard of every batch (the recipe's
``data.batch_size`` is the global batch; `gentk.data` hands each rank its slice), and
every optimizer step sees the gradients averaged over ranks (NCCL on CUDA, gloo on CPU).

Each trainable part of the Model (encoder, decoder, each discriminator) is wrapped in
its own ``DistributedDataParallel`` (`Model.wrap_parts`), so an adversarial step needs
no ``find_unused_parameters``: in a training step, the parts it does not train run under
``no_sync`` (the encoder in a discriminator step, the discriminator in a generator
step), and the parts it trains use every one of their parameters. DDP's one assumption,
"every parameter of a synchronized part gets a gradient", is checked rather than hoped
for: the first execution of each training step runs all parts under ``no_sync`` and
averages the step's gradients with one explicit all-reduce; a part whose parameters all
received gradients is synchronized by DDP from then on, any other part (one head of a
multi-head encoder trained by a supervised step, say) keeps the explicit all-reduce.
Both average the same numbers (for two ranks, bit for bit the same).

The step's loss travels in the explicit all-reduce too, so every rank sees the global
mean loss and a NaN on any rank stops all ranks at the same step; so do the engine's stop
votes (a Ctrl-C, a spent time budget), which thus need no collective of their own.

Every helper here is a no-op on a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import torch
import torch.distributed as tdist

from gentk.errors import TrainingError

TIMEOUT = datetime.timedelta(minutes=30)  # how long a collective waits for the other ranks
RANK0_TIMEOUT = datetime.timedelta(hours=24)  # how long the other ranks wait for what rank 0 computes alone (`on_rank0`)


@attrs.frozen
class DistInfo:
    """Where this process stands: its rank among `world_size`, and among the `local_world_size`
    processes of its machine its `local_rank`, the index of its GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = attrs.field(default=attrs.Factory(lambda self: self.world_size, takes_self=True))  # one machine unless told

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the others compute."""
        return self.rank == 0


def from_environment() -> DistInfo:
    """The ranks and world sizes that ``torchrun`` put in the environment (1 process without it)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def choose_device(choice: str, info: DistInfo = DistInfo()) -> torch.device:
    """Resolve ``auto`` (cuda, then mps, then cpu) or check an explicit choice.

    Under torchrun each rank takes the GPU of its local rank. A device that is not
    available is an error, not a silent fall-back to the CPU; so is a choice that puts two
    ranks on one GPU (NCCL would stop with "Duplicate GPU detected").
    """
    if choice == "auto":
        if torch.cuda.is_available():
            return rank_gpu(info)
        if torch.backends.mps.is_available() and not info.distributed:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise TrainingError(f"unknown device '{choice}'. Use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(f"device '{choice}' was asked for but CUDA is not available here. Use --device cpu (or auto).")
        if device.index is None:
            device = rank_gpu(info)
        elif device.index >= torch.cuda.device_count():
            raise TrainingError(f"device '{choice}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s).")
        elif info.local_world_size > 1:
            raise TrainingError(
                f"--device {choice} would put all {info.local_world_size} processes of this machine on one GPU, which NCCL refuses "
                "('Duplicate GPU detected'). Use --device cuda (or auto): under torchrun each process takes the GPU of its local rank."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"device '{choice}' was asked for but MPS is not available here. Use --device cpu (or auto).")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise TrainingError(f"unsupported device '{choice}'. Use auto, cpu, cuda, cuda:N or mps.")
    return device


def rank_gpu(info: DistInfo) -> torch.device:
    """The GPU of this process: the one its local rank indexes; an error when the machine has too few."""
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise TrainingError(
            f"this machine runs {info.local_world_size} processes but this one (rank {info.rank}, local rank {info.local_rank}) sees "
            f"{count} GPU(s): two processes would share a GPU, which NCCL refuses ('Duplicate GPU detected'). Start at most {count} per "
            f"machine (torchrun --nproc-per-node {count}), or make more GPUs visible (CUDA_VISIBLE_DEVICES). A launcher that gives each "
            "process a GPU of its own through CUDA_VISIBLE_DEVICES should set LOCAL_RANK=0 and LOCAL_WORLD_SIZE=1 in each."
        )
    return torch.device("cuda", info.local_rank)


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group torchrun prepared: NCCL for CUDA, gloo otherwise."""
    if not info.distributed or tdist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU up front
    tdist.init_process_group(**kwargs)


_FINAL_BARRIER: list[Any] = []  # see shutdown


def shutdown(clean: bool = True) -> None:
    """Leave the process group; after a `clean` finish, only once every rank is done.

    Why the barrier, and why its handle is kept until the interpreter exits: gloo's
    worker threads outlive ``destroy_process_group`` (the DDP wrappers leave a reference
    to the group behind), and a worker that drops the last reference to a finished
    collective frees that collective's tensors, which takes the GIL. If the interpreter
    is shutting down by then, the worker thread is killed inside C++ code and the whole
    process aborts ("terminate called without an active exception", SIGABRT), seen under
    torchrun when rank 1 exited while rank 0 was still writing its checkpoint. The
    barrier makes every rank's collectives finish before any rank leaves; the barrier's
    work holds the collectives still in flight when it started, and keeping it here
    means their last reference is dropped by the main thread, at exit, not by a worker.
    After an error there is no barrier, since the other ranks may never reach it;
    torchrun stops them.
    """
    if not (tdist.is_available() and tdist.is_initialized()):
        return
    if clean:
        work = tdist.barrier(async_op=True)
        work.wait()
        _FINAL_BARRIER.append(work)
    tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        tdist.barrier()


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` on every rank (a run directory's name, for example)."""
    if not info.distributed:
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(compute: Callable[[], Any], info: DistInfo) -> Any:
    """``compute()`` on rank 0 alone, its result on every rank, however long it takes.

    The evaluation metrics and the sample grid are computed so; an importance-weighted
    bound with k = 5000 can take longer than `TIMEOUT`, after which an ordinary collective
    gives up (NCCL's watchdog then ends the process). So the other ranks wait in a gloo
    group of their own, whose timeout is `RANK0_TIMEOUT`. An error on rank 0 is raised on
    every rank.
    """
    if not info.distributed:
        return compute()
    group = _patient_group()  # made by every rank, before rank 0 starts
    box: list[Any] = [None]
    if info.is_main:
        try:
            box[0] = ("ok", compute())
        except BaseException as exc:
            tdist.broadcast_object_list([("error", f"{type(exc).__name__}: {exc}")], src=0, group=group)
            raise
    tdist.broadcast_object_list(box, src=0, group=group)
    status, value = box[0]
    if status == "error":
        raise TrainingError(f"rank 0 failed while the others waited for it ({value}); its own output says more.")
    return value


_PATIENT: list[Any] = []  # [the default process group, the gloo group of `on_rank0` made for it]


def _patient_group() -> Any:
    world = tdist.group.WORLD
    if not _PATIENT or _PATIENT[0] is not world:
        _PATIENT[:] = [world, tdist.new_group(backend="gloo", timeout=RANK0_TIMEOUT)]
    return _PATIENT[1]


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (RNG states, data positions)."""
    if not info.distributed:
        return [value]
    out: list[Any] = [None] * info.world_size
    tdist.all_gather_object(out, value)
    return out


def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's weights and buffers, as DDP does at wrap time."""
    if not info.distributed:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(tensor.data, src=0)


def average_gradients(
    params: Sequence[torch.nn.Parameter], loss: torch.Tensor, info: DistInfo, votes: Sequence[bool] = ()
) -> tuple[torch.Tensor, list[Any]]:
    """Average the gradients of `params` and the value of `loss` over all ranks, and tally `votes`.

    One flat buffer, one all-reduce. A parameter without a gradient on this step counts
    as a zero gradient (it keeps ``grad=None`` if it had none, on every rank alike).
    `votes` are flags every rank must act on at the same step (a stop request, say): they
    ride in the same buffer, so tallying them costs no collective, and each comes back as a
    0-dim tensor, positive on every rank when any rank voted for it, to be read with the
    loss (on a single process, the flags as given).
    Returns the global mean loss (detached), which is non-finite if any rank's was, and the votes.
    """
    loss = loss.detach().float().reshape(1)
    if not info.distributed:
        return loss[0], list(votes)
    grads = [p.grad for p in params if p.grad is not None]
    ballots = [loss.new_full((1,), float(vote)) for vote in votes]  # filled on the device: nothing copied from the host
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss] + ballots)
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
    return flat[offset], list(flat[offset + 1 :])


def mean_scalars(scalars: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average a dict of floats (same keys on every rank) over ranks."""
    if not info.distributed or not scalars:
        return scalars
    keys = sorted(scalars)
    values = torch.tensor([float(scalars[k]) for k in keys], dtype=torch.float64, device=device)
    tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    values /= info.world_size
    return dict(zip(keys, values.tolist()))


def sum_tensor(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for convenience)."""
    if info.distributed:
        tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return values


def params_of(groups: Iterable[Iterable[torch.nn.Parameter]]) -> list[torch.nn.Parameter]:
    """The distinct parameters of several lists, in first-seen order."""
    seen: set[int] = set()
    out = []
    for group in groups:
        for p in group:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class PartSync:
    """Keeps the gradients of a model's parts equal on every rank (see the module docstring).

    Use per training step ``ts``: run its forward and backward inside ``sync.step(ts)``,
    then ``loss, votes = sync.reduce(ts, loss)``. ``sync.unwrapped(model)`` gives the plain parts
    back (for evaluation, sampling and state_dicts without ``module.`` prefixes).
    """

    def __init__(self, model: torch.nn.Module, info: DistInfo, device: torch.device) -> None:
        self.info = info
        self.device = device
        self.wrappers: dict[str, torch.nn.Module] = {}
        self.ddp_parts: dict[str, set[str]] = {}  # training step -> parts DDP synchronizes
        if info.distributed and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            # Batch statistics over each rank's shard would differ from one process's (and
            # leave each rank different running statistics): normalize over the global batch.
            if device.type != "cuda":
                raise TrainingError(
                    f"this model has batch normalization (e.g. model.encoder.batch_norm = true), which needs SyncBatchNorm to train on "
                    f"{info.world_size} processes, and PyTorch's SyncBatchNorm runs on GPUs only (this run is on {device}). "
                    "Train on one process (without torchrun), on GPUs, or set batch_norm = false."
                )
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # keeps the same parameters and buffers
        if info.distributed and hasattr(model, "wrap_parts"):
            model.wrap_parts(self._wrap)

    def _wrap(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        if name in self.wrappers:
            return self.wrappers[name]
        if not any(p.requires_grad for p in module.parameters()):
            return module  # DDP refuses modules with nothing to train
        from torch.nn.parallel import DistributedDataParallel

        self.wrappers[name] = DistributedDataParallel(
            module, device_ids=[self.device] if self.device.type == "cuda" else None, **no_buffer_sync(DistributedDataParallel)
        )
        return self.wrappers[name]

    @contextlib.contextmanager
    def step(self, ts) -> Iterator[None]:
        synced = self.ddp_parts.get(ts.name, set())
        with contextlib.ExitStack() as stack:
            for name, wrapper in self.wrappers.items():
                if name not in synced:
                    stack.enter_context(wrapper.no_sync())
            yield

    def reduce(self, ts, loss: torch.Tensor, votes: Sequence[bool] = ()) -> tuple[torch.Tensor, list[Any]]:
        """After backward: all-reduce what DDP did not, with the loss and `votes`; returns the global mean loss and
        the tallied votes (`average_gradients`)."""
        synced = self.ddp_parts.get(ts.name)
        manual = [p for part, params in ts.parts.items() if synced is None or part not in synced for p in params]
        value = average_gradients(manual, loss, self.info, votes)
        if synced is None and self.wrappers:
            self.ddp_parts[ts.name] = {
                part
                for part, params in ts.parts.items()
                if part in self.wrappers and all(p.grad is not None for p in params) and len(params) == _trainable(self.wrappers[part])
            }
        return value

    @contextlib.contextmanager
    def unwrapped(self, model: torch.nn.Module) -> Iterator[None]:
        if not self.wrappers:
            yield
            return
        model.unwrap_parts()
        try:
            yield
        finally:
            model.wrap_parts(self._wrap)


def no_buffer_sync(ddp_class: type) -> dict[str, bool]:
    """DDP's keyword for "no buffer broadcast before each forward", in this torch's spelling.

    The buffers of a part are constants (PixelCNN masks), so a collective per forward would
    only cost time. torch 2.13 named the switch ``forward_sync_buffers``; before that it was
    ``broadcast_buffers``, which also skips DDP's broadcast of the buffers at wrap time.
    Nothing is lost by that: `broadcast_parameters` gave every rank rank 0's buffers when
    the model was built.
    """
    if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _trainable(module: torch.nn.Module) -> int:
    return sum(1 for p in module.parameters() if p.requires_grad)
