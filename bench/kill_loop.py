"""Kill -9 a tiny training run at random moments, resume it each time, and check that it
ends exactly as an uninterrupted run of the same recipe does.

    .venv/bin/python bench/kill_loop.py --kills 20          # prints PASS or FAIL; exit code 0 or 1
    .venv/bin/python bench/kill_loop.py --kills 5 --seed 3 --keep /tmp/kills

Every process is a real ``gentk run`` of the small synthetic recipe bench/kill_loop.toml, started
through this script's ``--child`` mode, which only adds markers to its output: ``start``,
``step N`` after each training step, ``begin/end checkpoint N`` around each checkpoint
write, ``begin evaluation N`` and ``begin/end log N`` around each metrics write (an
evaluation ends with the write of its rows). One uninterrupted run gives the reference
and the typical duration of each moment. Then each kill aims at one kind of moment, in a
shuffled rotation, at a random point within its typical duration:

    start-up          imports, loading the checkpoint, repairing the metrics
    step              the middle of training steps
    checkpoint        a checkpoint write (temporary file, fsync, rename, links, pruning)
    evaluation        an evaluation (losses, metrics, sample grid, best.pt, its log rows)
    log               a write of metrics.jsonl and metrics.h5
    final evaluation  the evaluation at the last step (always the last kill)

Where a process died is read from the last marker it wrote. A resume is, at random,
``gentk run RECIPE --resume auto`` or the form the docs give,
``gentk run RUN/recipe.toml --resume RUN``. After the last kill one more resume runs to
the end, and the run must equal the reference: the same rows in metrics.jsonl (without
the readings of the machine and its clock, ``speed/``, ``time/`` and ``machine/``), so no step is missing or logged twice;
the same series in metrics.h5; one evaluation at every ``eval.every`` steps and at the
end; the same ``best`` and final metrics in eval.json; the same final weights and EMA;
a sample grid for every evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "@kill-loop"
KINDS = ("start-up", "step", "checkpoint", "evaluation", "log")

RECIPE = Path(__file__).with_name("kill_loop.toml")


# --------------------------------------------------------------------------- the child: gentk run with markers


def mark(text: str) -> None:
    os.write(1, f"{MARK} {time.monotonic():.6f} {text}\n".encode())  # unbuffered: the last marker is the last moment


def child(argv: list[str]) -> int:
    """``gentk run ARGV`` with markers around the moments a kill aims at; nothing else changes."""
    mark("start")
    sys.path.insert(0, str(REPO))
    import importlib

    from gentk import checkpoint, rundir
    from gentk.cli import main

    engine = importlib.import_module("gentk.train")  # the module; gentk.train is also the function

    def around(owner, name, begin, end=None):
        real = getattr(owner, name)

        def wrapped(*args, **kwargs):
            begin(*args, **kwargs)
            result = real(*args, **kwargs)
            if end is not None:
                end(*args, **kwargs)
            return result

        setattr(owner, name, wrapped)

    around(
        checkpoint,
        "save",
        lambda state, *a, **k: mark(f"begin checkpoint {state['step']}"),
        lambda state, *a, **k: mark(f"end checkpoint {state['step']}"),
    )
    around(engine, "run_evaluation", lambda *a, **k: mark(f"begin evaluation {a[8]}"))

    def log_end(log, step, scalars):
        mark(f"end log {step}")
        if any(k.startswith("eval/") for k in scalars):
            mark(f"end evaluation {step}")

    around(rundir.MetricsLog, "write", lambda log, step, scalars: mark(f"begin log {step}"), log_end)
    around(engine.Progress, "update", lambda progress, step, *a: None, lambda progress, step, *a: mark(f"step {step}"))
    return main(["run", *argv])


# --------------------------------------------------------------------------- the parent: start, watch, kill


class Process:
    """One child process: its output lines and markers ((time, words)), read by a thread."""

    started: list[Process] = []

    @classmethod
    def stop_all(cls) -> None:
        while cls.started:
            process = cls.started.pop()
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "GENTK_DISABLE_PLUGIN_AUTOLOAD": "1"}
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
        )
        self.lines: list[str] = []
        self.marks: list[tuple[float, list[str]]] = []
        self.late = 0.0  # seconds between the aimed moment and the kill
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        Process.started.append(self)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def next_mark(self, timeout: float = 600.0) -> tuple[float, list[str]] | None:
        """The next marker, or None once the process has exited."""
        while True:
            line = self.queue.get(timeout=timeout)
            if line is None:
                return None
            if line.startswith(MARK):
                _, at, *words = line.split()
                self.marks.append((float(at), words))
                return self.marks[-1]
            self.lines.append(line.rstrip("\n"))

    def finish(self) -> int:
        while self.next_mark() is not None:
            pass
        return self.proc.wait()

    def kill_when(self, trigger, delay: float) -> bool:
        """SIGKILL `delay` seconds after the first marker `trigger` accepts; False if the process ended first."""
        while (found := self.next_mark()) is not None:
            at, words = found
            if trigger(words):
                time.sleep(max(0.0, at + delay - time.monotonic()))
                self.late = time.monotonic() - (at + delay)
                os.kill(self.proc.pid, signal.SIGKILL)  # a process that has just exited is a zombie until waited for: no error
                return self.finish() == -signal.SIGKILL
        self.proc.wait()
        return False

    def died_in(self) -> str:
        """Where the process was when it died, from its last marker."""
        words = self.marks[-1][1] if self.marks else ["start"]
        begun = [w[2] for _, w in self.marks if w[:2] == ["begin", "evaluation"]]
        ended = [w[2] for _, w in self.marks if w[:2] == ["end", "evaluation"]]
        if len(begun) > len(ended):  # the best.pt write and the rows of an evaluation are part of it
            part = {"checkpoint": ": its best.pt write", "log": ": its metrics write"}.get(words[1], "") if words[0] == "begin" else ""
            return f"an evaluation{part} at step {begun[-1]}"
        if words[0] == "begin":
            return {"checkpoint": "a checkpoint write", "log": "a metrics write"}[words[1]] + f" at step {words[2]}"
        if self.last_step() is None:
            return "start-up"
        return f"training after step {self.last_step()}"

    def began(self) -> str:
        """How the process began: a new run, or a resume from which step."""
        found = next((line.split(" from step ")[1].split()[0] for line in self.lines if line.startswith("gentk: resuming")), None)
        if found:
            return f"resumed at step {found:>3s}"
        return "a new run        " if any("starting a new run" in line for line in self.lines) else "not yet started  "

    def notes(self) -> str:
        """The warnings gentk printed (repairs, fallbacks), shortened."""
        found = [line.split("warning: ", 1)[1][:220] for line in self.lines if "warning: " in line]
        return "".join(f"\n          gentk: {note}" for note in found)

    def last_step(self) -> int | None:
        steps = [int(w[1]) for _, w in self.marks if w[0] == "step"]
        return steps[-1] if steps else None


def durations(marks: list[tuple[float, list[str]]]) -> dict[str, float]:
    """The median duration of each kind of moment in an uninterrupted run's markers."""
    begun: dict[tuple[str, str], float] = {}
    spans: dict[str, list[float]] = {k: [] for k in KINDS}
    previous_step = None
    for at, words in marks:
        if words[0] == "begin":
            begun[(words[1], words[2])] = at
        elif words[0] == "end" and (words[1], words[2]) in begun:
            spans[words[1]].append(at - begun.pop((words[1], words[2])))
        elif words[0] == "step":
            if previous_step is not None:
                spans["step"].append(at - previous_step)
            previous_step = at
    first_step = next(at for at, words in marks if words[0] == "step")
    spans["start-up"] = [first_step - marks[0][0]]
    return {kind: statistics.median(values) if values else 0.01 for kind, values in spans.items()}


def plan(kills: int, rng: random.Random, kinds: tuple[str, ...] | None) -> list[str]:
    """The kind of moment each kill aims at: a shuffled rotation of KINDS, the final evaluation last."""
    if kinds is not None:
        return list(kinds)
    rotation: list[str] = []
    while len(rotation) < kills - 1:
        rotation += rng.sample(KINDS, len(KINDS))
    return rotation[: kills - 1] + ["final evaluation"]


def trigger_for(kind: str, rng: random.Random, steps: int):
    """A test on a marker's words: the n-th marker of the kind's beginning in this process."""
    if kind == "start-up":
        return lambda words: words[0] == "start"
    if kind == "final evaluation":
        return lambda words: words == ["begin", "evaluation", str(steps)]
    wanted = ["step"] if kind == "step" else ["begin", kind]
    count = {"step": rng.randint(1, 12), "checkpoint": rng.randint(1, 2), "evaluation": rng.randint(1, 2), "log": rng.randint(1, 4)}[kind]
    seen = [0]

    def trigger(words: list[str]) -> bool:
        if words[: len(wanted)] == wanted:
            seen[0] += 1
        return seen[0] == count

    return trigger


# --------------------------------------------------------------------------- the comparison


def without_clock(run: Path) -> list[dict]:
    from gentk.rundir import MACHINE_PREFIXES  # speed/, time/, machine/: two runs of one recipe differ in them

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(MACHINE_PREFIXES)} for row in rows]


def compare(run: Path, reference: Path, steps: int) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for each property the killed run must share with the reference."""
    import torch

    recipe = tomllib.loads(RECIPE.read_text())
    log_every, eval_every = recipe["train"]["log_every"], recipe["eval"]["every"]

    sys.path.insert(0, str(REPO))
    from gentk.rundir import MACHINE_PREFIXES, read_metrics

    checks = []
    rows, expected = without_clock(run), without_clock(reference)
    differ = next((i for i, (a, b) in enumerate(zip(rows, expected)) if a != b), None)
    detail = (
        f"{len(rows)} rows"
        if rows == expected
        else f"{len(rows)} rows against {len(expected)}; first difference at row {differ}: {rows[differ] if differ is not None else ''}"
    )
    checks.append(("metrics.jsonl equals the uninterrupted run's (without speed/, time/, machine/)", rows == expected, detail))
    seen = [(row["step"], any(k.startswith("eval/") for k in row)) for row in rows]
    twice = sorted({s for s in seen if seen.count(s) > 1})
    train_steps = sorted(s for s, is_eval in seen if not is_eval)
    wanted_train = sorted(set(range(log_every, steps + 1, log_every)) | {steps})
    checks.append(
        (
            "no step logged twice, none missing",
            not twice and train_steps == wanted_train,
            f"twice: {twice or 'none'}; training rows at {len(train_steps)} steps, {len(wanted_train)} expected",
        )
    )
    evaluations = [s for s, is_eval in seen if is_eval]
    wanted_eval = sorted(set(range(eval_every, steps + 1, eval_every)) | {steps})
    checks.append(("every scheduled evaluation present, once", evaluations == wanted_eval, f"evaluations at {evaluations}"))
    h5, h5_expected = ({k: v for k, v in read_metrics(r).items() if not k.startswith(MACHINE_PREFIXES)} for r in (run, reference))
    same = h5.keys() == h5_expected.keys() and all((h5[k] == h5_expected[k]).all() if h5[k].shape == h5_expected[k].shape else False for k in h5)
    bad = sorted(k for k in h5_expected if k not in h5 or h5[k].shape != h5_expected[k].shape or not (h5[k] == h5_expected[k]).all())
    checks.append(("metrics.h5 equals the uninterrupted run's", same, f"{len(h5)} series" if same else f"differ: {', '.join(bad[:4])}"))
    record, record_expected = (json.loads((r / "eval.json").read_text()) for r in (run, reference))

    def strip(rec):
        return {"step": rec["step"], "best": rec["best"], "metrics": {k: v for k, v in rec["metrics"].items() if not k.startswith(MACHINE_PREFIXES)}}

    checks.append(("eval.json: the same best and final metrics", strip(record) == strip(record_expected), f"best {record['best']}"))
    state, state_expected = (torch.load(r / "checkpoints" / "latest.pt", weights_only=True) for r in (run, reference))
    weights = all(torch.equal(state["model"][k], state_expected["model"][k]) for k in state_expected["model"]) and all(
        torch.equal(state["ema"][k], state_expected["ema"][k]) for k in state_expected["ema"]
    )
    checks.append(("the same final weights and EMA", weights and state["step"] == steps, f"step {state['step']}"))
    samples = sorted(int(p.stem.split("-")[1]) for p in (run / "samples").glob("step-*.png"))
    checks.append(("a sample grid for every evaluation", samples == wanted_eval, f"{len(samples)} grids"))
    return checks


# --------------------------------------------------------------------------- the loop


def kill_loop(kills: int, *, seed: int = 0, workdir: Path, steps: int | None = None, kinds: tuple[str, ...] | None = None, say=print) -> bool:
    """Run the loop in `workdir`; return whether every check passed (each is printed through `say`).

    kinds: the moments the kills aim at, in order (default: `plan`'s rotation of `kills`).
    """
    rng = random.Random(seed)
    kinds = plan(kills, rng, kinds)
    steps = steps or 10 * len(kinds) + 20
    recipe = [str(RECIPE), "--set", f"train.steps={steps}"]
    out, reference_out = workdir / "runs", workdir / "reference"
    try:
        reference = Process([*recipe, "--out", str(reference_out)])
        if reference.finish() != 0:
            say("\n".join(reference.lines[-20:]))
            say("FAIL: the uninterrupted run did not finish")
            return False
        typical = durations(reference.marks)
        say(f"uninterrupted run: {steps} steps; typical durations: " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in typical.items()))

        def resume_args() -> list[str]:
            runs = [r for r in out.glob("killed-*") if any((r / "checkpoints").glob("*.pt"))] if out.is_dir() else []
            if runs and rng.random() < 0.5:  # the form docs/training.md gives
                run = max(runs, key=lambda r: max(p.stat().st_mtime for p in (r / "checkpoints").glob("*.pt")))
                return [str(run / "recipe.toml"), "--resume", str(run)]
            return [*recipe, "--out", str(out), "--resume", "auto"]

        killed = []
        for number, kind in enumerate(kinds, 1):
            process = Process(resume_args())
            delay = rng.random() * (typical["evaluation" if kind == "final evaluation" else kind])
            if not process.kill_when(trigger_for(kind, rng, steps), delay):
                say("\n".join(process.lines[-20:]))
                say(f"FAIL: kill {number} ({kind}) came too late: the process exited with code {process.proc.returncode} first")
                return False
            killed.append(process)
            say(f"kill {number:2d}: {process.began()}; aimed at {kind:16s} died in {process.died_in()}{process.notes()}")
        last = Process(resume_args())
        code = last.finish()
        say(f"last process: {last.began()}; exited with code {code}{last.notes()}")
        if code != 0:
            say("\n".join(last.lines[-20:]))
            return False
        return verdict(killed, out, next(reference_out.glob("killed-*")), steps, say)
    finally:
        Process.stop_all()  # after an error in this script: no process left running


def verdict(killed: list[Process], out: Path, reference: Path, steps: int, say) -> bool:
    """Where the kills landed, then each check of the resumed run against the reference."""
    landed: dict[str, int] = {}
    for process in killed:
        place = process.died_in().split(" at step")[0].split(" after")[0].split(":")[0]
        landed[place] = landed.get(place, 0) + 1
    late = [process.late for process in killed]
    say(
        f"kills landed in: {', '.join(f'{k} {v}' for k, v in sorted(landed.items()))}; each at most {1000 * max(late):.1f} ms after the "
        f"moment aimed at (median {1000 * statistics.median(late):.1f} ms)"
    )
    runs = sorted(out.glob("killed-*"))
    run = max((r for r in runs if (r / "eval.json").is_file()), key=lambda r: r.stat().st_mtime)
    abandoned = [r.name for r in runs if r != run]
    if abandoned:
        say(f"run directories started by a process killed before its first checkpoint (a new run began after them): {', '.join(abandoned)}")
    passed = True
    for check, ok, detail in compare(run, reference, steps):
        say(f"{'PASS' if ok else 'FAIL'}: {check} ({detail})")
        passed &= ok
    say(
        f"{'PASS' if passed else 'FAIL'}: {len(killed)} kills -9 and resumes, then "
        f"{'the same run as' if passed else 'a run that differs from'} an uninterrupted one"
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="kills -9 before the last resume (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan and the random moments")
    parser.add_argument("--steps", type=int, default=None, help="training steps of the run (default: 10 per kill + 20)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return 0 if kill_loop(args.kills, seed=args.seed, workdir=args.keep, steps=args.steps) else 1
    with tempfile.TemporaryDirectory(prefix="gentk-kill-loop-") as workdir:
        return 0 if kill_loop(args.kills, seed=args.seed, workdir=Path(workdir), steps=args.steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
