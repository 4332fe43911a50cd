"""A/B timing of the PixelCNN training step: this checkout's gentk/pixelcnn.py against another
version of the file, alternating in one process.

On a shared or virtual machine the speed drifts by 10 % over minutes, so two benchmark runs
minutes apart cannot show a 5 % change. Alternating rounds of steps of both versions in one
process can. Configuration as bench/pixelcnn.py (10 layers, 64 channels, batch 64, 28x28
binary images, adaptive-bias conditioning on a 10-dim code, Adam).

    git show HEAD~1:gentk/pixelcnn.py > /tmp/old_pixelcnn.py
    .venv/bin/python bench/pixelcnn_ab.py /tmp/old_pixelcnn.py            # fp32
    .venv/bin/python bench/pixelcnn_ab.py /tmp/old_pixelcnn.py --bf16     # the bf16 option
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch

import gentk.pixelcnn


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("pixelcnn_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", help="path of the other version of gentk/pixelcnn.py")
    parser.add_argument("--bf16", action="store_true", help="train with the decoder's bf16 option")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per version and round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, 1, 28, 28, generator=g) < 0.3).float()
    c = torch.randn(args.batch, 10, generator=g)
    versions = {}
    for name, module in (("other", load_module(args.other)), ("this", gentk.pixelcnn)):
        torch.manual_seed(0)
        model = module.PixelCNNDecoder(image_shape=(1, 28, 28), cond_size=10, conditioning="adaptive_bias", likelihood="bernoulli", bf16=args.bf16)
        versions[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))

    def step(name: str) -> None:
        model, opt = versions[name]
        loss = -model(x, c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name in ("other", "this", "other", "this"):  # warm-up: oneDNN primitives, allocator
        step(name)
    rates: dict[str, list[float]] = {"other": [], "this": []}
    for _ in range(args.rounds):
        for name in rates:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
    print(f"torch {torch.__version__}, {args.threads} threads, {'bf16' if args.bf16 else 'fp32'}, load average {os.getloadavg()[0]:.2f}")
    for name, label in (("other", args.other), ("this", "this checkout")):
        r = rates[name]
        print(f"  {label}: median {statistics.median(r):.1f} images/s, best {max(r):.1f} (rounds: {' '.join(f'{v:.1f}' for v in r)})")
    print(f"  this / other: {statistics.median(rates['this']) / statistics.median(rates['other']):.3f} (medians)")


if __name__ == "__main__":
    main()
