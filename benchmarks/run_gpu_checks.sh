#!/usr/bin/env bash
# GPU tests and runtime benchmarks in one command (random weights; < 10 minutes on one H100):
#   benchmarks/run_gpu_checks.sh OUT_DIR TOKENIZER_DIR
# 1. the gpu-marked tests of the kernels and the runtime (OUT_DIR/gpu_tests.log)
# 2. benchmarks/gpu_attention.py: attention kernels vs torch SDPA, cascade, GEMV bandwidth
# 3. benchmarks/gpu_runtime.py: engine-level sections ($RUNTIME_SECTIONS)
# Each stage has its own time limit, so one slow stage cannot take the others' results with it.
set -uo pipefail
OUT=$1
TOK=$2
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 RADIXSERVE_TEST_TOKENIZER=$TOK
mkdir -p "$OUT"
TESTS=${TESTS:-tests/kernels tests/runtime/test_cascade_runner.py tests/runtime/test_gpu_runtime.py}
timeout "${TESTS_TIMEOUT:-220}" $PY -m pytest -p no:cacheprovider -m gpu -v -rf $TESTS >"$OUT/gpu_tests.log" 2>&1
echo "tests: exit $?"; tail -15 "$OUT/gpu_tests.log"
timeout "${ATTN_TIMEOUT:-100}" $PY benchmarks/gpu_attention.py --out "$OUT" ${ATTN_ARGS:-} >"$OUT/attention.log" 2>&1
echo "attention: exit $?"; grep -v "^20" "$OUT/attention.log" | tail -45
timeout "${RUNTIME_TIMEOUT:-260}" $PY benchmarks/gpu_runtime.py --out "$OUT" --tokenizer "$TOK" \
  --sections "${RUNTIME_SECTIONS:-batch1,profile,cascade_step,prefill_long,sweep}" >"$OUT/runtime.log" 2>&1
echo "runtime: exit $?"; cat "$OUT"/gpu_runtime_*.md
