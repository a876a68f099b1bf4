"""The `radixserve` command as a user meets it, before any serving: --help and --version, a
user's mistakes (taken port, missing model, unknown Hub id) in one line without a traceback, and
a Hugging Face Hub id served from the local Hub cache with HF_HUB_OFFLINE=1 (nothing downloads).
Serving and stopping (Ctrl-C, killed front ends) are in tests/server/test_server_cli.py."""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from importlib.metadata import version

import pytest

from model_fixtures import embedded_tokenizer, save_tiny_hf_model
from port_fixtures import free_port_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB_ID = "tinyorg/tiny-llama"
SHA = "0123456789abcdef0123456789abcdef01234567"


def radixserve(*argv: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radixserve", *argv], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_help_is_grouped_with_units_and_version_prints_the_installed_version():
    out = radixserve("serve", "--help")
    assert out.returncode == 0, out.stderr
    for group in ("model:", "memory and cache:", "scheduler:", "server:", "parallelism:", "logging:"):
        assert f"\n{group}\n" in out.stdout, group
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for unit in ("(tokens", "(seconds", "(milliseconds", "(bytes", "(requests"):
        assert unit in text, unit
    assert "None = the embedded SmolLM2-135M-Instruct model" in text
    assert "--radix-cache, --no-radix-cache" in text and "--disable-radix-cache" not in text
    v = radixserve("--version")
    assert v.returncode == 0 and v.stdout.strip() == f"radixserve {version('radixserve')}"


def test_every_flag_says_what_it_does():
    from radixserve.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("serve", "generate", "route"):
        for action in subs.choices[name]._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help and not action.help.startswith("default"), (name, action.option_strings)


def test_the_old_radix_cache_flag_still_works_and_warns(capsys):
    from radixserve.cli import build_parser
    from radixserve.engine_flags import engine_argv, engine_options

    old = engine_options(build_parser().parse_args(["serve", "--disable-radix-cache"]))
    assert "deprecated; use --no-radix-cache" in capsys.readouterr().err
    new = engine_options(build_parser().parse_args(["serve", "--no-radix-cache"]))
    assert old == new == {"disable_radix_cache": True}
    assert engine_argv(new) == ["--no-radix-cache"]
    assert engine_options(build_parser().parse_args(["serve", "--radix-cache"])) == {"disable_radix_cache": False}


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


def test_a_taken_port_fails_at_once_before_the_model_loads():
    port = free_port_block()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        out = radixserve("serve", "--port", str(port), timeout=120)  # default log level: loading would be logged
    assert out.returncode == 2
    line = one_error_line(out)
    assert f"127.0.0.1:{port}" in line and "--port" in line


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "generate"])
def test_a_missing_model_path_is_one_line(command, tmp_path):
    missing = str(tmp_path / "no-such-model.gguf")
    argv = ["serve", "--port", str(free_port_block())] if command == "serve" else ["generate", "hi"]
    out = radixserve(*argv, "--model", missing)
    assert out.returncode == 2
    assert missing in one_error_line(out)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hub cache in huggingface_hub's own layout (models--org--name/snapshots/<sha>, refs/main)
    holding a tiny random Llama with the embedded model's tokenizer."""
    from huggingface_hub import snapshot_download

    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    save_tiny_hf_model("llama", str(snapshot), embedded_tokenizer())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    # the oracle: huggingface_hub itself finds it, offline
    assert snapshot_download(HUB_ID, cache_dir=str(cache), local_files_only=True) == str(snapshot)
    return str(cache), str(snapshot)


def offline(cache: str) -> dict[str, str]:
    return {"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_HOME": os.path.dirname(cache)}


GEN = ["--device", "cpu", "--dtype", "float32", "--max-total-tokens", "512", "--max-tokens", "8", "--log-level",
       "warning", "The capital of France is"]


@pytest.mark.slow
def test_a_hub_id_is_served_from_the_offline_cache(hub_cache):
    cache, snapshot = hub_cache
    by_id = radixserve("generate", "--model", HUB_ID, *GEN, env=offline(cache))
    assert by_id.returncode == 0, by_id.stderr[-3000:]
    by_path = radixserve("generate", "--model", snapshot, *GEN, env=offline(cache))
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    assert by_id.stdout.strip() and by_id.stdout == by_path.stdout


@pytest.mark.slow
@pytest.mark.parametrize("command", ["generate", "serve"])
def test_a_missing_hub_id_is_one_line_naming_it(command, hub_cache):
    """generate: raised in this process; serve: raised in the engine process, said by the front end."""
    cache, _ = hub_cache
    argv = GEN if command == "generate" else ["--port", str(free_port_block()), "--device", "cpu"]
    out = radixserve(command, "--model", "tinyorg/not-there", *argv, env=offline(cache))
    assert out.returncode == 2
    line = one_error_line(out)
    assert "'tinyorg/not-there'" in line and "cache" in line
