"""Speed of the gated PixelCNN decoder on CPU: training throughput and sampling time.

Configuration (docs/architecture.md, "Performance facts"): 10 gated layers, 64 channels,
7x7 mask-A then 3x3 mask-B, Bernoulli output, 28x28 binary images, adaptive-bias
conditioning on a 10-dimensional code, Adam.

    .venv/bin/python bench/pixelcnn.py                 # training + cached + naive sampling
    .venv/bin/python bench/pixelcnn.py --skip-naive    # without the naive sampler (about 2.5 minutes)
    .venv/bin/python bench/pixelcnn.py --profile       # where the training step spends its time
    .venv/bin/python bench/pixelcnn.py --bf16 --skip-sampling   # training under CPU bf16 autocast
    .venv/bin/python bench/pixelcnn.py --bf16 --compile --profile --skip-sampling   # compiled: inductor's kernels by name
    .venv/bin/python bench/pixelcnn.py --roofline      # the convolutions alone: an upper bound on training speed
    .venv/bin/python bench/pixelcnn.py --roofline --peak   # GFLOP/s of sgemm and of each convolution

Each measurement is repeated and the best run is reported, with the load average next to
it: run it on a quiet machine. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from gentk.pixelcnn import PixelCNNDecoder, cpu_has_native_bf16


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def build(args) -> PixelCNNDecoder:
    torch.manual_seed(0)
    return PixelCNNDecoder(
        image_shape=(1, 28, 28),
        cond_size=10,
        layers=args.layers,
        channels=args.channels,
        conditioning="adaptive_bias",
        likelihood="bernoulli",
        bf16=args.bf16,
    )


def bench_training(args) -> float:
    model = build(args)
    if args.compile:
        import torch._inductor.config as inductor

        inductor.cpp.enable_kernel_profile = True  # each generated kernel is a row of --profile's table
        model.compile()  # what train.compile does to each part
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, 1, 28, 28, generator=g) < 0.3).float()
    c = torch.randn(args.batch, 10, generator=g)

    def step():
        loss = -model(x, c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3 if args.compile else 2):  # warm-up: oneDNN primitive creation, allocator; compiling
        step()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    best = 0.0
    for r in range(args.repeats):
        t0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        rate = args.steps * args.batch / (time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / (args.steps * args.batch)
        best = max(best, rate)
        print(f"  training run {r}: {rate:6.1f} images/s, {cpu * 1e3:.0f} ms CPU time per image ({load()})", flush=True)
    return best


def conv_shapes(model: PixelCNNDecoder, batch: int) -> list[tuple[str, tuple, tuple, bool]]:
    """Every convolution of one training step, as (name, input shape, weight shape, input needs a
    gradient), with the shapes `GatedLayer.forward` gives them (inputs already padded)."""
    _, height, width = model.image_shape
    shapes = []
    for i, layer in enumerate(model.layers):
        f, p2, k = layer.v_conv.in_channels, layer.v_conv.out_channels, layer.kernel
        needs_grad = i > 0  # the image needs no gradient
        shapes += [
            # The vertical stack and the link run on rows 0 .. H-2 (see GatedLayer.forward).
            (f"layer {i} vertical", (batch, f, height - 1 + layer.v_rows - 1, width + 2 * (k // 2)), (p2, f, layer.v_rows, k), needs_grad),
            (f"layer {i} horizontal", (batch, f, height, width + layer.h_cols - 1), (p2, f, 1, layer.h_cols), needs_grad),
            (f"layer {i} link", (batch, p2, height - 1, width), (p2, p2, 1, 1), True),
            (f"layer {i} residual+skip", (batch, p2 // 2, height, width), (p2, p2 // 2, 1, 1), True),
        ]
    p, out = model.head1.in_channels, model.head2.out_channels
    return shapes + [("head 1", (batch, p, height, width), (p, p, 1, 1), True), ("head 2", (batch, p, height, width), (out, p, 1, 1), True)]


def time_conv(x_shape, w_shape, needs_grad: bool, memory_format, bf16: bool, repeats: int) -> float:
    """Best time of one convolution's forward and backward (input, weight and bias gradients)."""
    x = torch.randn(x_shape).contiguous(memory_format=memory_format).requires_grad_(needs_grad)
    w = torch.randn(w_shape).contiguous(memory_format=memory_format).requires_grad_(True)
    b = torch.zeros(w_shape[0], requires_grad=True)
    wrt = [x, w, b] if needs_grad else [w, b]
    best = float("inf")
    for r in range(repeats + 1):  # the first run creates oneDNN's primitives
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.conv2d(x, w, b)
        torch.autograd.grad(y, wrt, torch.ones_like(y))
        if r:
            best = min(best, time.perf_counter() - t0)
    return best


def conv_flops(x_shape, w_shape, needs_grad: bool) -> float:
    """Floating-point operations of one convolution's forward and backward (2 per multiply-add;
    the input gradient only where the input needs one). Inputs are already padded."""
    batch, _, height, width = x_shape
    out_ch, in_ch, kh, kw = w_shape
    forward = 2 * batch * (height - kh + 1) * (width - kw + 1) * out_ch * in_ch * kh * kw
    return forward * (3 if needs_grad else 2)


def bench_peak(args, shapes) -> None:
    """What this CPU's fp32 kernels reach: a large sgemm, and each convolution of the step alone."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    print(f"  fp32 sgemm 4096 x 4096 x 4096: {2 * 4096**3 / best / 1e9:.0f} GFLOP/s ({load()})", flush=True)
    total_flops = 0.0
    for name, x, w, g in shapes:
        seconds = time_conv(x, w, g, torch.channels_last, False, args.repeats)
        total_flops += conv_flops(x, w, g)
        print(
            f"  fp32 channels last, {name:28s} {seconds * 1e3:6.1f} ms forward+backward, {conv_flops(x, w, g) / seconds / 1e9:4.0f} GFLOP/s",
            flush=True,
        )
    print(f"  the step's convolutions: {total_flops / args.batch / 1e9:.2f} GFLOP per image (forward and backward)", flush=True)


def bench_roofline(args) -> None:
    """Training time if the step did nothing but its convolutions, in each memory format."""
    model = build(args)
    shapes = conv_shapes(model, args.batch)
    if args.peak:
        bench_peak(args, shapes)
        return
    for bf16 in (False, True) if cpu_has_native_bf16() else (False,):
        for name, memory_format in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            total = sum(time_conv(x, w, g, memory_format, bf16, args.repeats) for _, x, w, g in shapes)
            print(
                f"  {'bf16' if bf16 else 'fp32'} convolutions alone, {name}: {total * 1e3:.0f} ms per step of {args.batch} -> at most "
                f"{args.batch / total:.1f} images/s ({load()})",
                flush=True,
            )


def bench_sampling(args) -> tuple[float, float | None]:
    model = build(args).eval()
    c = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    model.sample(16, c, generator=torch.Generator().manual_seed(0))  # warm-up
    best = float("inf")
    for r in range(args.repeats):
        t0, cpu0 = time.perf_counter(), time.process_time()
        cached = model.sample(16, c, generator=torch.Generator().manual_seed(0))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        best = min(best, wall)
        print(f"  cached sampling run {r}: {wall:.3f} s, {cpu:.3f} s CPU time ({load()})", flush=True)
    naive_time = None
    if not args.skip_naive:
        t0, cpu0 = time.perf_counter(), time.process_time()
        naive = model.sample_naive(16, c, generator=torch.Generator().manual_seed(0))
        naive_time = time.perf_counter() - t0
        print(
            f"  naive sampling: {naive_time:.1f} s, {time.process_time() - cpu0:.1f} s CPU time ({load()}); same samples as cached: "
            f"{torch.equal(naive, cached)}",
            flush=True,
        )
    return best, naive_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="train with the decoder's bf16 option (CPU bfloat16 autocast)")
    parser.add_argument("--compile", action="store_true", help="train the decoder compiled (torch.compile, as train.compile does)")
    parser.add_argument(
        "--roofline",
        action="store_true",
        help="time the training step's convolutions alone (forward and backward), fp32 and bf16, NCHW and channels_last",
    )
    parser.add_argument(
        "--peak", action="store_true", help="with --roofline: GFLOP/s of a large fp32 sgemm and of each of the step's convolutions alone"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, {load()}")
    if args.roofline:
        bench_roofline(args)
        return
    if not args.skip_training:
        rate = bench_training(args)
        print(f"training: best {rate:.1f} images/s (batch {args.batch}, {args.layers} layers, {args.channels} channels)")
    if not args.skip_sampling:
        cached, naive = bench_sampling(args)
        print(f"cached sampling of 16 images: best {cached:.3f} s")
        if naive is not None:
            print(f"naive sampling of 16 images: {naive:.1f} s; cached is {naive / cached:.0f}x faster")


if __name__ == "__main__":
    main()
