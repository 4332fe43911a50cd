"""What a run says on the terminal: its start banner, the measured time per step and ETA,
the training bar with live losses, a bar over each pass of an evaluation, and the gentk
commands it prints, spelled so that they work when pasted into the user's shell.

A run says what it will do before it does it (`banner`): where it writes, on which device
with how many threads and which dtype, how large each part of the model is, and how many
steps. After a few steps `Progress` measures the time per step and prints the ETA
(`eta_message`); a run that would take longer than an hour on this device adds a paragraph
saying how long, and how to run a smaller budget (`long_run_paragraph`).
"""

from __future__ import annotations

import datetime
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

# --------------------------------------------------------------------------- commands as printed


def command() -> str:
    """The words that start gentk from the user's shell, as this process was started.

    ``gentk`` when that is on PATH and is this program; else the path of the script that
    ran (``.venv/bin/gentk`` after ``make run``, whose venv is not active in the shell);
    ``python -m gentk`` (with the interpreter's path when ``python`` on PATH is another one)
    under ``python -m``. From Python code (a notebook, a test) it is ``gentk``.
    """
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    path = Path(argv0)
    if path.name == "__main__.py" and path.parent.name == "gentk":  # python -m gentk, torchrun -m gentk
        python = shutil.which("python")
        same = python is not None and os.path.abspath(python) == os.path.abspath(sys.executable)  # a venv's python is a link: no resolve
        return f"{'python' if same else shell_path(sys.executable)} -m gentk"
    if path.name != "gentk":
        return "gentk"
    on_path = shutil.which("gentk")
    if on_path is not None and path.exists() and os.path.samefile(on_path, path):
        return "gentk"
    return shell_path(path)


def shell_path(path: str | Path) -> str:
    """A file as a shell command word: relative to the working directory when it is below it (``.venv/bin/gentk``), else absolute."""
    path = Path(os.path.abspath(path))
    try:
        text = str(path.relative_to(Path.cwd()))
        text = text if os.sep in text else f".{os.sep}{text}"
    except ValueError:
        text = str(path)
    return shlex.quote(text)


# --------------------------------------------------------------------------- the start banner


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Trainable parameters of each part of the model (`Model.parts`, e.g. encoder, decoder, discriminator.y)."""
    parts = model.parts() if hasattr(model, "parts") else {"model": model}
    return {name: sum(p.numel() for p in module.parameters() if p.requires_grad) for name, module in parts.items()}


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def device_text(device: torch.device, amp: str, world_size: int, dtype: torch.dtype) -> str:
    """'cpu, 2 threads, float32' / 'cuda:0 (NVIDIA H100), bfloat16 autocast over float32 weights'."""
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        where += f", {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
    if world_size > 1:
        where += f", {world_size} processes (DDP)"
    kind = str(dtype).removeprefix("torch.")
    precision = kind if amp == "none" else f"{'bfloat16' if amp == 'bf16' else 'float16'} autocast over {kind} weights (train.amp)"
    return f"{where}, {precision}"


def banner(recipe, run_dir: Path, device_line: str, counts: Mapping[str, int], step_names: list[str], start_step: int) -> str:
    """What the run will do, printed before its first step."""
    cfg = recipe.train
    profile = f" (profile {recipe.profile})" if recipe.profile else ""
    parts = ", ".join(f"{name} {_count(n)}" for name, n in counts.items())
    steps = f"{cfg.steps} steps of batch {recipe.data.common.batch_size}" + (f", from step {start_step}" if start_step else "")
    if cfg.minutes is not None:
        steps += f", or {cfg.minutes:g} minutes of wall time if that comes first"
    evals = f"evaluation every {recipe.eval.every} steps and at the end"
    return "\n".join(
        [
            f"gentk: {recipe.name}{profile} -> {run_dir}",
            f"  device      {device_line}",
            f"  parameters  {parts} ({_count(sum(counts.values()))} in all)",
            f"  steps       {steps}; each runs {', '.join(step_names)}; {evals}",
        ]
    )


# --------------------------------------------------------------------------- the ETA


def _duration(seconds: float) -> str:
    """'40 s', '12 minutes', '3.5 hours', '3 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def remaining_seconds(seconds_per_step: float, step: int, total: int, budget_left: float | None) -> tuple[float, int]:
    """Seconds of training left and the step it ends at: `total`, or sooner when a time budget (seconds left) runs out first."""
    left = seconds_per_step * (total - step)
    if budget_left is not None and budget_left < left:
        return max(budget_left, 0.0), min(total, step + math.ceil(max(budget_left, 0.0) / seconds_per_step))
    return left, total


def eta_message(seconds_per_step: float, measured: tuple[int, int], total: int, budget_left: float | None, *, now: datetime.datetime) -> str:
    """One line: the measured time per step, how long the training left takes and when it ends (`now` + that)."""
    first, last = measured
    left, end_step = remaining_seconds(seconds_per_step, last, total, budget_left)
    until = (now + datetime.timedelta(seconds=left)).strftime("%H:%M" if left < 20 * 3600 else "%a %H:%M")
    rate = f"{seconds_per_step:.3g} s/step ({1 / seconds_per_step:.3g} steps/s)" if seconds_per_step < 1 else f"{seconds_per_step:.3g} s/step"
    stop = f"the time budget stops it at about step {end_step} of {total}" if end_step < total else f"{total - last} steps left"
    return f"gentk: measured {rate} over steps {first}-{last}: {stop}, about {_duration(left)} of training (ends near {until}), plus evaluations."


def long_run_paragraph(seconds_left: float, recipe, device_line: str, prefix: str) -> str:
    """For a run that will take longer than an hour here: how long, and how to run a smaller budget."""
    source = shlex.quote(recipe.source) if recipe.source else "RECIPE"
    others = [p for p in recipe.profiles if p != recipe.profile]
    ways = []
    if others:
        smaller = "small" if "small" in others else others[0]
        ways.append(
            f"a profile of the recipe, `{prefix} run {source} --profile {smaller}` (its profiles: {', '.join(others)}; "
            f"`{prefix} show {source} --profile {smaller}` shows one)"
        )
    ways.append(f"a time budget, `{prefix} run {source} --minutes 30`, which stops after 30 minutes, saves and runs the final evaluation")
    ways.append("fewer steps, `--set train.steps=N`")
    return (
        f"This run will take about {_duration(seconds_left)} on this device ({device_line}). For a smaller budget, stop it with Ctrl-C "
        f"(it saves a checkpoint and prints how to resume) and run {'; or '.join(ways)}."
    )


# --------------------------------------------------------------------------- progress while training


class Progress:
    """The training bar (tqdm on a terminal) with live running means of the losses, and the ETA after a few steps.

    On a terminal the bar's postfix shows the mean of each training step's loss since the last
    logged interval, from the first step on; without one (a log file, a batch job), one line
    per ``train.log_every`` steps and, before then, one every `quiet_s` seconds. The time
    per step counts the training steps alone (not checkpoints, logs or evaluations).
    """

    quiet_s = 30.0  # the longest silence without a terminal
    warmup = 2  # steps not timed: the first steps build caches and allocate
    min_steps, min_seconds = 5, 10.0  # the ETA waits for this many timed steps and seconds
    long_run_s = 3600.0

    def __init__(self, total: int, start: int, *, enabled: bool, on_measured=None) -> None:
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=start, dynamic_ncols=True, unit="step") if enabled and sys.stderr.isatty() else None
        self.total = total
        self.start = start
        self.on_measured = on_measured  # called once with (seconds per step, (first, last) step timed)
        self.timed_steps, self.timed_seconds, self.first_timed = 0, 0.0, None
        self.last_line = time.perf_counter()
        self.last_postfix = 0.0

    def update(self, step: int, sums: Mapping[str, float] | None = None, counted: int = 0, seconds: float | None = None) -> None:
        """After each step: move the bar, show the running means of the losses in `sums` (over `counted` steps), and
        count the step's `seconds` (its training alone) towards the ETA."""
        now = time.perf_counter()
        if seconds is not None and step - self.start > self.warmup:
            self.first_timed = self.first_timed or step - 1
            self.timed_steps += 1
            self.timed_seconds += seconds
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        if sums and counted:
            losses = {k.split("/", 1)[1].removesuffix("/loss"): v / counted for k, v in sums.items() if k.endswith("/loss")}
            if self.bar is not None and now - self.last_postfix > 0.5:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
                self.last_postfix = now
            elif self.bar is None and now - self.last_line > self.quiet_s:
                print(f"step {step}/{self.total} (running means) " + " ".join(f"{k}={v:.4g}" for k, v in losses.items()), flush=True)
                self.last_line = now
        if self.on_measured is not None and self.timed_steps >= self.min_steps and self.timed_seconds >= self.min_seconds:
            on_measured, self.on_measured = self.on_measured, None
            on_measured(self.timed_seconds / self.timed_steps, (self.first_timed, step))

    def show(self, step: int, scalars: dict[str, float]) -> None:
        """A logged interval's means (`train.log_every`)."""
        if not self.enabled:
            return
        losses = {k.split("/", 1)[1]: v for k, v in scalars.items() if k.startswith("train/") and k.endswith("/loss")}
        if self.bar is not None:
            self.bar.set_postfix({k.removesuffix("/loss"): f"{v:.4g}" for k, v in losses.items()}, refresh=True)
        else:
            print(
                f"step {step}/{self.total} {scalars['speed/steps_per_s']:.2f} steps/s "
                + format_scalars({k: v for k, v in scalars.items() if k.startswith("train/")}),
                flush=True,
            )
            self.last_line = time.perf_counter()

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)
            self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- progress while evaluating


class WatchedData:
    """A dataset whose held-out passes (``eval_batches``) each move a progress bar: examples of the split, named by `label`.

    Everything else is the dataset's own. The bar is tqdm's on stderr, shown on a terminal
    only (`file` and ``disable=False`` for tests), and disappears when the pass ends.
    """

    def __init__(self, data: Any, label: str, *, file=None, disable: bool | None = None) -> None:
        self._data, self._label, self._file, self._disable = data, label, file, disable

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def eval_batches(self, split: str, batch_size: int, *args, max_examples: int | None = None, **kwargs) -> Iterator[Any]:
        size = self._data.split_sizes.get(split, 0)
        total = size if max_examples is None else min(size, max_examples)
        world = kwargs.get("world_size") or 1
        with tqdm(
            total=math.ceil(total / world),
            desc=f"eval {self._label} ({split})",
            unit="img",
            leave=False,
            file=self._file or sys.stderr,
            disable=self._disable,
        ) as bar:
            for batch in self._data.eval_batches(split, batch_size, *args, max_examples=max_examples, **kwargs):
                yield batch
                bar.update(len(batch.x))


def watched(data: Any, label: str, enabled: bool = True) -> Any:
    """`data` with a progress bar over each held-out pass when `enabled` (and stderr is a terminal), else `data` itself."""
    return WatchedData(data, label) if enabled else data


def format_scalars(scalars: Mapping[str, float]) -> str:
    """'reconstruction/loss=91.2 semisup_error=12.5': scalars without their first key part, learning rates left out."""
    return " ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in scalars.items() if not k.startswith("lr/"))
