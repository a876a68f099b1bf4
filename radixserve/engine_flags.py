"""EngineConfig as command-line flags, and back: `radixserve serve` / `generate` take them, and
whoever starts a server process (the data-parallel launcher, the DP benchmark) writes them.

Every flag is derived from EngineConfig's fields, so every engine option is settable and a new
field needs no CLI change: `max_total_tokens` becomes `--max-total-tokens`, booleans get
`--x/--no-x`. Flags the user does not give are not passed, so the engine's defaults apply.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from radixserve.config import DTYPES, POLICIES, QUANTIZATIONS, EngineConfig, SpeculativeConfig

_CHOICES = {"dtype": DTYPES, "schedule_policy": POLICIES, "attention_backend": ("auto", "torch", "triton"),
            "quantization": QUANTIZATIONS}


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
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
        if f.name == "speculative_config":
            conv, help_text = _speculative_config, ('JSON, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\' '
                                                    '(methods: ngram, radix); default: off')
        group.add_argument(flag, dest=f.name, type=conv, default=argparse.SUPPRESS,
                           choices=_CHOICES.get(f.name), help=help_text)


def engine_argv(options: dict[str, Any]) -> list[str]:
    """Engine options back as `radixserve serve` flags."""
    argv = []
    for name, value in options.items():
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
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def _speculative_config(text: str) -> SpeculativeConfig:
    try:
        return SpeculativeConfig.parse(json.loads(text))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
