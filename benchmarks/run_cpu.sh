#!/usr/bin/env bash
# Every CPU benchmark of the project, on the embedded SmolLM2-135M, into benchmarks/results/.
# About 15-20 minutes on 2 cores. Run from the repository root.
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
# issue 14: the CPU runtime vs transformers, with decode step times, 3 rounds
$RS bench cpu --repeats 3 --out-dir "$OUT" --stem cpu_runtime
