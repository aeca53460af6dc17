#!/usr/bin/env bash
# Issue #8's GPU check in one call of about 5 minutes: bf16 MFU of the base
# train step at a realistic batch, side by side with PyTorch on the same GPU.
#
#   OUT=gpu_out bash benchmarks/gpu_check.sh        # from the repository root
#
# 1. a smoke run (tiny preset, ITM only): the packages import and a step
#    compiles on this machine's jax;
# 2. base, bf16, batch 256 x (62 text + 100 regions) = 41472 positions, every
#    task, the layers unrolled (the model's default; on an H200 the scanned
#    stack's stacked buffers cost about 45 ms a step), the PyTorch side
#    (HuggingFace BertModel under bf16 autocast) taking turns;
# 3. region extraction (issue #25): the ResNet-101 detector with random weights
#    on COCO-sized images (one 600 x 800 bucket), fp32 and bf16, batch 8: images/s
#    and each stage's time (extract.py --device-check; a few minutes, not yet measured).
# Logs, JSON and the markdown table land in $OUT.
#
# The machine's own jax, flax, optax and CUDA plugin are used as they are.
# Wheels in .whl/ (pure-Python packages the machine lacks, such as ott-jax and
# jaxopt; `make gpu-wheels` fetches them) are installed into a scratch folder
# first, without dependencies.
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
PRESET=${PRESET:-base}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The PyTorch side shares the GPU: JAX takes 60% of its memory, not 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv 2>&1 | tee "$OUT/gpu.txt"
wheels=(.whl/*.whl)
if [ -e "${wheels[0]}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/uniter_site "${wheels[@]}" || exit 1
    export PYTHONPATH=/tmp/uniter_site:$PWD
else
    export PYTHONPATH=$PWD
fi
"$PY" -c "import jax, flax, optax, ott; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'ott', ott.__version__)"

bench() {  # bench SECONDS NAME ARGS...: one bench_step.py run, logged to $OUT/NAME.txt
    local limit=$1 name=$2
    shift 2
    timeout "$limit" "$PY" benchmarks/bench_step.py "$@" 2>&1 | tee "$OUT/$name.txt"
}
bench 120 smoke --preset tiny --tasks itm --rounds 1 --repeats 2 --no-torch --no-pipeline ||
    exit 1
bench 360 b256 --preset "$PRESET" --dtype bfloat16 --batch 256 --text 62 --regions 100 \
    --no-scan --rounds 3 --repeats 10 --no-pipeline --json "$OUT/b256.json" \
    --out "$OUT/benchmarks.md"
timeout 360 "$PY" benchmarks/extract.py --device-check --json "$OUT/extract.json" 2>&1 |
    tee "$OUT/extract.txt"
