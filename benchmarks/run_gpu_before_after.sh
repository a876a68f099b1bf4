#!/usr/bin/env bash
# The same serving workload on two source trees in one run (no behaviour or speed change expected
# from a refactor): ShareGPT-shaped 1000 requests, offline (in-process generate_stream per request) and HTTP (split server,
# 256 streams), random Llama-3.1-8B weights. Each tree is run from its own sources via PYTHONPATH,
# with its own benchmarks/gpu_serving.py (the server launcher must match the tree's engine entry point).
#   benchmarks/run_gpu_before_after.sh BEFORE_TREE OUT_DIR TOKENIZER_DIR
# BEFORE_TREE: an export of the older commit (`git archive COMMIT radixserve kernels benchmarks | tar -x -C DIR`).
set -uo pipefail
BEFORE=$1
OUT=$2
TOK=$3
PY=${PY:-python3}
AFTER=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
# an uninstalled tree: radixserve.kernels is the top-level kernels/ folder
[ -e "$BEFORE/radixserve/kernels" ] || ln -s ../kernels "$BEFORE/radixserve/kernels"
[ -e "$AFTER/.gpu/after/radixserve" ] || { mkdir -p "$AFTER/.gpu/after" && cp -r "$AFTER/radixserve" "$AFTER/kernels" "$AFTER/.gpu/after/" \
  && ln -s ../kernels "$AFTER/.gpu/after/radixserve/kernels"; }
for which in before after; do
  tree=$BEFORE; bench=$BEFORE/benchmarks; [ $which = after ] && { tree=$AFTER/.gpu/after; bench=$AFTER/benchmarks; }
  PYTHONPATH="$tree:${PYTHONPATH:-}" timeout "${RUN_TIMEOUT:-270}" $PY "$bench/gpu_serving.py" \
    --model dummy:llama-3.1-8b --tokenizer "$TOK" --device cuda --out-dir "$OUT/$which" --num-requests 1000 \
    --concurrency 256 --no-inprocess-http --rates inf --curve-requests 200 >"$OUT/$which.log" 2>&1
  echo "$which: exit $?"; grep -E "offline:|HTTP split:" "$OUT/$which.log" | sed 's/^.*INFO //'
done
