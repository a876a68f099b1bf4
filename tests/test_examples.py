"""Every program in examples/ runs, and says what it claims: answers equal to the engine's own
greedy output on the same tokens, cached token counts that cover the shared prefixes, outputs
that validate. The Python examples run in process on one shared engine (their main() takes a
backend / engine / URL); openai_client.py and curl.sh run as their own processes against a
real server."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

import radixserve.lang as sgl
from radixserve import Engine, SamplingParams
from radixserve.lang.ir import grammar_fields
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread
from server_fixtures import assert_no_leak

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def load(filename: str):
    """Import examples/<filename> as a module (its main() is called by the test)."""
    name = filename.removesuffix(".py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine():
    eng = Engine(device="cpu", dtype="float32", max_total_tokens=16384, check_integrity=True)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def local(engine):
    be = sgl.LocalBackend(engine)
    yield be
    be.shutdown()


@pytest.fixture(scope="module")
def server(engine):
    with ServerThread(build_app(engine, ServerConfig())) as srv:
        yield srv


def common_prefix(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if len(set(column)) > 1:
            break
        n += 1
    return n


def greedy(engine, ids, max_new_tokens, **kw):
    return engine.generate(input_ids=[ids], sampling_params=SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0.0, **kw))[0]


def test_rag_shared_prompt(engine, local, capsys):
    engine.flush_cache()
    mod = load("rag_shared_prompt.py")
    states = mod.main([], backend=local)
    out = capsys.readouterr().out
    metas = [s.meta("answer") for s in states]
    prompts = [s.token_ids()[:m["prompt_tokens"]] for s, m in zip(states, metas)]
    shared = common_prefix(prompts)
    assert shared > 200  # system prompt + passage
    # the shared prefix was computed once: every other request found it in the tree
    assert sum(m["cached_tokens"] >= shared - 1 for m in metas) >= len(metas) - 1
    assert f"cached prompt tokens: {sum(m['cached_tokens'] for m in metas)} of " in out
    assert states[3]["answer"] == greedy(engine, prompts[3], 24, stop="\n").text
    assert_no_leak(engine)


def test_multi_turn_chat_engine_and_openai_sdk(engine, server, capsys):
    mod = load("multi_turn_chat.py")
    result = mod.main(["--url", server.url], engine=engine)
    rows_engine, rows_sdk = result["engine"], result["openai"]
    assert [r[0] for r in rows_sdk] == [r[0] for r in rows_engine]  # same greedy answers both ways
    for rows in (rows_engine, rows_sdk):
        for (_, prompt_prev, _), (_, prompt, cached) in zip(rows, rows[1:]):
            assert cached >= prompt_prev  # the previous turn (its answer included) came from the tree
            assert prompt > prompt_prev
    assert "[openai] assistant:" in capsys.readouterr().out


def test_dsl_branching(engine, local):
    mod = load("dsl_branching.py")
    states = mod.main([], backend=local)
    for q, st in zip(mod.QUESTIONS, states):
        ideas, metas = st["idea"], st.meta("idea")
        assert len(ideas) == 3 and all(idea.strip() for idea in ideas)
        yes = [m["scores"][0] - m["scores"][1] for m in st.meta("verdict")]
        assert st.ret_value == yes.index(max(yes))
        # fork: the conversation so far was prefilled once, and every branch found it cached
        shared = len(engine.apply_chat_template([{"role": "system", "content": "You think step by step and answer briefly."},
                                                 {"role": "user", "content": q}])
                     + local.encode("Let me consider a few approaches.\n"))
        assert all(m["cached_tokens"] >= shared for m in metas)
        assert st.meta("answer")["cached_tokens"] >= shared
    assert_no_leak(engine)


@pytest.mark.skipif(not grammar_fields(), reason="structured output (SamplingParams.json_schema) is not in this build")
def test_dsl_json_extraction_validates(engine, local):
    jsonschema = pytest.importorskip("jsonschema")
    mod = load("dsl_json_extraction.py")
    people = mod.main([], backend=local)
    assert len(people) == len(mod.TEXTS)
    for p in people:
        jsonschema.validate(p, mod.SCHEMA)
    assert_no_leak(engine)


def test_openai_client_as_a_program(server):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "openai_client.py"), "--url", server.url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cached = [int(x) for x in re.findall(r"cached (\d+)", proc.stdout)]
    assert len(cached) == 2 and cached[1] > 100  # the second question reuses the long system prompt
    assert "streamed in" in proc.stdout and "completion: ' Paris" in proc.stdout


def test_curl_sh(engine, server):
    proc = subprocess.run(["bash", os.path.join(EXAMPLES, "curl.sh"), server.url], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    chat, first, second, scored = docs
    assert chat["choices"][0]["message"]["content"] and chat["usage"]["completion_tokens"] > 0
    events = [line[len("data: "):] for line in proc.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 8
    ids = engine.tokenizer.encode("The three primary colours are")
    assert first["output_ids"] == second["output_ids"] == greedy(engine, ids, 8).token_ids
    assert second["meta_info"]["cached_tokens"] == len(ids) - 1  # all but the token whose logits are sampled
    assert scored["meta_info"]["completion_tokens"] == 0
    assert [t[1] for t in scored["meta_info"]["input_token_logprobs"]] == ids[1:]
