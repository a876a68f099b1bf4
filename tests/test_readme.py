"""The README's curl, openai-SDK and Python examples run exactly as written (only the port differs)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from radixserve import Engine
from radixserve.server.app import ServerConfig, build_app
from radixserve.server.testing import ServerThread

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
DEFAULT_URL = "http://127.0.0.1:8000"


def _blocks(lang: str) -> list[str]:
    with open(README, encoding="utf-8") as f:
        return re.findall(rf"```{lang}\n(.*?)```", f.read(), flags=re.S)


def _run_block(marker: str, url: str | None = None) -> str:
    """Run the README's one python block containing `marker` (against `url`); its stdout."""
    code = [b for b in _blocks("python") if marker in b]
    assert len(code) == 1, f"{len(code)} python blocks contain {marker!r}"
    source = code[0].replace(DEFAULT_URL, url) if url else code[0]
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def server():
    engine = Engine(max_total_tokens=8192)
    with ServerThread(build_app(engine, ServerConfig())) as srv:
        yield srv
    engine.shutdown()


def test_curl_examples(server):
    curls = [b for b in _blocks("bash") if b.lstrip().startswith("curl")]
    assert len(curls) == 5
    outputs = []
    for block in curls:
        assert DEFAULT_URL in block
        proc = subprocess.run(["bash", "-c", block.replace(DEFAULT_URL, server.url)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    chat = json.loads(outputs[0])
    assert chat["choices"][0]["message"]["content"] and chat["usage"]["completion_tokens"] > 0
    events = [line[len("data: "):] for line in outputs[1].splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 16
    native = json.loads(outputs[2])
    assert native["meta_info"]["completion_tokens"] == 8 and native["text"]
    structured = json.loads(outputs[3])
    city = json.loads(structured["choices"][0]["message"]["content"])
    assert structured["choices"][0]["finish_reason"] == "stop" and set(city) == {"name", "population"}
    lines = [json.loads(line) for line in outputs[4].splitlines()]  # Ollama's /api/chat: NDJSON
    assert [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(x["message"]["content"] for x in lines) and 0 < lines[-1]["eval_count"] <= 12
    assert lines[-1]["done_reason"] in ("stop", "length") and lines[-1]["model"] == "SmolLM2-135M-Instruct"


def _run_sdk_block(server, marker: str) -> str:
    sdk = [b for b in _blocks("python") if "from openai import OpenAI" in b and marker in b]
    assert len(sdk) == 1, marker
    proc = subprocess.run([sys.executable, "-c", sdk[0].replace(DEFAULT_URL, server.url)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_openai_sdk_example(server):
    out = _run_sdk_block(server, "cached prompt tokens")
    cached = [int(x) for x in re.findall(r"cached prompt tokens: (\d+)", out)]
    assert len(cached) == 2 and cached[1] > cached[0] + 100  # the second reuses the system prompt


def test_structured_output_example(server):
    out = _run_sdk_block(server, "response_format=City").splitlines()
    assert out[0].startswith("name=") and "population=" in out[0]  # a parsed City
    name, arguments = out[1].split(" ", 1)
    assert name == "get_weather" and isinstance(json.loads(arguments)["city"], str)


def test_responses_example(server):
    out = _run_sdk_block(server, "previous_response_id")
    turn1, cached = (int(x) for x in re.search(r"turn 1 tokens: (\d+) cached in turn 2: (\d+)", out).groups())
    assert cached >= turn1 - 1  # the whole first turn, input and output, came from the cache


def test_ollama_example(server):
    stdout = _run_block("import ollama", server.url)
    said, counts, counted, family = stdout.splitlines()
    assert said.startswith("SmolLM2-135M-Instruct says: ") and len(said) > len("SmolLM2-135M-Instruct says: ")
    tokens_in, tokens_out = (int(x) for x in re.match(r"tokens in: (\d+) out: (\d+)$", counts).groups())
    assert tokens_in > 5 and 0 < tokens_out <= 24 and counted and family == "family: llama"


def test_python_engine_example():
    stdout = _run_block("from radixserve import Engine")
    assert "cached_tokens" in stdout  # the stats dict was printed


def test_speculative_decoding_example():
    stdout = _run_block("speculative_config")
    kept, _, drafted = stdout.split()[:3]
    assert 0 < int(kept) <= int(drafted)  # the regenerated answer was drafted from the tree and kept


def test_python_llm_example():
    stdout = _run_block("from radixserve import LLM")
    lines = stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("0 ") and lines[1].startswith("1 ")
    assert "Paris" in lines[0] and "Rome" in lines[1]
    texts = eval(lines[2])  # noqa: S307 - the list of two chat answers the block printed
    assert len(texts) == 2 and all(texts)
    samples = eval(lines[3])  # noqa: S307
    assert [i for i, _ in samples] == [0, 1] and all(lp < 0 for _, lp in samples)


def test_tgi_client_example(server):
    stdout = _run_block("from huggingface_hub import InferenceClient", server.url)
    lines = stdout.splitlines()
    assert len(lines) == 5 and lines[0] == lines[2] and lines[0] != "''"  # streamed tokens join to the text
    assert lines[1] == "length 12"
    for line in lines[3:]:
        city = eval(line)  # noqa: S307 - the dict the block printed
        assert set(city) == {"name", "population"} and isinstance(city["population"], int)
