"""The official openai SDK against radixserve: chat, streaming chat, completions with token-id
prompts, and the cached-token count in `usage`.

    python examples/openai_client.py                                  # serves the embedded model in process
    python examples/openai_client.py --url http://127.0.0.1:8000      # a running `radixserve serve`
"""
from __future__ import annotations

import argparse

from openai import OpenAI

SYSTEM = ("You are a concise assistant for a bicycle shop. Opening hours: 9am to 6pm, Monday to Saturday. "
          "We repair all kinds of bicycles and sell helmets, lights and locks. ") * 3


def run(client: OpenAI) -> dict:
    model = client.models.list().data[0].id
    print(f"model: {model}")
    result = {"model": model, "cached": []}
    for question in ["When are you open?", "Do you sell helmets?"]:
        resp = client.chat.completions.create(
            model=model, max_tokens=24, temperature=0,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
        cached = resp.usage.prompt_tokens_details.cached_tokens
        result["cached"].append((resp.usage.prompt_tokens, cached))
        print(f"chat: {question} -> {resp.choices[0].message.content!r}\n"
              f"      prompt {resp.usage.prompt_tokens} tokens, cached {cached}")
    pieces = []
    stream = client.chat.completions.create(model=model, max_tokens=16, temperature=0, stream=True,
                                            messages=[{"role": "user", "content": "Name three colours."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    result["stream"] = "".join(pieces)
    print(f"streamed in {len(pieces)} pieces: {result['stream']!r}")
    comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    result["completion"] = comp.choices[0].text
    print(f"completion: {comp.choices[0].text!r} ({comp.choices[0].finish_reason})")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running radixserve server (default: start one in process)")
    parser.add_argument("--api-key", default="none")
    args = parser.parse_args(argv)
    if args.url:
        return run(OpenAI(base_url=args.url + "/v1", api_key=args.api_key))
    from radixserve import Engine
    from radixserve.server import ServerConfig, build_app
    from radixserve.server.testing import ServerThread

    with Engine(max_total_tokens=8192) as engine, ServerThread(build_app(engine, ServerConfig())) as srv:
        return run(OpenAI(base_url=srv.url + "/v1", api_key=args.api_key))


if __name__ == "__main__":
    main()
