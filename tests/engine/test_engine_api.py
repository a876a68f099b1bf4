"""Engine API behaviour: multi-turn reuse, n > 1 sharing one prefill, seeds, stops, aborts,
and bad input answered with a ValueError while the engine keeps serving."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from engine_fixtures import make_engine
from radixserve import Engine, SamplingParams


@pytest.fixture(scope="module")
def engine():
    e = make_engine(max_context_len=1024)
    yield e
    e.shutdown()


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_multi_turn_hits_prompt_and_answer(engine):
    params = SamplingParams(max_new_tokens=24, temperature=0)
    turn1_msgs = [{"role": "user", "content": "Name one large river in Europe and one in Africa."}]
    turn1_ids = engine.apply_chat_template(turn1_msgs)
    turn1 = engine.chat(turn1_msgs, params)
    turn2_msgs = turn1_msgs + [{"role": "assistant", "content": turn1.text},
                               {"role": "user", "content": "Which of them is longer?"}]
    turn2_ids = engine.apply_chat_template(turn2_msgs)
    turn2 = engine.chat(turn2_msgs, params)
    # The last sampled token is fed back only when the next step was launched before the host saw
    # it (overlap scheduling); either way everything computed is cached.
    computed = turn1_ids + (turn1.token_ids if engine.config.overlap_schedule else turn1.token_ids[:-1])
    shared = _common(turn2_ids, computed)
    assert shared >= len(turn1_ids) + len(turn1.token_ids) - 2  # the template re-renders the answer
    assert turn2.cached_tokens == shared
    engine.check_integrity()


def test_n_samples_share_one_prefill(engine):
    ids = engine.tokenizer.encode("Write a short poem about the sea. " * 6)
    outs = engine.generate(input_ids=[ids], sampling_params=SamplingParams(n=4, max_new_tokens=12, temperature=1.0,
                                                                           seed=7))
    assert [o.index for o in outs] == [0, 1, 2, 3]
    cached = sorted(o.cached_tokens for o in outs)
    assert cached[0] < len(ids) - 1  # the first sibling computed the prompt...
    assert all(c == len(ids) - 1 for c in cached[1:])  # ...the others reused all of it but the last token
    assert len({tuple(o.token_ids) for o in outs}) > 1  # different seeds per sample
    again = engine.generate(input_ids=[ids], sampling_params=SamplingParams(n=4, max_new_tokens=12, temperature=1.0,
                                                                            seed=7))
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]


def test_seed_independent_of_batch(engine):
    tok = engine.tokenizer
    target = tok.encode("My favourite colour is")
    p = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=1234)
    alone = engine.generate(input_ids=[target], sampling_params=p)[0].token_ids
    others = [tok.encode(f"Story number {i}: there was a") for i in range(5)]
    mixed = engine.generate(input_ids=others[:2] + [target] + others[2:],
                            sampling_params=[SamplingParams(max_new_tokens=10, temperature=1.0)] * 2 + [p]
                            + [SamplingParams(max_new_tokens=10, temperature=1.0)] * 3)
    assert mixed[2].token_ids == alone


def test_stop_string_is_cut_and_reported(engine):
    ids = engine.tokenizer.encode("1, 2, 3, 4, 5,")
    full = engine.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert " 8," in full.text
    out = engine.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=12, temperature=0,
                                                                          stop=[" 8,"]))[0]
    assert out.finish_reason == "stop" and out.matched_stop == " 8,"
    assert out.text == full.text[:full.text.index(" 8,")]


def test_stream_close_aborts_and_frees(engine):
    ids = engine.tokenizer.encode("Tell me a very long story about dragons.")

    async def consume_two():
        stream = engine.generate_stream(input_ids=ids, sampling_params=SamplingParams(max_new_tokens=200, ignore_eos=True,
                                                                                      temperature=0))
        got = []
        async for delta in stream:
            got.append(delta)
            if len(got) == 2:
                break
        await stream.aclose()
        return got

    got = asyncio.run(consume_two())
    assert len(got) == 2
    for _ in range(100):
        s = engine.stats()
        if s["running"] == 0 and s["waiting"] == 0:
            break
        time.sleep(0.05)
    s = engine.stats()
    assert s["running"] == 0 and s["kv_private_tokens"] == 0
    assert s["requests_finished"].get("abort", 0) >= 1
    engine.check_integrity()


BAD_PARAMS = [
    dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=-1), dict(top_k=-3),
    dict(min_p=2.0), dict(n=0), dict(repetition_penalty=0.0), dict(logprobs=100), dict(stop=[""]),
]


@pytest.mark.parametrize("kwargs", BAD_PARAMS)
def test_bad_sampling_params(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_bad_requests_raise_and_engine_keeps_serving(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate(input_ids=[[]])
    with pytest.raises(ValueError, match="context"):
        engine.generate(input_ids=[[5] * 2000])
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate(input_ids=[[1, 2, engine.vocab_size]])
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate(input_ids=[[1, -4]])
    with pytest.raises(ValueError):
        engine.generate(prompts="hi", input_ids=[1])
    with pytest.raises(ValueError, match="messages"):
        engine.chat([])
    with pytest.raises(ValueError, match="role"):
        engine.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="sampling_params"):
        engine.generate(["a", "b"], [SamplingParams()])
    out = engine.generate("The capital of France is", SamplingParams(max_new_tokens=4, temperature=0))[0]
    assert len(out.token_ids) == 4
    s = engine.stats()
    assert s["running"] == 0 and s["kv_private_tokens"] == 0
    engine.check_integrity()


def test_unknown_model_and_corrupt_weights(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Engine(str(tmp_path / "no-such-model"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    with pytest.raises(ValueError):
        Engine(str(bad))
    with pytest.raises(ValueError, match="unknown Engine options"):
        Engine(no_such_option=1)
    with pytest.raises(ValueError, match="page_size"):
        Engine(page_size=3)


def test_shutdown_releases_weights_and_pool():
    e = make_engine(model="dummy:tiny-llama", max_total_tokens=256)
    e.generate(input_ids=[[5, 6, 7]], sampling_params=SamplingParams(max_new_tokens=2))
    e.shutdown()
    assert all(p.is_meta for p in e.runner.model.parameters())
    assert not e.runner.pool.k and e.runner.req_table.table.numel() == 0
    e.shutdown()  # twice is fine
    assert not e.is_alive()


def test_generate_makes_text_once_per_request_and_streams_agree(monkeypatch):
    """Engine.generate decodes each request's text at its end, not token by token on the scheduler's
    thread; the text is what generate_stream (token by token) gives for the same greedy tokens."""
    from radixserve.engine.detokenizer import IncrementalDetokenizer

    e = make_engine(model="dummy:tiny-llama", max_total_tokens=4096)
    try:
        prompts = [[5 + i, 600 + 7 * i, 900, 31 * i + 2] for i in range(6)]
        params = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)

        async def stream_all():
            async def one(ids):
                text, tokens = "", []
                async for d in e.generate_stream(input_ids=ids, sampling_params=params):
                    text, tokens = text + d.text, tokens + d.token_ids
                return tokens, text
            return await asyncio.gather(*(one(p) for p in prompts))
        streamed = asyncio.run(stream_all())
        calls = [0]
        decode = IncrementalDetokenizer._decode

        def counting(self, ids):
            calls[0] += 1
            return decode(self, ids)
        monkeypatch.setattr(IncrementalDetokenizer, "_decode", counting)
        outs = e.generate(input_ids=prompts, sampling_params=params)
        assert [(o.token_ids, o.text) for o in outs] == streamed
        assert all(len(o.token_ids) == 20 and o.text for o in outs)
        assert calls[0] <= 4 * len(prompts), f"{calls[0]} decodes for {len(prompts)} requests: text made per token"
        stop = streamed[0][1][3:6]
        stopped = e.generate(input_ids=prompts[:1], sampling_params=SamplingParams(
            max_new_tokens=20, temperature=0, ignore_eos=True, stop=[stop]))[0]
        assert stopped.finish_reason == "stop"  # stop strings still match: their requests make text per token
        assert stopped.text == streamed[0][1][:streamed[0][1].index(stop)]
    finally:
        e.shutdown()
