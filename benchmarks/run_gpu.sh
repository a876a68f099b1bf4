#!/usr/bin/env bash
# Every GPU benchmark in one command (random Llama-3.1-8B-shape weights; < 8 minutes on one H100):
#   benchmarks/run_gpu.sh [OUT_DIR]     (default benchmarks/results/gpu)
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/gpu}
export PYTHONPATH=${PYTHONPATH:-.}
$PY -m radixserve bench gpu --model dummy:llama-3.1-8b --device cuda --out-dir "$OUT" --budget 330
