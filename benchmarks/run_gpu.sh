#!/usr/bin/env bash
# Every GPU benchmark in one command (random Llama-3.1-8B-shape weights; < 8 minutes on one H100):
#   benchmarks/run_gpu.sh [OUT_DIR] [extra `radixserve bench gpu` flags, e.g. --tokenizer DIR]
set -euo pipefail
RS=${RS:-.venv/bin/radixserve}
OUT=${1:-benchmarks/results/gpu}
shift || true
$RS bench gpu --model dummy:llama-3.1-8b --device cuda --out-dir "$OUT" --budget 330 "$@"
