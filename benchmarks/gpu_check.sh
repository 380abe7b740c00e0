#!/usr/bin/env bash
# The prepared accelerator check of split CIFAR-10 (docs/split_cifar10.md): in one
# run, the CIFAR-10 throughput benchmark (float32, then bfloat16 compute) and a short
# smoke run of the `gpu` preset, whose log gives the training steps/s and the
# sampling time per method on that machine. Everything lands in $OUT (default
# outputs/gpu_check/): benchmark.txt, benchmark_bf16.txt, smoke.log, and the smoke
# run's results.md, results.json and summary.png.
#
#     bash benchmarks/gpu_check.sh                    # with uv, as everywhere else
#     PYTHON=python3 bash benchmarks/gpu_check.sh     # a machine's own JAX (see below)
#
# On a machine without uv or internet (the project's lent GPU machines), PYTHON
# names an interpreter that has JAX with CUDA, Equinox, Diffrax, Optax and the
# rest; superdiff is taken from src/. Packages it lacks travel as wheels in .whl/
# (git-ignored through .git/info/exclude) and are installed first; for Python 3.12
# on x86-64 they are 4.5 MB, fetched where pip can reach PyPI with
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 \
#         --platform manylinux_2_17_x86_64 -d .whl \
#         grain==0.2.18 array-record portpicker importlib-resources
#
# FID is off: the Inception weights (87 MB) are too large to carry there.
#
# DATA_DIR names a CIFAR-10 copy; without it the smoke run writes random images in
# CIFAR-10's format (timing does not depend on the pixels). The sizes below are
# chosen to finish in about eight minutes on one H200 and can be changed from the
# environment (a CPU check: SMOKE_STEPS=2 SMOKE_SAMPLES=4 BENCH_ARGS="--small
# --batch-size 4 --num-samples 4 --num-steps 2 --repeats 1 --train-steps 1"
# SMOKE_ARGS="--unet tiny --batch-size 4 --sample-batch 4 --num-steps 2").
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
SMOKE_STEPS=${SMOKE_STEPS:-300}
SMOKE_SAMPLES=${SMOKE_SAMPLES:-256}
BENCH_ARGS=${BENCH_ARGS:-}
SMOKE_ARGS=${SMOKE_ARGS:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [[ -n "${PYTHON:-}" ]]; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    py=("$PYTHON")
else
    py=(uv run python)
fi

"${py[@]}" - <<'EOF' | tee "$OUT/devices.txt"
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}: {jax.devices()}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/devices.txt"

# shellcheck disable=SC2086  # the argument strings are word lists
"${py[@]}" benchmarks/cifar10.py $BENCH_ARGS 2>&1 | tee "$OUT/benchmark.txt"
# shellcheck disable=SC2086
"${py[@]}" benchmarks/cifar10.py --bf16 $BENCH_ARGS 2>&1 | tee "$OUT/benchmark_bf16.txt"

data=${DATA_DIR:-}
if [[ -z "$data" ]]; then
    data=$(mktemp -d)
    trap 'rm -rf "$data"' EXIT
    "${py[@]}" - "$data" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np

# Random images in CIFAR-10's "python version" format: 5 training batches of
# 10,000 and the test batch, labels 0-9 in turn.
folder = Path(sys.argv[1]) / "cifar-10-batches-py"
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    images = rng.integers(0, 256, (10_000, 3, 32, 32), dtype=np.uint8)
    batch = {b"data": images.reshape(10_000, -1), b"labels": [i % 10 for i in range(10_000)]}
    (folder / name).write_bytes(pickle.dumps(batch))
print(f"random CIFAR-10-format images in {folder}")
EOF
fi

start=$(date +%s)
# shellcheck disable=SC2086
"${py[@]}" experiments/split_cifar10.py --preset gpu --data-dir "$data" \
    --out "$OUT/smoke" --train-steps "$SMOKE_STEPS" --classifier-steps "$SMOKE_STEPS" \
    --grid-every "$SMOKE_STEPS" --num-samples "$SMOKE_SAMPLES" \
    --sample-batch "$SMOKE_SAMPLES" --no-fid \
    $SMOKE_ARGS 2>&1 | tee "$OUT/smoke.log"
echo "smoke run: $(($(date +%s) - start)) s" | tee -a "$OUT/smoke.log"
cp "$OUT/smoke/results.md" "$OUT/smoke/results.json" "$OUT/smoke/summary.png" "$OUT/"
