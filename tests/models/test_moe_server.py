"""A mixture-of-experts model served over HTTP the way `radixserve serve` runs it (engine process +
front end), driven by the openai SDK: its greedy completions equal transformers' generate."""
from __future__ import annotations

import openai
import pytest
import torch

from engine_fixtures import hf_greedy
from model_fixtures import embedded_tokenizer, save_tiny_hf_model, tiny_hf_model
from radixserve.engine.client import EngineClient
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread

KIND = "qwen3-moe"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = save_tiny_hf_model(KIND, str(tmp_path_factory.mktemp("moe_server") / KIND), embedded_tokenizer())
    engine = EngineClient(model=path, device="cpu", dtype="float32", max_total_tokens=4096, page_size=4)
    try:
        with ServerThread(build_app(engine, ServerConfig(served_model_name="tiny-moe"))) as srv:
            yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def hf():
    return tiny_hf_model(KIND)


def test_completions_equal_transformers_generate(client, hf):
    prompts = [torch.randint(3, 49152, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (4, 19)]
    for ids in prompts:
        out = client.completions.create(model="tiny-moe", prompt=ids, max_tokens=10, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 10
        want = hf_greedy(hf, ids, 10, set())
        assert out.choices[0].text == embedded_tokenizer().decode(want)


def test_streamed_chat_equals_the_whole_answer(client):
    messages = [{"role": "user", "content": "Name a river."}]
    whole = client.chat.completions.create(model="tiny-moe", messages=messages, max_tokens=12, temperature=0)
    parts = client.chat.completions.create(model="tiny-moe", messages=messages, max_tokens=12, temperature=0,
                                           stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == whole.choices[0].message.content and whole.usage.completion_tokens > 0
