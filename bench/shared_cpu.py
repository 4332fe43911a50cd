"""Training and sampling speed on a CPU that other processes share, per thread setting.

On a 2-core machine one other busy process can make a 2-thread torch job many times
slower than idle: OpenMP's worker threads spin while they wait for each other, and a
thread whose core is taken holds up every parallel region. This script measures, for each
setting, the speed idle and beside ``--busy`` spinning processes, each measurement in a
fresh process (OpenMP reads its environment once, when torch loads):

    training   steps/s of ``--recipe`` through the engine (``speed/steps_per_s``)
    sampling   seconds for the cached PixelCNN sampler to draw 16 images (10 layers x 64
               channels, 28x28 binary; the best of ``--repeats`` calls)

    .venv/bin/python bench/shared_cpu.py                      # vae.toml, every setting, idle and 1 busy
    .venv/bin/python bench/shared_cpu.py --busy 1 --steps 200 --settings default passive

Settings: ``default`` (torch's own thread count, OpenMP's default wait policy), ``passive``
(the same threads with OMP_WAIT_POLICY=PASSIVE: waiting threads sleep), ``spin10k`` (GNU
OpenMP's spinning cut to 10 000 turns before a thread sleeps, ``GOMP_SPINCOUNT``) and ``one``
(one thread). The load average is printed with each measurement: the "idle" rows are only idle
if nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "default": ({}, None),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, None),
    "one": ({}, 1),
}

CHILD = r"""
import json, sys, tempfile, time
import torch
import gentk
from gentk.pixelcnn import PixelCNNDecoder

recipe_path, steps, threads, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if threads != "none":
    torch.set_num_threads(int(threads))
plugins = gentk.load_plugins()
overrides = [f"train.steps={steps}", f"train.log_every={steps}", "train.checkpoint_every=1000000", "eval.every=1000000", "eval.samples=0",
             "eval.metrics=[]"] + ([f"train.threads={threads}"] if threads != "none" else [])
recipe = gentk.load_recipe(recipe_path, plugins=plugins, overrides=overrides)
with tempfile.TemporaryDirectory() as out:
    train = gentk.train(recipe, plugins=plugins, out=out).metrics["speed/steps_per_s"]
torch.manual_seed(0)
model = PixelCNNDecoder(image_shape=(1, 28, 28), layers=10, channels=64, conditioning="none").eval()
model.sample(2)  # first call: allocations, oneDNN primitives
times = []
for _ in range(repeats):
    start = time.perf_counter()
    model.sample(16)
    times.append(time.perf_counter() - start)
print(json.dumps({"train_steps_per_s": train, "sample_s": min(times), "threads": torch.get_num_threads()}))
"""


def measure(setting: str, recipe: str, steps: int, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    extra, threads = SETTINGS[setting]
    env.update(extra)
    command = [sys.executable, "-c", CHILD, recipe, str(steps), str(threads or "none"), str(repeats)]
    out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the measurement of {setting!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/vae.toml")
    parser.add_argument("--steps", type=int, default=300, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="sampling calls per measurement (the best counts)")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes beside the loaded measurements")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPUs; recipe {args.recipe}, {args.steps} steps; {args.busy} busy process(es) in the loaded rows")
    rows = []
    for setting in args.settings:
        idle_load = os.getloadavg()[0]
        idle = measure(setting, args.recipe, args.steps, args.repeats)
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            time.sleep(2)  # let the spinners take their cores
            busy_load = os.getloadavg()[0]
            busy = measure(setting, args.recipe, args.steps, args.repeats)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
        rows.append((setting, idle, busy, idle_load, busy_load))
        print(
            f"{setting:8s} threads {idle['threads']}: training {idle['train_steps_per_s']:.2f} -> {busy['train_steps_per_s']:.2f} steps/s "
            f"({idle['train_steps_per_s'] / busy['train_steps_per_s']:.1f}x slower), sampling {idle['sample_s']:.3f} -> {busy['sample_s']:.3f} s "
            f"({busy['sample_s'] / idle['sample_s']:.1f}x slower); load average {idle_load:.2f} / {busy_load:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
