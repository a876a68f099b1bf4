"""The `radixserve` command: `serve` (HTTP server), `generate` (one prompt, printed) and `bench`
(benchmarks; see benchmarks/README.md).

Engine flags are derived from EngineConfig's fields, so every engine option is settable and a new
field needs no CLI change: `max_total_tokens` becomes `--max-total-tokens`, booleans get
`--x/--no-x`. Flags the user does not give are not passed, so the engine's defaults apply.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from radixserve.config import DTYPES, POLICIES, EngineConfig

_CHOICES = {"dtype": DTYPES, "schedule_policy": POLICIES, "attention_backend": ("auto", "torch", "triton")}


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (EngineConfig fields)")
    for f in dataclasses.fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        help_text = f"default: {f.default!r}"
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        conv = int if kind.startswith("int") else float if kind.startswith("float") else str
        group.add_argument(flag, dest=f.name, type=conv, default=argparse.SUPPRESS,
                           choices=_CHOICES.get(f.name), help=help_text)


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser = argparse.ArgumentParser(prog="radixserve", description="LLM serving around a radix tree of prefixes")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the OpenAI-compatible HTTP server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (all routes but /health)")
    serve.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    serve.add_argument("--max-n", type=int, default=64, help="most samples per prompt a request may ask for")
    serve.add_argument("--served-model-name", default=None, help="model id reported by /v1/models")
    serve.add_argument("--graceful-shutdown-s", type=float, default=30.0)
    serve.add_argument("--responses-max-stored", type=int, default=1000,
                       help="most /v1/responses kept for previous_response_id (LRU, in memory)")
    serve.add_argument("--responses-max-stored-tokens", type=int, default=2_000_000,
                       help="most conversation tokens kept across stored responses (LRU, in memory)")
    _add_engine_flags(serve)

    gen = sub.add_parser("generate", parents=[common], help="generate from one prompt and print the text")
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message (chat template)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--sampling-seed", type=int, default=None)
    _add_engine_flags(gen)

    from radixserve.bench.cli import add_bench_parser
    add_bench_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            from radixserve.bench.cli import run_bench
            return run_bench(args)
        return _generate(args)
    except ValueError as exc:  # bad option values: say which, no traceback
        sys.stderr.write(f"radixserve: error: {exc}\n")
        return 2


def _serve(args: argparse.Namespace) -> int:
    from radixserve.server.app import ServerConfig
    from radixserve.server.launch import serve

    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                          max_n=args.max_n, served_model_name=args.served_model_name,
                          graceful_shutdown_s=args.graceful_shutdown_s, log_level=args.log_level,
                          responses_max_stored=args.responses_max_stored,
                          responses_max_stored_tokens=args.responses_max_stored_tokens)
    return serve(config, **_engine_options(args))


def _generate(args: argparse.Namespace) -> int:
    from radixserve import Engine, SamplingParams

    sp = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.sampling_seed)
    with Engine(**_engine_options(args)) as engine:
        if args.chat:
            out = engine.chat([{"role": "user", "content": args.prompt}], sp)
        else:
            out = engine.generate(args.prompt, sp)[0]
    sys.stdout.write(out.text + "\n")
    return 0
