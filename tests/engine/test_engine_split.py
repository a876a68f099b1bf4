"""The split layout (EngineClient + engine process) against the in-process Engine as the oracle:
same tokens, same text, same stops (stop strings are found in the front end here, in the
scheduler's result handling there), same logprobs; aborts and stops free every slot; errors
arrive as the same exceptions. The messages themselves: tests/test_wire.py."""
from __future__ import annotations

import asyncio
import time

import pytest

from radixserve import Engine, SamplingParams
from radixserve.engine.client import EngineClient
from radixserve.engine.errors import EngineDeadError
from radixserve.engine.interface import ChatTokenizer, EngineHandle
from radixserve.grammar.errors import GrammarError

OPTIONS = dict(max_total_tokens=4096, max_context_len=1024)
MSG = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def local():
    eng = Engine(**OPTIONS)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def split():
    client = EngineClient(**OPTIONS)
    yield client
    client.shutdown()


def idle(client, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = client.stats()
        if st["running"] == 0 and st["waiting"] == 0:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.05)


def assert_no_leak(client) -> None:
    st = idle(client)
    assert st["kv_private_tokens"] == 0 and st["kv_used_tokens"] == st["kv_tree_tokens"], st
    client.check_integrity()


def same(a, b) -> None:
    assert (a.text, a.token_ids, a.finish_reason, a.matched_stop, a.prompt_tokens) == \
           (b.text, b.token_ids, b.finish_reason, b.matched_stop, b.prompt_tokens)


CASES = {
    "greedy": SamplingParams(max_new_tokens=16, temperature=0.0),
    "stop-string": SamplingParams(max_new_tokens=40, temperature=0.0, stop=["Paris", "France is"]),
    "stop-string-n2-seeded": SamplingParams(max_new_tokens=40, temperature=0.8, seed=7, n=2, stop=["."]),
    "stop-token-id": SamplingParams(max_new_tokens=40, temperature=0.0, stop_token_ids=[4649]),
    "logprobs": SamplingParams(max_new_tokens=8, temperature=0.0, logprobs=3),
    "ignore-eos-length": SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_equal_the_in_process_engine(local, split, name):
    sp = CASES[name]
    want = local.chat(MSG, sp)
    got = split.chat(MSG, sp)
    want, got = (want, got) if isinstance(want, list) else ([want], [got])
    assert len(got) == len(want) == sp.n
    for a, b in zip(got, want):
        same(a, b)
        if sp.logprobs is not None:
            assert [(x.token_id, round(x.logprob, 4), [t for t, _ in x.top]) for x in a.logprobs] == \
                   [(x.token_id, round(x.logprob, 4), [t for t, _ in x.top]) for x in b.logprobs]
    if "stop-string" in name:
        assert all(o.finish_reason == "stop" and isinstance(o.matched_stop, str) for o in got)
    assert_no_leak(split)


def test_prompt_logprobs_with_no_new_tokens(local, split):
    ids = local.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    sp = SamplingParams(max_new_tokens=0, prompt_logprobs_start=1, prompt_top_logprobs=2)
    (a,), (b,) = split.generate(input_ids=[ids], sampling_params=sp), local.generate(input_ids=[ids], sampling_params=sp)
    assert a.token_ids == [] and a.finish_reason == b.finish_reason == "length"
    assert [(x.token_id, round(x.logprob, 4)) for x in a.prompt_logprobs] == \
           [(x.token_id, round(x.logprob, 4)) for x in b.prompt_logprobs]
    assert len(a.prompt_logprobs) == len(ids) - 1


def test_stream_deltas_concatenate_to_the_output_and_stop_promptly(local, split):
    sp = SamplingParams(max_new_tokens=60, temperature=0.0, stop=["Paris"])
    want = local.chat(MSG, sp)
    ids = split.apply_chat_template(MSG)

    async def run():
        deltas = [d async for d in split.generate_stream(ids, sp)]
        return deltas
    deltas = asyncio.run(run())
    assert "".join(d.text for d in deltas) == want.text
    assert [t for d in deltas for t in d.token_ids] == want.token_ids
    assert deltas[-1].finish_reason == "stop" and all(d.finish_reason is None for d in deltas[:-1])
    assert_no_leak(split)  # the engine got the stop and freed the request's slots


def test_tokens_computed_after_a_stop_are_counted_not_returned(split):
    before = split.stats()
    sp = SamplingParams(max_new_tokens=200, temperature=0.0, ignore_eos=True, stop=["the"])
    (out,) = split.generate(prompts=["Write a long story about the sea and the wind."], sampling_params=sp)
    assert out.finish_reason == "stop" and out.matched_stop == "the"
    after = idle(split)
    generated = after["generated_tokens"] - before["generated_tokens"]
    dropped = after["tokens_after_stop"] - before["tokens_after_stop"]
    assert generated == len(out.token_ids) + dropped  # every token the engine made is kept or counted
    assert generated < 200  # the abort reached the engine long before max_new_tokens
    assert after["stop_aborts"] == before["stop_aborts"] + 1


def test_abort_and_disconnect_free_every_slot(split):
    ids = split.tokenizer.encode("Tell me everything about the history of Rome.")

    async def run():
        gen = split.generate_stream(ids, SamplingParams(max_new_tokens=300, temperature=0.0, ignore_eos=True, n=2))
        got = 0
        async for d in gen:
            got += len(d.token_ids)
            if got >= 6:
                break
        await gen.aclose()  # the client went away
        outs = await asyncio.gather(split.agenerate(ids, SamplingParams(max_new_tokens=300, ignore_eos=True),
                                                    request_id="to-abort"), _abort_soon(split, "to-abort"))
        return outs[0]
    (out,) = asyncio.run(run())
    assert out.finish_reason == "abort" and len(out.token_ids) < 300
    assert_no_leak(split)


async def _abort_soon(client, rid):
    await asyncio.sleep(0.3)
    client.abort(rid)


def test_errors_arrive_as_the_in_process_exceptions(split):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        split.generate(input_ids=[[10 ** 9]], sampling_params=SamplingParams(max_new_tokens=2))
    with pytest.raises(GrammarError) as err:
        split.generate(prompts=["x"], sampling_params=SamplingParams(max_new_tokens=2, regex="(unclosed"))
    assert err.value.field == "regex"
    (ok,) = split.generate(prompts=["Name a colour:"], sampling_params=SamplingParams(
        max_new_tokens=4, temperature=0.0, choice=["red", "blue"]))
    assert ok.text in ("red", "blue")
    assert_no_leak(split)


def test_both_layouts_are_engine_handles_and_take_a_prepared_request(local, split):
    assert isinstance(local, EngineHandle) and isinstance(split, EngineHandle)
    assert isinstance(local, ChatTokenizer) and isinstance(split, ChatTokenizer)
    ids = split.apply_chat_template(MSG)
    assert ids == local.apply_chat_template(MSG)
    # over the context: the Python API lowers max_new_tokens, the same way on both sides
    sp = SamplingParams(max_new_tokens=5000, temperature=0.0)
    prepared = split.prepare(ids, sp)
    assert prepared == local.prepare(ids, sp)
    assert prepared.params.max_new_tokens == OPTIONS["max_context_len"] - len(ids)
    short = split.prepare(ids, SamplingParams(max_new_tokens=6, temperature=0.0))
    (a,), (b,) = asyncio.run(split.agenerate(short)), asyncio.run(local.agenerate(short))
    same(a, b)
    assert len(a.token_ids) <= 6
    assert_no_leak(split)


def test_cache_events_and_flush_go_through_the_engine_process(split):
    split.generate(prompts=["A cached prefix for the events test."], sampling_params=SamplingParams(max_new_tokens=2))
    idle(split)
    body = asyncio.run(split.cache_events(-1, None, 100))
    assert "resync" in body and body["head"] >= 1
    tokens = sum(len(t) for ns in body["resync"]["namespaces"] for _, t in ns["nodes"])
    assert tokens == split.stats()["kv_tree_tokens"]
    again = asyncio.run(split.cache_events(body["head"], body["epoch"], 100))
    assert again["events"] == [] and again["more"] is False
    assert split.flush_cache() is True
    assert split.stats()["kv_used_tokens"] == 0


@pytest.mark.parametrize("layout", ["local", "split"])
def test_samples_keep_their_public_ids_and_abort_one_at_a_time(local, split, layout):
    engine = local if layout == "local" else split
    ids = engine.tokenizer.encode("Tell me everything about the history of Rome.")
    sp = SamplingParams(max_new_tokens=120, temperature=0.0, ignore_eos=True, n=2)

    async def run():
        names, tokens, reasons = {}, {0: [], 1: []}, {}
        async for d in engine.generate_stream(ids, sp, request_id="two"):
            names.setdefault(d.index, d.request_id)
            tokens[d.index] += d.token_ids
            if d.finish_reason is not None:
                reasons[d.index] = d.finish_reason
            if d.index == 1 and len(tokens[1]) >= 3 and 1 not in reasons:
                engine.abort("two", index=1)  # sample 1 only
        return names, tokens, reasons
    names, tokens, reasons = asyncio.run(run())
    assert names == {0: "two#0", 1: "two#1"}
    assert reasons == {0: "length", 1: "abort"}
    (alone,) = local.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=120, temperature=0.0,
                                                                              ignore_eos=True))
    assert tokens[0] == alone.token_ids  # the other sample ran on, untouched
    assert len(tokens[1]) < 120 and tokens[1] == alone.token_ids[:len(tokens[1])]
    outs = asyncio.run(engine.agenerate(ids, SamplingParams(max_new_tokens=2, n=2), request_id="pair"))
    assert sorted(o.request_id for o in outs) == ["pair#0", "pair#1"]
    (one,) = asyncio.run(engine.agenerate(ids, SamplingParams(max_new_tokens=2), request_id="single"))
    assert one.request_id == "single"
    if layout == "split":
        assert_no_leak(split)


def test_a_dead_engine_fails_callers_fast():
    client = EngineClient(**OPTIONS)
    died = []
    client.on_death = lambda: died.append(True)
    try:
        ids = client.tokenizer.encode("Count to a thousand:")

        async def run():
            got = []
            with pytest.raises(EngineDeadError):
                async for d in client.generate_stream(ids, SamplingParams(max_new_tokens=500, ignore_eos=True)):
                    got.append(d)
                    if len(got) == 2:
                        client.process.kill()
            return got
        t0 = time.monotonic()
        asyncio.run(run())
        assert time.monotonic() - t0 < 30
        assert died == [True] and not client.is_alive()
        with pytest.raises(EngineDeadError):
            client.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=2))
    finally:
        client.shutdown()
