"""Training speed of variants of one or more recipes, alternating in one process (an A/B).

Each variant is a recipe path followed by ``--set``-style overrides, joined by ``|``:

    .venv/bin/python bench/variants.py --threads 2 --steps 40 --rounds 2 \\
        recipes/paper/pixelgan_mnist_100_cpu.toml \\
        'recipes/paper/pixelgan_mnist_100_cpu.toml|model.decoder.bf16=true'

Every round trains each variant for ``--steps`` steps through the engine (evaluation,
checkpoints and samples pushed past the end) and reads the engine's own
``speed/steps_per_s``, which counts training time only. Alternating the variants within
rounds makes a ratio between them fair on a machine whose speed drifts; the load average
at the start is printed, so a reader knows whether the machine was idle.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="RECIPE[|KEY=VALUE|KEY=VALUE...]")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants")
    parser.add_argument("--threads", type=int, default=2, help="train.threads")
    args = parser.parse_args()

    import gentk

    plugins = gentk.load_plugins()
    fixed = [
        f"train.steps={args.steps}",
        f"train.threads={args.threads}",
        f"train.log_every={max(1, args.steps // 4)}",
        "train.checkpoint_every=1000000",
        "eval.every=1000000",
        "eval.samples=0",
        "eval.metrics=[]",
    ]
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} ({os.cpu_count()} CPUs), threads {args.threads}, {args.steps} steps x {args.rounds} rounds")
    speeds: dict[str, list[float]] = {v: [] for v in args.variants}
    for round_ in range(args.rounds):
        for variant in args.variants:
            recipe_path, *overrides = variant.split("|")
            recipe = gentk.load_recipe(recipe_path, plugins=plugins, overrides=[*fixed, *overrides])
            with tempfile.TemporaryDirectory() as out:
                result = gentk.train(recipe, plugins=plugins, out=out)
            speeds[variant].append(result.metrics["speed/steps_per_s"])
            print(f"round {round_}: {speeds[variant][-1]:.3f} steps/s  {variant}", flush=True)
    reference = statistics.median(speeds[args.variants[0]])
    print("\nmedian steps/s (all rounds), ratio to the first variant:")
    for variant, values in speeds.items():
        median = statistics.median(values)
        print(f"  {median:7.3f}  x{median / reference:.2f}  {variant}  ({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
