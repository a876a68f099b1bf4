"""EngineConfig as command-line flags, and back: `radixserve serve` / `generate` take them, and
whoever starts a server process (the data-parallel launcher, the DP benchmark) writes them.

Every flag is derived from an EngineConfig field (`max_total_tokens` becomes `--max-total-tokens`,
booleans `--x/--no-x`), with its help and group from FLAGS below: a new field needs a line there
(a test checks). Flags the user does not give are not passed, so the engine's defaults apply.
Negative booleans are named positively: `disable_radix_cache` is `--radix-cache/--no-radix-cache`
(the old `--disable-radix-cache` still works, hidden, with a warning).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from radixserve.config import DTYPES, POLICIES, QUANTIZATIONS, EngineConfig, SpeculativeConfig

_CHOICES = {"dtype": DTYPES, "schedule_policy": POLICIES, "attention_backend": ("auto", "torch", "triton"),
            "quantization": QUANTIZATIONS}

MODEL, MEMORY, SCHEDULER, PARALLELISM = "model", "memory and cache", "scheduler", "parallelism"
# group, help (what it does, its unit); "default: ..." is appended
FLAGS: dict[str, tuple[str, str]] = {
    "model": (MODEL, "what to serve: a HF model directory, a .gguf file, a Hugging Face Hub id (org/name: downloaded, "
                     "or read from the local cache when offline, HF_HUB_OFFLINE=1), or dummy:<config> (random weights); "
                     "None = the embedded SmolLM2-135M-Instruct model (GGUF)"),
    "tokenizer": (MODEL, "tokenizer directory, file or Hub id; None = the model's own"),
    "dtype": (MODEL, "weights' and activations' type; auto = float32 on CPU, bfloat16 on CUDA"),
    "device": (MODEL, "torch device (cpu, cuda, cuda:1); auto = cuda if available, else cpu"),
    "seed": (MODEL, "random seed for dummy weights and requests without one (integer)"),
    "quantization": (MODEL, "weights' quantization: fp8 / int4 quantize at load, gptq / awq / compressed-tensors "
                            "assert the checkpoint's; None = as the checkpoint is"),
    "max_context_len": (MODEL, "longest prompt + output (tokens); None = the model's max_position_embeddings"),
    "attention_backend": (MODEL, "attention kernels; auto = triton on CUDA, torch elsewhere"),
    "cuda_graph": (MODEL, "replay decode steps from CUDA graphs (CUDA only)"),
    "fused_ops": (MODEL, "fused elementwise ops (RMSNorm + residual, rotary, SiLU*mul)"),
    "page_size": (MEMORY, "KV cache page (tokens; a power of two)"),
    "max_total_tokens": (MEMORY, "KV pool capacity (tokens); None = sized from free memory"),
    "kv_memory_fraction": (MEMORY, "share of free GPU memory after the weights given to the KV pool (0..1), when "
                                   "--max-total-tokens is not given"),
    "disable_radix_cache": (MEMORY, "reuse computed prefixes across requests (the radix tree)"),
    "cascade_attention": (MEMORY, "decode rows sharing a long cached prefix attend to it once per group"),
    "cascade_min_prefix_len": (MEMORY, "shortest shared prefix for cascade attention (tokens)"),
    "cascade_min_group_size": (MEMORY, "fewest rows sharing a prefix for cascade attention (requests)"),
    "cache_dir": (MEMORY, "folder for the radix cache's snapshot (tree + K/V): restored at start when it was made by "
                          "the same model and configuration, saved at shutdown and on POST /cache/save; None = none"),
    "check_integrity": (MEMORY, "check the KV accounting and the tree every idle step (slow; tests)"),
    "schedule_policy": (SCHEDULER, "order of waiting requests: lpm (longest cached prefix first), dfs-weight, fcfs"),
    "aging_tokens_per_step": (SCHEDULER, "priority a waiting request gains per step waited (tokens), so none starves"),
    "max_running_requests": (SCHEDULER, "most requests decoding at once (requests)"),
    "max_queued_requests": (SCHEDULER, "most requests waiting; more are refused with 503 (requests)"),
    "max_prefill_tokens": (SCHEDULER, "prompt tokens computed per step across requests (tokens)"),
    "chunked_prefill_size": (SCHEDULER, "longest prompt chunk of one request per step (tokens)"),
    "max_step_ms": (SCHEDULER, "while requests decode, size prefill chunks so a step takes about this long "
                               "(milliseconds); None = off"),
    "step_cost_online": (SCHEDULER, "refine the step-cost model from measured steps (else its prior only)"),
    "overlap_schedule": (SCHEDULER, "schedule step N+1 while the device runs step N"),
    "grammar_compile_timeout_s": (SCHEDULER, "a structured-output grammar compiling longer is refused (seconds)"),
    "grammar_compile_threads": (SCHEDULER, "threads compiling grammars (threads)"),
    "jump_forward": (SCHEDULER, "append text a grammar forces (6+ tokens) without decoding it"),
    "speculative_config": (SCHEDULER, 'speculative decoding, as JSON: {"method": "ngram" | "radix", '
                                      '"num_speculative_tokens": k (draft tokens per step), "max_batch": most requests '
                                      'running while drafting}; None = off'),
    "tp": (PARALLELISM, "tensor parallelism: ranks the model is split over, one process and device each (ranks)"),
}
# EngineConfig fields whose flag is named positively: field -> flag name (the value inverted)
POSITIVE = {"disable_radix_cache": "radix_cache"}


class _Deprecated(argparse.Action):
    """`--disable-radix-cache`: still works, hidden from --help, says what replaced it."""

    def __init__(self, option_strings, dest, replacement: str, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        sys.stderr.write(f"radixserve: warning: {option_string} is deprecated; use {self.replacement}\n")
        setattr(namespace, self.dest, False)  # NOTE: the positive flag's value: --disable-x is --no-x


def add_engine_flags(parser: argparse.ArgumentParser, groups: dict[str, Any] | None = None) -> None:
    """Every EngineConfig field as a flag, in `groups` (by FLAGS' group names; made when missing)."""
    groups = dict(groups or {})
    for f in dataclasses.fields(EngineConfig):
        where, help_text = FLAGS[f.name]
        group = groups.get(where) or groups.setdefault(where, parser.add_argument_group(where))
        kind = str(f.type)
        if f.name in POSITIVE:
            name = POSITIVE[f.name]
            group.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {not f.default})")
            group.add_argument("--" + f.name.replace("_", "-"), dest=name, action=_Deprecated,
                               replacement="--no-" + name.replace("_", "-"), default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            continue
        help_text = f"{help_text} (default: {f.default})"
        flag = "--" + f.name.replace("_", "-")
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        conv = int if kind.startswith("int") else float if kind.startswith("float") else str
        if f.name == "speculative_config":
            conv = _speculative_config
        group.add_argument(flag, dest=f.name, type=conv, default=argparse.SUPPRESS,
                           choices=_CHOICES.get(f.name), help=help_text)


def engine_argv(options: dict[str, Any]) -> list[str]:
    """Engine options back as `radixserve serve` flags."""
    argv = []
    for name, value in options.items():
        if name in POSITIVE:
            name, value = POSITIVE[name], not value
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif dataclasses.is_dataclass(value):
            argv += [flag, json.dumps(dataclasses.asdict(value))]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig fields the user gave, by field name."""
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    given = vars(args)
    options = {k: v for k, v in given.items() if k in names}
    for field, name in POSITIVE.items():
        if name in given:
            options[field] = not given[name]
    return options


def _speculative_config(text: str) -> SpeculativeConfig:
    try:
        return SpeculativeConfig.parse(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
