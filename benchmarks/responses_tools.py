"""What `previous_response_id` is worth in a tool-calling loop on /v1/responses.

Each conversation: turn 1 asks a question with tool_choice "required" (one call), turn 2 sends the
call's result (`function_call_output`, tool_choice "auto"). Turn 2 is sent two ways, in one run,
on the same in-process server and embedded model:
  chained    previous_response_id = turn 1 (the server continues from turn 1's stored tokens)
  stateless  the whole conversation as input items (the user message, turn 1's output items as the
             SDK returned them, the result): the server re-renders it
Every conversation of each mode runs under its own cache_salt, so both start cold. Reported per
mode: turn-2 input tokens, cached tokens, the share of turn 1's tokens served from the cache, and
turn-2 output tokens and wall time (greedy; the two prompts differ after turn 1's answer, so
their answers may differ in length: compare the cached tokens first).

    .venv/bin/python benchmarks/responses_tools.py [--conversations 6] [--out-dir benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

import openai

from radixserve import Engine
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 20}}}, "strict": True}
CITIES = ["Paris", "Lyon", "Oslo", "Lima", "Quito", "Perth", "Cairo", "Dakar", "Riga", "Bern", "Porto", "Kyoto"]
INSTRUCTIONS = "You are a weather assistant. Use the tools to look things up, then answer in one sentence."


def conversation(c: openai.OpenAI, city: str, mode: str, out_tokens: int) -> dict:
    salt = {"cache_salt": uuid.uuid4().hex}
    ask = f"What is the weather in {city} right now?"
    first = c.responses.create(model="m", instructions=INSTRUCTIONS, input=ask, tools=[WEATHER],
                               tool_choice="required", parallel_tool_calls=False, max_output_tokens=40,
                               temperature=0, extra_body=salt)
    call = first.output[0]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 18})}
    common = dict(model="m", instructions=INSTRUCTIONS, tools=[WEATHER], max_output_tokens=out_tokens,
                  temperature=0, extra_body=salt)
    t0 = time.perf_counter()
    if mode == "chained":
        second = c.responses.create(previous_response_id=first.id, input=[result], **common)
    else:
        items = [{"role": "user", "content": ask}] + [o.model_dump(exclude_none=True) for o in first.output] + [result]
        second = c.responses.create(input=items, **common)
    wall = time.perf_counter() - t0
    turn1 = first.usage.total_tokens
    cached = second.usage.input_tokens_details.cached_tokens
    return {"turn1_tokens": turn1, "turn2_input_tokens": second.usage.input_tokens, "turn2_cached_tokens": cached,
            "turn1_share_cached": min(cached, turn1) / turn1, "turn2_output_tokens": second.usage.output_tokens,
            "turn2_wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=6)
    ap.add_argument("--out-tokens", type=int, default=8, help="max_output_tokens of turn 2")
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args()
    engine = Engine(max_total_tokens=8192, max_context_len=2048)
    rows: dict[str, list[dict]] = {"chained": [], "stateless": []}
    try:
        with ServerThread(build_app(engine, ServerConfig(served_model_name="m"))) as srv:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=300)
            conversation(c, "Rome", "chained", args.out_tokens)  # warm-up, not reported
            for i in range(args.conversations):
                for mode in rows:  # interleaved, so drift on a shared machine hits both alike
                    rows[mode].append(conversation(c, CITIES[i % len(CITIES)], mode, args.out_tokens))
    finally:
        engine.shutdown()
    summary = {mode: {k: statistics.mean(r[k] for r in rs) for k in rs[0]} for mode, rs in rows.items()}
    result = {"benchmark": "responses_tools", "date": "2026-11-24",
              "machine": f"{platform.machine()} {platform.processor() or ''} CPU, {platform.system()}, "
                         f"python {platform.python_version()} (embedded SmolLM2-135M, float32)".replace("  ", " "),
              "command": "python " + " ".join(sys.argv), "conversations": args.conversations,
              "turn2_max_output_tokens": args.out_tokens, "summary": summary, "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "responses_tools.json").write_text(json.dumps(result, indent=2))
    lines = ["# Tool-calling loop on /v1/responses: previous_response_id vs the whole conversation as input",
             "", f"Date 2026-11-24. Machine: {result['machine']}.", f"Command: `{result['command']}`.", "",
             f"{args.conversations} conversations per mode, cold cache each; turn 2 = function_call_output, "
             f"max_output_tokens {args.out_tokens} (greedy).", "",
             "| turn 2 sent as | turn 1 tokens | turn 2 input tokens | cached | turn 1 share cached | turn 2 output tokens "
             "| turn 2 wall s |", "|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        lines.append(f"| {mode} | {s['turn1_tokens']:.1f} | {s['turn2_input_tokens']:.1f} | "
                     f"{s['turn2_cached_tokens']:.1f} | {s['turn1_share_cached']:.3f} | {s['turn2_output_tokens']:.1f} | "
                     f"{s['turn2_wall_s']:.3f} |")
    (out / "responses_tools.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
