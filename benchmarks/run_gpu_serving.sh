#!/usr/bin/env bash
# Serving under load on one GPU (random Llama-3.1-8B-shape weights; about 6 minutes on one H100):
# the offline engine vs HTTP with 256 concurrent streams (split server, and one process), TTFT / ITL
# p50/p99, and a latency-throughput curve (Poisson rates up to saturation), JSON + markdown + PNG.
#   benchmarks/run_gpu_serving.sh OUT_DIR TOKENIZER_DIR [extra benchmarks/gpu_serving.py flags]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_DIR TOKENIZER_DIR [flags of benchmarks/gpu_serving.py]" >&2
  exit 2
fi
OUT=$1
TOK=$2
shift 2
PY=${PY:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
$PY "$HERE/gpu_serving.py" --model dummy:llama-3.1-8b --tokenizer "$TOK" --device cuda --out-dir "$OUT" \
  --num-requests 1000 --concurrency 256 --rates 8,16,24,32,40,inf --curve-requests 400 "$@" 2>&1 | tee "$OUT/gpu_serving.log"
