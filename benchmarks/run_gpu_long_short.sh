#!/usr/bin/env bash
# Long prompts beside short requests on one GPU (issue 11, part 2), < 3 minutes on an H100:
#   benchmarks/run_gpu_long_short.sh OUT_DIR TOKENIZER_DIR
# Random Llama-3.1-8B weights; two 100k-token prompts + 32 requests of 200 in / 64 out, all sent
# together: with max_step_ms off (the baseline), with --max-step-ms (default 100), and the long
# prompts alone. Writes OUT_DIR/long_short_gpu.{json,md} and OUT_DIR/long_short.log.
# Goals: short ITL p99 <= 150 ms, short TTFT p99 <= 2 s, long TTFT <= 1.2 x alone.
# Extra `radixserve bench long-short` flags may follow (e.g. --max-step-ms 80, --long-len 32768).
set -uo pipefail
OUT=$1
TOK=$2
shift 2
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU machine lacks some pure-Python packages: carried as wheels (see GPU.md)
  $PY -m pip install -q --upgrade --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed; running from the tree"
timeout "${LS_TIMEOUT:-170}" $PY -m radixserve bench long-short --scale gpu --model dummy:llama-3.1-8b --device cuda \
  --tokenizer "$TOK" --out-dir "$OUT" --stem long_short_gpu "$@" >"$OUT/long_short.log" 2>&1
echo "long-short: exit $?"; tail -5 "$OUT/long_short.log"; cat "$OUT/long_short_gpu.md" 2>/dev/null
