#!/usr/bin/env bash
# The GPU smoke test: what the CPU tests cannot show, checked on a real GPU; meant to take under 10
# minutes on one GPU (not timed yet: it has not run on a GPU).
#
#   bench/gpu_smoke.sh                          # every part, on cuda
#   bench/gpu_smoke.sh --device cpu             # the parts a CPU can run (bf16 and fp16 runs need CUDA: left out)
#   bench/gpu_smoke.sh --only amp,syncs         # some parts (names below)
#   bench/gpu_smoke.sh --keep /tmp/smoke        # keep the runs it makes (default: a temporary directory)
#   bench/gpu_smoke.sh --synthetic --steps 20   # the synthetic dataset, 20 steps a run
#
# Parts, in order:
#   versions       Python, torch, CUDA and cuDNN versions, the device's name, the checkout
#   tests          the engine and multi-process tests (CPU and gloo), torch.compile's included
#   amp            the semi-supervised AAE with train.amp = none, bf16 and fp16: finite results
#   pixelgan       the semi-supervised PixelGAN with bf16, an EMA and torch.compile
#   resume         bench/kill_loop.py: kill -9 a run 3 times, resume, the same end as one run
#   bf16-nll       a logistic-mixture PixelCNN's bits/dim under bf16 autocast within 0.002 of fp32
#   sampling       cached sampling equals naive sampling on the device, TF32 off, CPU generator
#   syncs          gentk's device-to-host syncs per training step (1: the NaN check)
#   deterministic  train.deterministic = true twice: the same bits
#   ddp            two GPUs under torchrun (NCCL): trains, and rank 0's evaluation waits
#   bench          bench/train.py on the device (speed and memory of two recipes)
#
# Each part prints PASS, FAIL or SKIP (with the reason) and its time; the script goes on
# after a failure and exits 1 if any part failed (2 on a usage error). The runs use MNIST
# from $GENTK_DATA when it is there, else the synthetic dataset (a machine without network).
# PYTHON picks the interpreter (default: .venv/bin/python, else python3). Record the output
# in docs/benchmarks.md with the device's name.

set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" GENTK_DISABLE_PLUGIN_AUTOLOAD=1
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

ALL_PARTS="versions tests amp pixelgan resume bf16-nll sampling syncs deterministic ddp bench"
DEVICE=cuda
ONLY=""
STEPS=""
KEEP=""
SYNTHETIC=0
usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
        --only) ONLY=${2:?--only needs parts}; shift 2 ;;
        --steps) STEPS=${2:?--steps needs a number}; shift 2 ;;
        --keep) KEEP=${2:?--keep needs a directory}; shift 2 ;;
        --synthetic) SYNTHETIC=1; shift ;;
        -h | --help) usage 0 ;;
        *) echo "gpu_smoke.sh: unknown argument '$1'" >&2; usage 2 ;;
    esac
done
PARTS=${ONLY//,/ }
PARTS=${PARTS:-$ALL_PARTS}
for part in $PARTS; do
    case " $ALL_PARTS " in *" $part "*) ;; *) echo "gpu_smoke.sh: no part '$part'; parts: $ALL_PARTS" >&2; exit 2 ;; esac
done
case "$DEVICE" in cpu | cuda | cuda:*) ;; *) echo "gpu_smoke.sh: --device is cuda, cuda:N or cpu, not '$DEVICE'" >&2; exit 2 ;; esac
ON_GPU=0
[ "$DEVICE" != cpu ] && ON_GPU=1
[ -n "$STEPS" ] || { [ $ON_GPU = 1 ] && STEPS=200 || STEPS=20; }
[ $ON_GPU = 1 ] || export OMP_NUM_THREADS=1 # one thread each: a shared CPU stalls threads that wait for each other
if [ -n "$KEEP" ]; then
    OUT=$KEEP
    mkdir -p "$OUT"
else
    OUT=$(mktemp -d)
    trap 'rm -rf "$OUT"' EXIT
fi

# The data: MNIST when $GENTK_DATA has it, else the synthetic dataset.
DATA=()
if [ $SYNTHETIC = 1 ] || [ ! -e "${GENTK_DATA:-/nonexistent}/mnist" ]; then
    DATA=(--set data.name=synthetic)
fi
# The model sizes: the recipes' own on a GPU, their "Small budget" sizes on a CPU.
AAE_SIZE=()
PIXELGAN_SIZE=()
if [ $ON_GPU = 0 ]; then
    AAE_SIZE=(--set "model.encoder.hidden=[32]" --set "model.decoder.hidden=[32]" --set "model.latents.y.regularizer.discriminator=[32]"
        --set "model.latents.z.regularizer.discriminator=[32]")
    PIXELGAN_SIZE=(--set "model.encoder.channels=[4]" --set "model.encoder.hidden=[16]" --set "model.latents.y.regularizer.discriminator=[16]"
        --set model.decoder.layers=2 --set model.decoder.channels=8)
fi

gentk_run() { # RECIPE NAME [--set ...]: a short run of RECIPE under $OUT/NAME
    local recipe=$1 name=$2
    shift 2
    "$PYTHON" -m gentk run "$recipe" --device "$DEVICE" --out "$OUT/$name" --set train.steps="$STEPS" --set eval.every="$STEPS" \
        --set eval.max_examples=500 --set eval.samples=16 --set 'eval.metrics=["recon_nll", "semisup_error"]' "${DATA[@]}" "$@"
}

finite_results() { # RUN_PARENT...: every run's eval.json has finite metrics; prints the main ones
    "$PYTHON" - "$@" <<'EOF'
import json, math, sys
from pathlib import Path
bad = 0
for parent in sys.argv[1:]:
    for record in sorted(Path(parent).glob("*/eval.json")):
        metrics = json.loads(record.read_text())["metrics"]
        shown = {k.split("/", 2)[-1]: round(v, 4) for k, v in metrics.items() if k.endswith(("reconstruction/loss", "recon_nll", "semisup_error"))}
        infinite = [k for k, v in metrics.items() if not math.isfinite(v)]
        print(f"{record.parent.parent.name}: {shown}" + (f"; NOT FINITE: {infinite}" if infinite else ""))
        bad += bool(infinite) or not metrics
sys.exit(1 if bad else 0)
EOF
}

part_versions() {
    "$PYTHON" - "$DEVICE" <<'EOF' || return 1
import os, platform, sys
import torch
import gentk
device = torch.device(sys.argv[1])
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {cudnn}), gentk {gentk.__version__}")
if device.type == "cuda":
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available here: run on a machine with a GPU, or with --device cpu.")
    p = torch.cuda.get_device_properties(device)
    print(f"device {device}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} GPU(s) visible")
else:
    print(f"device cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
EOF
    echo "checkout: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with changes)')"
}

part_tests() {
    GENTK_TEST_COMPILE=1 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_dist.py tests/test_gloo.py tests/test_checkpoint.py
}

part_amp() {
    local amp failed=0
    for amp in none bf16 fp16; do
        if [ $ON_GPU = 0 ] && [ $amp != none ]; then
            echo "amp=$amp: not run (CUDA only)"
            continue
        fi
        echo "amp=$amp"
        gentk_run recipes/aae_semisup.toml "amp-$amp" --set train.amp=$amp "${AAE_SIZE[@]}" >"$OUT/amp-$amp.log" 2>&1 || {
            tail -5 "$OUT/amp-$amp.log"
            failed=1
        }
    done
    finite_results "$OUT"/amp-* || failed=1
    return $failed
}

part_pixelgan() {
    local amp=bf16
    [ $ON_GPU = 1 ] || amp=none # bf16 autocast is the engine's CUDA path
    gentk_run recipes/pixelgan_semisup.toml pixelgan --set train.amp=$amp --set train.ema=0.999 --set train.compile=true \
        "${PIXELGAN_SIZE[@]}" >"$OUT/pixelgan.log" 2>&1 || {
        tail -5 "$OUT/pixelgan.log"
        return 1
    }
    finite_results "$OUT/pixelgan"
}

part_resume() {
    # bench/kill_loop.py trains on the recipe's device, auto: the GPU when one is visible
    if [ $ON_GPU = 1 ]; then
        "$PYTHON" bench/kill_loop.py --kills 3 --keep "$OUT/kills"
    else
        CUDA_VISIBLE_DEVICES="" "$PYTHON" bench/kill_loop.py --kills 3 --keep "$OUT/kills"
    fi
}

part_bf16_nll() {
    "$PYTHON" - "$DEVICE" <<'EOF'
import sys
import torch
from gentk.distributions import bits_per_dim
from gentk.pixelcnn import PixelCNNDecoder
device = torch.device(sys.argv[1])
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # an fp32 reference, not TF32
torch.manual_seed(0)
model = PixelCNNDecoder(image_shape=(3, 4, 4), cond_size=0, conditioning="none", likelihood="logistic_mixture",
                        layers=3, channels=6, first_kernel=5, kernel=3, mixtures=2).to(device).eval()
with torch.no_grad():  # sharp components with means near 0.8, where bf16 would round the means by a quarter of a bin
    bias = model.head2.bias.view(3, 3, 2)
    bias[:, 1] += 0.8
    bias[:, 2] -= 5.0
x = model.sample(64, generator=torch.Generator().manual_seed(1), temperature=0.5)  # a CPU generator for any device
with torch.no_grad():
    fp32 = bits_per_dim(-model(x), x[0].numel()).mean().item()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = bits_per_dim(-model(x), x[0].numel()).mean().item()
print(f"bits/dim: fp32 {fp32:.5f}, bf16 autocast {bf16:.5f}, difference {abs(bf16 - fp32):.5f} (at most 0.002)")
sys.exit(0 if abs(bf16 - fp32) <= 0.002 else 1)
EOF
}

part_sampling() {
    "$PYTHON" - "$DEVICE" <<'EOF'
import sys, time
import torch
from gentk.pixelcnn import CONDITIONINGS, LIKELIHOODS, PixelCNNDecoder
device = torch.device(sys.argv[1])
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
failed = 0
for likelihood in LIKELIHOODS:
    for conditioning in CONDITIONINGS:
        torch.manual_seed(0)
        cond = 0 if conditioning == "none" else 3
        model = PixelCNNDecoder(image_shape=(3, 5, 5), cond_size=cond, conditioning=conditioning, likelihood=likelihood, layers=3,
                                channels=12, first_kernel=5, kernel=3, mixtures=2, map_channels=4).to(device).eval()
        code = torch.randn(4, cond, device=device) if cond else None
        cached, cached_params = model.sample(4, code, generator=torch.Generator().manual_seed(7), temperature=0.9, return_params=True)
        naive, naive_params = model.sample_naive(4, code, generator=torch.Generator().manual_seed(7), temperature=0.9, return_params=True)
        with torch.no_grad():
            full = model.logits(cached, code)
        same = torch.equal(cached, naive)
        close = max((cached_params - full).abs().max().item(), (naive_params - full).abs().max().item())
        ok = same and close < 1e-4
        failed += not ok
        print(f"{likelihood:17s} {conditioning:19s} samples equal: {same}, parameters within {close:.1e}{'' if ok else '  FAILED'}")
if device.type == "cuda":  # the CPU's timings are in docs/benchmarks.md
    model = PixelCNNDecoder(image_shape=(1, 28, 28), cond_size=10, conditioning="adaptive_bias", layers=12, channels=64).to(device).eval()
    code = torch.eye(10, device=device).repeat(10, 1)
    for _ in range(2):  # the second is timed
        start = time.perf_counter()
        model.sample(100, code, generator=torch.Generator().manual_seed(0))
        torch.cuda.synchronize()
    print(f"cached sampling of 100 28x28 images (12 layers, 64 channels): {time.perf_counter() - start:.2f} s")
sys.exit(1 if failed else 0)
EOF
}

part_syncs() {
    if [ $ON_GPU = 0 ]; then # no CUDA to ask: count gentk's reads of tensors instead
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_gloo.py -k "reads_from_the_device or syncs_once"
        return
    fi
    "$PYTHON" - "$DEVICE" "$OUT/syncs" <<'EOF'
import sys, warnings
import torch
import gentk
import gentk.train as engine
device, out = sys.argv[1], sys.argv[2]
per_step = []
train_step = engine.Run.train_step
def counted(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(run)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    per_step.append(([f"{w.filename}:{w.lineno}" for w in syncs if "/gentk/" in w.filename], len(syncs)))
engine.Run.train_step = counted
plugins = gentk.load_plugins(autoload=False)
recipe = gentk.load_recipe("bench/kill_loop.toml", ["train.steps=6", "train.log_every=3", "eval.every=100", "train.checkpoint_every=100"], plugins=plugins)
gentk.train(recipe, plugins=plugins, out=out, device=device)
steady = per_step[1:]  # the first step also sets things up
print("syncs per step, gentk's (all):", ", ".join(f"{len(g)} ({n})" for g, n in per_step))
print("gentk's:", sorted({site for g, _ in steady for site in g}))
sys.exit(0 if all(len(g) <= 1 for g, _ in steady) else 1)
EOF
}

part_deterministic() {
    local run failed=0
    for run in first second; do
        gentk_run recipes/pixelgan_semisup.toml "deterministic-$run" --set train.deterministic=true --set train.steps=10 \
            --set eval.every=10 --set "model.encoder.channels=[4]" --set "model.encoder.hidden=[16]" \
            --set "model.latents.y.regularizer.discriminator=[16]" --set model.decoder.layers=2 --set model.decoder.channels=8 \
            >"$OUT/deterministic-$run.log" 2>&1 || {
            tail -5 "$OUT/deterministic-$run.log"
            failed=1
        }
    done
    [ $failed = 0 ] || return 1
    "$PYTHON" - "$OUT"/deterministic-first/*/checkpoints/latest.pt "$OUT"/deterministic-second/*/checkpoints/latest.pt <<'EOF'
import sys
import torch
from gentk import checkpoint
a, b = (checkpoint.load(path)["model"] for path in sys.argv[1:3])
differ = [k for k in a if not torch.equal(a[k], b[k])]
print(f"{len(a)} tensors, {len(differ)} differ between the two runs" + (f": {differ[:5]}" if differ else ""))
sys.exit(1 if differ else 0)
EOF
}

part_ddp() {
    local gpus
    gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
    if [ $ON_GPU = 0 ] || [ "$gpus" -lt 2 ]; then
        echo "needs 2 GPUs ($gpus visible; the gloo tests cover the multi-process paths on a CPU)"
        return 77
    fi
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 -m gentk run recipes/aae_semisup.toml --device cuda --out "$OUT/ddp" \
        --set train.steps="$STEPS" --set eval.every="$STEPS" --set eval.max_examples=500 --set eval.samples=16 \
        --set 'eval.metrics=["recon_nll", "semisup_error"]' "${DATA[@]}" >"$OUT/ddp.log" 2>&1 || {
        tail -20 "$OUT/ddp.log"
        return 1
    }
    finite_results "$OUT/ddp"
}

part_bench() {
    if [ ${#DATA[@]} -gt 0 ]; then
        echo "bench/train.py measures the recipes on MNIST, and \$GENTK_DATA has none here"
        return 77
    fi
    local sizes=default
    [ $ON_GPU = 1 ] || sizes=small
    "$PYTHON" bench/train.py recipes/aae_semisup.toml recipes/pixelgan_semisup.toml --sizes $sizes --steps 20 --device "$DEVICE" \
        | tee "$OUT/bench.txt"
    ! grep -q '"error"' "$OUT/bench.txt"
}

declare -a SUMMARY=()
FAILED=0
for part in $PARTS; do
    echo "== $part"
    start=$SECONDS
    "part_${part//-/_}"
    code=$?
    took="$((SECONDS - start)) s"
    case $code in
        0) SUMMARY+=("PASS $part ($took)") ;;
        77) SUMMARY+=("SKIP $part ($took)") ;;
        *) SUMMARY+=("FAIL $part ($took)"); FAILED=1 ;;
    esac
    echo "${SUMMARY[-1]}"
done
echo "== summary (device $DEVICE, $STEPS steps a run, data ${DATA[*]:-from the recipes})"
printf '%s\n' "${SUMMARY[@]}"
exit $FAILED
