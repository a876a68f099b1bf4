#!/usr/bin/env bash
# Every CPU benchmark of the project, on the embedded SmolLM2-135M, into benchmarks/results/.
# About 35 minutes on 2 cores (15 of them the data-parallel run). Run from the repository root.
set -euo pipefail
RS=${RS:-.venv/bin/radixserve}
OUT=${OUT:-benchmarks/results}
# issue 2: 16 requests sharing a ~500-token system prompt, 64 new tokens; vs transformers generate
$RS bench shared-prefix --groups 1 --prompts-per-group 16 --system-len 500 --question-len 24 \
    --output-len 64 --policies "" --no-radix-off --hf-batch-size 16 --out-dir "$OUT" \
    --stem issue2_cpu_shared_prefix_vs_transformers
# issue 4: shared-prefix at CPU scale shrunk to 4x8 (S=512, Q=32, O=32) to fit ~2-4 min on a shared 2-core box;
# transformers on 1 whole group (8 requests), 3 policies, radix off. Drop --groups/--prompts-per-group for the full 8x8.
$RS bench shared-prefix --scale cpu --groups 4 --prompts-per-group 8 --hf-subset-groups 1 --hf-batch-size 8 --time-limit 150 \
    --out-dir "$OUT" --stem issue4_cpu_shared_prefix
# issue 3: 64 concurrent streaming HTTP clients
$RS bench online --rate inf --max-concurrency 64 --out-dir "$OUT" --stem issue3_cpu_online_64_clients
# radix tree + scheduler host overhead
$RS bench tree --out-dir "$OUT" --stem tree_micro_cpu
# structured output: compile and mask time, constrained vs unconstrained decode, jump-forward
$RS bench grammar --out-dir "$OUT" --stem grammar_cpu
# data parallel: 2 replica processes behind the router vs round-robin vs one engine with their memory (~15 min)
$RS bench dp --replicas 2 --max-total-tokens 1200 --max-context-len 1024 --groups 8 --prompts-per-group 16 \
    --system-len 256 --question-len 16 --output-len 4 --max-concurrency 8 --out-dir "$OUT" --stem dp2_cpu
# issue 14: the CPU runtime vs transformers, with decode step times, 3 rounds
$RS bench cpu --repeats 3 --out-dir "$OUT" --stem cpu_runtime
