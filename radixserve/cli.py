"""The `radixserve` command: `serve` (HTTP server; `--dp N` starts N replicas behind a router),
`route` (a router in front of servers started elsewhere), `generate` (one prompt, printed) and
`bench` (benchmarks; see benchmarks/README.md).

Engine flags are derived from EngineConfig's fields (radixserve/engine_flags.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from radixserve.engine_flags import add_engine_flags, engine_argv, engine_options
from radixserve.parent_watch import die_with_parent_from_env


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block): `radixserve serve: error: ... (see --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_router_flags(group) -> None:
    from radixserve.router.config import POLICIES, RouterConfig

    d = RouterConfig(replicas=("http://x",))
    group.add_argument("--policy", choices=POLICIES, default=d.policy,
                       help=f"how a request picks its replica (default: {d.policy})")
    group.add_argument("--balance-abs-threshold", type=int, default=d.balance_abs_threshold,
                       help="the longest-match replica is bypassed for the least loaded one when its load exceeds "
                            f"that one's by more than this many requests ... (requests; default: {d.balance_abs_threshold})")
    group.add_argument("--balance-rel-threshold", type=float, default=d.balance_rel_threshold,
                       help=f"... and by more than this factor (ratio; default: {d.balance_rel_threshold})")
    group.add_argument("--min-match-fraction", type=float, default=d.min_match_fraction,
                       help="a cached match below this fraction of the prompt counts as none (0..1; default: "
                            f"{d.min_match_fraction})")
    group.add_argument("--poll-interval", type=float, default=d.poll_interval_s,
                       help=f"time between cache-event polls per replica (seconds; default: {d.poll_interval_s})")
    group.add_argument("--health-interval", type=float, default=d.health_interval_s,
                       help=f"time between retries of an unavailable replica (seconds; default: {d.health_interval_s})")
    group.add_argument("--request-timeout", type=float, default=d.request_timeout_s,
                       help=f"longest a replica may stay silent on a request (seconds; default: {d.request_timeout_s})")
    group.add_argument("--max-failovers", type=int, default=d.max_failovers,
                       help=f"other replicas a request that failed to start is retried on (replicas; default: "
                            f"{d.max_failovers})")


LIMITS = {"max_prompts": "prompts in one request (prompts)",
          "max_stop_strings": "stop strings (and stop_token_ids) per request (strings)",
          "max_stop_string_chars": "length of one stop string (characters)",
          "max_logit_bias": "logit_bias entries per request (entries)",
          "max_tools": "tools offered in one request (tools)",
          "max_tools_bytes": "the tools list as JSON (bytes)",
          "max_schema_bytes": "a structured-output constraint (schema, regex, grammar) as JSON (bytes)"}
LIMIT_FIELDS = tuple(LIMITS)


def _add_limit_flags(group) -> None:
    from radixserve.server.app import ServerConfig

    d = ServerConfig()
    for name, what in LIMITS.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=getattr(d, name),
                           help=f"most {what} (default: {getattr(d, name)})")


def origins(flag: str) -> tuple[str, ...]:
    """--allowed-origins "a, b" -> ("a", "b")."""
    return tuple(o.strip() for o in flag.split(",") if o.strip())


def _router_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(policy=args.policy, balance_abs_threshold=args.balance_abs_threshold,
                balance_rel_threshold=args.balance_rel_threshold, min_match_fraction=args.min_match_fraction,
                poll_interval_s=args.poll_interval, health_interval_s=args.health_interval,
                request_timeout_s=args.request_timeout, max_failovers=args.max_failovers,
                host=args.host, port=args.port, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                max_n=args.max_n, served_model_name=args.served_model_name, log_level=args.log_level)


def _add_log_level(group) -> None:
    group.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="least severe message logged to stderr; debug also shows tracebacks of errors and "
                            "access logs, warning hides the progress bar (default: info)")


def _add_http_flags(group, what: str) -> None:
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    group.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: 8000)")
    group.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' on every route but /health (default: none)")
    group.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                       help="largest request body (bytes; default: 8388608)")
    group.add_argument("--max-n", type=int, default=64, help="most samples per prompt a request may ask for (default: 64)")
    group.add_argument("--served-model-name", default=None, help=f"model id reported by /v1/models (default: {what})")


def _engine_groups(parser: argparse.ArgumentParser) -> dict[str, Any]:
    from radixserve.engine_flags import MEMORY, MODEL, PARALLELISM, SCHEDULER

    return {name: parser.add_argument_group(name) for name in (MODEL, MEMORY, SCHEDULER)} | \
        {"server": parser.add_argument_group("server"), PARALLELISM: parser.add_argument_group(PARALLELISM),
         "logging": parser.add_argument_group("logging")}


def build_parser() -> argparse.ArgumentParser:
    from radixserve import __version__

    common = _Parser(add_help=False)
    _add_log_level(common.add_argument_group("logging"))
    parser = _Parser(prog="radixserve", description="LLM serving around a radix tree of prefixes")
    parser.add_argument("--version", action="version", version=f"radixserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server",
                           description="Serve a model over HTTP (OpenAI and native APIs) until Ctrl-C or SIGTERM.")
    groups = _engine_groups(serve)
    server = groups["server"]
    _add_http_flags(server, "the model's name")
    server.add_argument("--graceful-shutdown-s", type=float, default=30.0,
                        help="on SIGTERM, how long requests in flight may run before they are aborted (seconds; "
                             "default: 30); Ctrl-C aborts them at once, a second signal exits at once")
    server.add_argument("--allowed-origins", default="", metavar="ORIGINS",
                        help="comma-separated browser origins allowed to call the API (CORS), '*' for any; "
                        "default: none (no CORS headers)")
    server.add_argument("--default-max-tokens", type=int, default=None,
                        help="max_tokens of a chat request that sets none (tokens; default: the model's generation "
                        "config max_new_tokens, else 4096; always within the context left)")
    server.add_argument("--responses-max-stored", type=int, default=1000,
                        help="most /v1/responses kept for previous_response_id (responses, LRU, in memory; default: 1000)")
    server.add_argument("--responses-max-stored-tokens", type=int, default=2_000_000,
                        help="most conversation tokens kept across stored responses (tokens, LRU; default: 2000000)")
    server.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                        help="run the scheduler and model in their own process; --no-engine-process keeps everything "
                             "in the HTTP server's process (default: on)")
    _add_log_level(groups["logging"])
    _add_limit_flags(serve.add_argument_group("request bounds (each a 400 naming the limit)"))
    groups["parallelism"].add_argument(
        "--dp", type=int, default=1, help="data parallelism: start this many replicas (one per GPU, or CPU processes "
        "sharing the cores) on ports PORT+1.. behind a router on PORT (replicas; default: 1)")
    _add_router_flags(serve.add_argument_group("router (with --dp > 1)"))
    ray = serve.add_argument_group("Ray Serve (radixserve/deploy/; needs radixserve[ray])")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="serve as a Ray Serve application on the cluster at ADDRESS ('auto', ray://host:10001), "
                          "or on a local one started here when no ADDRESS is given")
    ray.add_argument("--replicas", type=int, default=1, help="engine replicas on Ray (with --ray), routed by --policy (replicas; default: 1)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (with --ray; CPUs, default: 1)")
    add_engine_flags(serve, groups)

    rt = sub.add_parser("route", parents=[common], help="route requests over radixserve servers started elsewhere")
    rt.add_argument("--replica", dest="replicas", action="append", required=True, metavar="URL",
                    help="a replica's base URL, e.g. http://10.0.0.2:8000 (repeat for each)")
    _add_http_flags(rt, "the replicas'")
    rt.add_argument("--replica-api-key", default=None, help="the key the replicas require, if any")
    rt.add_argument("--model", default=None, help="the replicas' model, for its tokenizer (a directory, .gguf file or "
                    "Hub id; default: None = the embedded SmolLM2 model)")
    rt.add_argument("--tokenizer", default=None, help="the replicas' tokenizer, if they were given one")
    _add_router_flags(rt.add_argument_group("routing"))

    gen = sub.add_parser("generate", help="generate from one prompt and print the text")
    gen.add_argument("prompt", help="the prompt text")
    groups = _engine_groups(gen)
    sampling = gen.add_argument_group("sampling")
    sampling.add_argument("--chat", action="store_true", help="wrap the prompt as a user message (chat template)")
    sampling.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (tokens; default: 64)")
    sampling.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default: 0)")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (0..1; default: 1)")
    sampling.add_argument("--top-k", type=int, default=-1, help="sample among the k likeliest tokens; -1 = all (default: -1)")
    sampling.add_argument("--sampling-seed", type=int, default=None, help="seed of this request's sampling (default: none)")
    _add_log_level(groups["logging"])
    add_engine_flags(gen, groups)

    from radixserve.bench.cli import add_bench_parser
    add_bench_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    die_with_parent_from_env()  # a replica started by `serve --dp`: never outlive it
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # the router polls its replicas many times a second; httpx logs each call
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "route":
            return _route(args)
        if args.command == "bench":
            from radixserve.bench.cli import run_bench
            return run_bench(args)
        return _generate(args)
    except ValueError as exc:  # the user's mistake (missing model, taken port, bad value): one line, no traceback
        if args.log_level == "debug":
            logging.getLogger(__name__).debug("the error's traceback", exc_info=True)
        sys.stderr.write(f"radixserve: error: {exc}\n")
        return 2
    except KeyboardInterrupt:  # Ctrl-C before serving began (e.g. while the model loads)
        if args.log_level == "debug":
            logging.getLogger(__name__).debug("interrupted", exc_info=True)
        sys.stderr.write("radixserve: interrupted\n")
        return 130


def _checked_engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options, validated here (EngineConfig, the model's existence) so that a mistake
    is one line at once, not after an engine process has started."""
    from radixserve.config import EngineConfig
    from radixserve.models.hub import check_model

    options = engine_options(args)
    EngineConfig(**options)
    check_model(options.get("model"))
    return options


def _route(args: argparse.Namespace) -> int:
    from radixserve.router.config import RouterConfig
    from radixserve.router.launch import route

    config = RouterConfig(replicas=tuple(args.replicas), replica_api_key=args.replica_api_key, model=args.model,
                          tokenizer=args.tokenizer, **_router_options(args))
    return route(config)


def _serve_dp(args: argparse.Namespace) -> int:
    from radixserve.router.launch import serve_dp

    engine = _checked_engine_options(args)
    if engine.get("tp", 1) > 1:
        raise ValueError("--dp with --tp > 1 is not supported yet: run tensor-parallel servers yourself and put "
                         "`radixserve route --replica URL ...` in front of them")
    if args.port + args.dp > 65535 or args.port == 0:
        raise ValueError(f"--dp {args.dp} puts replicas on ports {args.port + 1}..{args.port + args.dp}: "
                         "choose a --port below that")
    server = ["--log-level", args.log_level, "--max-body-bytes", str(args.max_body_bytes), "--max-n",
              str(args.max_n), "--graceful-shutdown-s", str(args.graceful_shutdown_s)]
    for name in LIMIT_FIELDS:
        server += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.api_key is not None:
        server += ["--api-key", args.api_key]
    if args.served_model_name is not None:
        server += ["--served-model-name", args.served_model_name]
    if args.default_max_tokens is not None:
        server += ["--default-max-tokens", str(args.default_max_tokens)]
    router = dict(_router_options(args), replica_api_key=args.api_key, model=engine.get("model"),
                  tokenizer=engine.get("tokenizer"))
    return serve_dp(args.dp, server + engine_argv(engine), engine.get("device", "auto"), router)


def _serve(args: argparse.Namespace) -> int:
    from radixserve.server.launch import serve

    if args.ray is not None:
        return _serve_ray(args)
    if args.dp != 1:
        return _serve_dp(args)
    return serve(server_config(args), engine_process=args.engine_process, **_checked_engine_options(args))


def server_config(args: argparse.Namespace):
    """The ServerConfig of `radixserve serve`'s flags."""
    from radixserve.server.app import ServerConfig

    return ServerConfig(host=args.host, port=args.port, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                        max_n=args.max_n, served_model_name=args.served_model_name,
                        graceful_shutdown_s=args.graceful_shutdown_s, log_level=args.log_level,
                        responses_max_stored=args.responses_max_stored,
                        responses_max_stored_tokens=args.responses_max_stored_tokens,
                        allowed_origins=origins(args.allowed_origins), default_max_tokens=args.default_max_tokens,
                        **{name: getattr(args, name) for name in LIMIT_FIELDS})


def _serve_ray(args: argparse.Namespace) -> int:
    from radixserve.deploy.ray_serve import RayDeployment, serve_on_ray

    if args.dp != 1:
        raise ValueError("--ray replaces --dp: give the number of replicas with --replicas")
    balance = dict(balance_abs_threshold=args.balance_abs_threshold, balance_rel_threshold=args.balance_rel_threshold,
                   min_match_fraction=args.min_match_fraction)
    deployment = RayDeployment(replicas=args.replicas, num_cpus=args.replica_cpus, policy=args.policy,
                               router_kwargs=balance)
    return serve_on_ray(None if args.ray == "local" else args.ray, deployment, server_config(args),
                        _checked_engine_options(args))


def _generate(args: argparse.Namespace) -> int:
    from radixserve import Engine, SamplingParams

    sp = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.sampling_seed)
    with Engine(**_checked_engine_options(args)) as engine:
        if args.chat:
            out = engine.chat([{"role": "user", "content": args.prompt}], sp)
        else:
            out = engine.generate(args.prompt, sp)[0]
    sys.stdout.write(out.text + "\n")
    return 0
