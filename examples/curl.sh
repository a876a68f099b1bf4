#!/usr/bin/env bash
# radixserve over plain HTTP with curl. Start a server first (`make serve` or `radixserve serve`),
# then:  bash examples/curl.sh [URL] [API_KEY]      (default URL http://127.0.0.1:8000)
set -euo pipefail
URL=${1:-http://127.0.0.1:8000}
AUTH=()
if [ -n "${2:-}" ]; then AUTH=(-H "Authorization: Bearer $2"); fi
post() { curl -sS --fail-with-body "${AUTH[@]}" -H 'Content-Type: application/json' "$URL$1" -d "$2"; echo; }

echo "# chat completion"
post /v1/chat/completions '{"messages": [{"role": "user", "content": "What is the capital of France?"}],
  "max_tokens": 16, "temperature": 0}'

echo "# streamed completion (server-sent events, usage in the last chunk)"
curl -sS -N --fail-with-body "${AUTH[@]}" -H 'Content-Type: application/json' "$URL/v1/completions" -d '{
  "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stream": true,
  "stream_options": {"include_usage": true}}'

echo "# tokenize, then the native /generate on those token ids (twice: the second is a cache hit)"
IDS=$(post /tokenize '{"prompt": "The three primary colours are"}' | sed -E 's/.*"tokens":\[([0-9,]*)\].*/\1/')
post /generate "{\"input_ids\": [$IDS], \"sampling_params\": {\"max_new_tokens\": 8, \"temperature\": 0}}"
post /generate "{\"input_ids\": [$IDS], \"sampling_params\": {\"max_new_tokens\": 8, \"temperature\": 0}}"

echo "# prompt log-probs of a continuation, no tokens generated"
post /generate "{\"input_ids\": [$IDS], \"sampling_params\": {\"max_new_tokens\": 0},
  \"return_logprob\": true, \"logprob_start_len\": 1}"
