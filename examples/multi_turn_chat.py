"""A multi-turn chat, twice: with the in-process Engine, then with the openai SDK against a server.

Turn N re-sends turns 1..N-1; their tokens (the answers included) come from the radix tree, so the
cached token count grows with the conversation. Without --url the script serves the same engine
on a free loopback port for the SDK part.

    python examples/multi_turn_chat.py
    python examples/multi_turn_chat.py --url http://127.0.0.1:8000   # SDK part against that server
"""
from __future__ import annotations

import argparse

from radixserve import Engine, SamplingParams

SYSTEM = "You are a helpful cooking assistant. Answer in one or two sentences."
TURNS = ["How long should I boil spaghetti?", "Should I salt the water?", "What sauce goes well with it?"]


def chat_with_engine(engine) -> list[tuple[str, int, int]]:
    history = [{"role": "system", "content": SYSTEM}]
    rows = []
    for question in TURNS:
        history.append({"role": "user", "content": question})
        out = engine.chat(history, SamplingParams(max_new_tokens=24, temperature=0))
        history.append({"role": "assistant", "content": out.text})
        rows.append((out.text, out.prompt_tokens, out.cached_tokens))
        print(f"[engine] user: {question}\n[engine] assistant: {out.text.strip()}\n"
              f"         prompt {out.prompt_tokens} tokens, cached {out.cached_tokens}")
    return rows


def chat_with_sdk(url: str, api_key: str) -> list[tuple[str, int, int]]:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key=api_key)
    model = client.models.list().data[0].id
    history = [{"role": "system", "content": SYSTEM}]
    rows = []
    for question in TURNS:
        history.append({"role": "user", "content": question})
        resp = client.chat.completions.create(model=model, messages=history, max_tokens=24, temperature=0)
        answer = resp.choices[0].message.content
        history.append({"role": "assistant", "content": answer})
        usage = resp.usage
        cached = usage.prompt_tokens_details.cached_tokens
        rows.append((answer, usage.prompt_tokens, cached))
        print(f"[openai] user: {question}\n[openai] assistant: {answer.strip()}\n"
              f"         prompt {usage.prompt_tokens} tokens, cached {cached}")
    return rows


def main(argv: list[str] | None = None, engine=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running radixserve server for the SDK part")
    parser.add_argument("--api-key", default="none")
    args = parser.parse_args(argv)
    own = engine is None
    if own:
        engine = Engine(max_total_tokens=8192)
    try:
        result = {"engine": chat_with_engine(engine)}
        if args.url:
            result["openai"] = chat_with_sdk(args.url, args.api_key)
        else:
            from radixserve.server import ServerConfig, build_app
            from radixserve.server.testing import ServerThread

            with ServerThread(build_app(engine, ServerConfig())) as srv:
                result["openai"] = chat_with_sdk(srv.url, args.api_key)
    finally:
        if own:
            engine.shutdown()
    return result


if __name__ == "__main__":
    main()
