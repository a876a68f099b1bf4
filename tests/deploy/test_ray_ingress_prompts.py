"""The Ray ingress renders chat prompts as the engines do, template options included (no cluster).
The engine is a tiny random Llama with the embedded model's tokenizer: only its chat template is used."""
from __future__ import annotations

import pytest

pytest.importorskip("ray")

from engine_fixtures import make_engine  # noqa: E402
from radixserve.deploy.ray_engine import RayEngine  # noqa: E402
from radixserve.router.frontend import Frontend  # noqa: E402


def test_ingress_and_router_prompts_equal_the_engine_s():
    e = make_engine(model="dummy:tiny-llama", max_total_tokens=1024)
    try:
        info = {"tokenizer": e.tokenizer, "config": e.config, "model_name": e.model_name,
                "max_context_len": e.max_context_len, "vocab_size": e.vocab_size, "eos_ids": e.eos_ids,
                "limits": e.limits}
        ingress, frontend = RayEngine(None, info), Frontend(e.tokenizer)
        convo = [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Douro"}]
        for kwargs in ({}, {"add_generation_prompt": False}, {"continue_final_message": True,
                                                               "add_generation_prompt": False},
                       {"template_kwargs": {"enable_thinking": False}}):
            want = e.apply_chat_template(convo, **kwargs)
            assert ingress.apply_chat_template(convo, **kwargs) == want == frontend.apply_chat_template(convo, **kwargs)
        assert e.apply_chat_template(convo, continue_final_message=True, add_generation_prompt=False) != \
            e.apply_chat_template(convo)  # the options do change the prompt
    finally:
        e.shutdown()
