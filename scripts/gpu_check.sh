#!/usr/bin/env bash
# make gpu-check: on a CUDA machine, run the kernel tests on the GPU (Triton compiled, no interpreter) and
# `moebench kernels` at real model shapes, then the MoE layer at P=1 (every kernel, triton and torch); results go under results/<gpu-name>/. Takes < 5 minutes
# on one H100/H200. On a machine without CUDA it says so in one line and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu-check: no CUDA device visible to torch on $(hostname): nothing checked (run it on a GPU machine)" >&2
    exit 2
fi
unset TRITON_INTERPRET
start=$SECONDS
gpu=$("$PY" -c 'from moebench.bench.report import machine_tag; print(machine_tag())')
out="results/$gpu"
mkdir -p "$out"

echo "== gpu-check on $gpu: kernel tests on the GPU"
MOEBENCH_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_routing.py tests/test_kernels.py tests/test_kernels_bench.py 2>&1 | tee "$out/gpu-check-tests.log"

echo "== gpu-check on $gpu: kernel benchmark at real model shapes (bf16)"
bench() { timeout 150 "$PY" -m moebench kernels -n 20 -w 5 --save "$@"; }
for impl in triton torch; do
    bench --model mixtral-8x7b --impl "$impl" --skew uniform --tag "mixtral-8x7b-uniform-$impl"
    bench --model mixtral-8x7b --impl "$impl" --skew zipf:1.2 --batch 128,4096 --capacity-factor 2.0,none \
        --tag "mixtral-8x7b-zipf1p2-$impl"
done
bench --model mixtral-8x7b --impl triton --skew uniform --batch 1,16,128 --cuda-graph --tag mixtral-8x7b-uniform-graph
bench --model deepseek-v3 --impl triton --batch 128 --capacity-factor 1.0,2.0,none --tag deepseek-v3-t128
bench --model qwen3-30b-a3b --impl triton --batch 1,128,4096 --tag qwen3-30b-a3b
echo "== gpu-check on $gpu: the MoE layer at P=1 on the GPU, every kernel, Triton and torch, checked against float64"
for impl in triton torch; do
    timeout 150 "$PY" -m moebench moe --model mixtral-8x7b-tiny --batch 1,128 --impl "$impl" -n 50 --budget 0.5 \
        --save --tag "gpu-p1-$impl"
done
echo "gpu-check: done in $((SECONDS - start)) s; results in $out/"
