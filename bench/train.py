"""Training speed and memory of every recipe through the engine (gentk.train), on this machine.

For each recipe, two sizes: its default (the recipe as written) and its small size (its
``[profiles.small]`` table; the step count is this script's). Each measurement runs in a fresh process, which trains `--warmup` steps, then
`--steps` timed steps through `gentk.train.train` (evaluation and checkpoints pushed past
the end, samples off), and reports:

    steps/s, images/s   over the timed steps only (the engine's own speed/steps_per_s log)
    peak memory         the process's peak resident set (CPU; data set included) or the
                        peak CUDA memory allocated (GPU)

    .venv/bin/python bench/train.py                          # every recipe, both sizes
    .venv/bin/python bench/train.py recipes/vae.toml --sizes small --steps 20
    .venv/bin/python bench/train.py --write docs/benchmarks.md   # replace this script's section

The machine may be shared: the load average at the start of each measurement is shown
next to it. Data come from $GENTK_DATA (real MNIST for the paper's recipes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench/train.py: begin -->", "<!-- bench/train.py: end -->"


def measure(recipe: str, profile: str | None, overrides: list[str], steps: int, warmup: int, device: str) -> dict:
    """Run in a child process (see `child`) so that peak memory is this run's own."""
    load = os.getloadavg()[0]
    command = [
        sys.executable,
        __file__,
        "--child",
        recipe,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--device",
        device,
        *([f"--profile={profile}"] if profile else []),
        *[f"--set={o}" for o in overrides],
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}", "load": load}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = load
    return result


def child(args) -> None:
    import resource

    import torch

    import gentk
    from gentk.train import train

    plugins = gentk.load_plugins()
    total = args.warmup + args.steps
    overrides = [
        *args.set,
        f"train.steps={total}",
        f"train.log_every={args.warmup}",
        f"eval.every={total + 1}",
        f"train.checkpoint_every={total + 1}",
        "eval.samples=0",
        "eval.max_examples=100",
        "eval.metrics=[]",
    ]
    recipe = gentk.load_recipe(args.child, overrides, profile=args.profile, plugins=plugins)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        train(recipe, plugins=plugins, out=out, device=args.device)
        (run,) = Path(out).iterdir()
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "speed/steps_per_s" in line]
    # each log covers the steps since the previous one: add up the time of those after warm-up
    seconds, steps, previous = 0.0, 0, 0
    for entry in logs:
        if previous >= args.warmup:
            seconds += (entry["step"] - previous) / entry["speed/steps_per_s"]
            steps += entry["step"] - previous
        previous = entry["step"]
    steps_per_s = steps / seconds
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    batch = recipe.data.common.batch_size
    print(json.dumps({"steps_per_s": steps_per_s, "images_per_s": steps_per_s * batch, "peak_mib": peak, "batch": batch}))


def number(x: float) -> str:
    """Three significant digits, without exponents."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def table(rows: list[tuple[str, str, dict]], args) -> str:
    import torch

    lines = [
        BEGIN,
        "## Training speed per recipe (bench/train.py)",
        "",
        f"`{' '.join(['python bench/train.py', *sys.argv[1:]])}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), device {args.device}; "
        f"{args.warmup} warm-up steps, then {args.steps} timed steps through the engine. "
        "Default = the recipe as written (MNIST, batch 100); small = its `--profile small` (the recipe's "
        "`[profiles.small]` table). Peak memory is the peak resident set of the whole process (data included) on CPU, "
        "the peak CUDA allocation on a GPU. The machine is shared: the 1-minute load average at the start of each run is shown.",
        "",
        "| recipe | size | batch | steps/s | images/s | peak memory (MiB) | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, r in rows:
        if "error" in r:
            lines.append(f"| {name} | {size} | | failed: {r['error']} | | | {r['load']:.1f} |")
        else:
            lines.append(
                f"| {name} | {size} | {r['batch']} | {number(r['steps_per_s'])} | {number(r['images_per_s'])} | {r['peak_mib']:.0f} | "
                f"{r['load']:.1f} |"
            )
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this script's section of the file (others' sections stay as they are)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help="recipe files (default: recipes/*.toml)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--sizes", default="default,small", help="comma-separated: default, small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (train.threads; default: torch's choice)")
    parser.add_argument("--write", type=Path, default=None, help="replace this script's section of this markdown file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    recipes = [Path(r) for r in args.recipes] or sorted((REPO / "recipes").glob("*.toml"))
    rows = []
    for recipe in recipes:
        for size in args.sizes.split(","):
            overrides = [f"train.threads={args.threads}"] if args.threads else []
            result = measure(str(recipe), "small" if size == "small" else None, overrides, args.steps, args.warmup, args.device)
            rows.append((recipe.stem, size, result))
            print(f"{recipe.stem:28s} {size:8s} {json.dumps(result)}", flush=True)
    section = table(rows, args)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
