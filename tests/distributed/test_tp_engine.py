"""Tensor parallelism through the Engine: TP=2 over gloo gives TP=1's greedy tokens for random
Llama / Qwen2 / Qwen3 checkpoints, with radix reuse, chunked prefill, retraction and abort; a dead
rank makes the engine fail with a clear error instead of hanging."""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

from engine_fixtures import make_engine
from model_fixtures import embedded_tokenizer, save_tiny_hf_model
from radixserve import SamplingParams
from radixserve.engine.errors import EngineDeadError

NEW = 12
GREEDY = SamplingParams(max_new_tokens=NEW, temperature=0, ignore_eos=True)
# NOTE: chunks of 16 tokens, so every prompt past 16 tokens is prefilled over several steps
CHUNKED = dict(chunked_prefill_size=16, max_prefill_tokens=48)


@pytest.fixture(scope="module")
def tok():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tok):
    return {kind: save_tiny_hf_model(kind, str(tmp_path_factory.mktemp(kind)), tok)
            for kind in ("llama", "qwen2", "qwen3")}


def _prompts(tok) -> list[list[int]]:
    texts = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived an old "
             "fisherman who had never seen a storm like the one that came that night", "1, 2, 3, 4, 5,",
             "Q: What is the largest planet in our solar system?\nA:", "Hi"]
    return [tok.encode(t) for t in texts]


def _run(engine, prompts):
    return engine.generate(input_ids=prompts, sampling_params=GREEDY)


def _shared_system(tok) -> list[list[int]]:
    """Four questions after one 40+-token system prompt: their decode rows share it (cascade groups)."""
    system = tok.encode("You are a careful assistant for a travel company. Answer briefly and truthfully. Our "
                        "offices are in Lisbon, Oslo and Kyoto; we sell rail passes, ferry tickets and guided walking "
                        "tours. Never invent prices.")
    assert len(system) >= 40
    return [system + tok.encode(q) for q in (" Rivers?", " Trains to Bergen?", " A haiku.", " Why blue?")]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_tp2_greedy_tokens_match_tp1_with_radix_reuse_and_chunked_prefill(checkpoints, tok, kind):
    prompts, shared = _prompts(tok), _shared_system(tok)
    # second round: the first round's prompts and outputs continued, so each hits the tree
    with make_engine(model=checkpoints[kind], **CHUNKED) as ref:
        first = _run(ref, prompts)
        follow = [p + o.token_ids + tok.encode(" And then") for p, o in zip(prompts, first)]
        second = _run(ref, follow)
        third = _run(ref, shared)
    with make_engine(model=checkpoints[kind], tp=2, **CHUNKED) as eng:
        sent, send = [], eng.runner.sender.send
        eng.runner.sender.send = lambda batch: (sent.append(batch.prefix_groups is not None), send(batch))[1]
        got_first = _run(eng, prompts)
        got_second = _run(eng, follow)
        got_third = _run(eng, shared)
        stats = eng.stats()
        eng.check_integrity()
    assert [o.token_ids for o in got_first] == [o.token_ids for o in first]
    assert [o.token_ids for o in got_second] == [o.token_ids for o in second]
    assert [o.token_ids for o in got_third] == [o.token_ids for o in third]
    assert any(sent)  # decode batches with cascade prefix groups went to rank 1
    # radix reuse under TP: the follow-ups were served from the cached prefixes
    assert all(o.cached_tokens >= len(p) - 1 for o, p in zip(got_second, prompts))
    assert stats["cached_tokens"] > 0 and stats["kv_private_tokens"] == 0
    assert not torch.distributed.is_initialized()  # shutdown left the group


def _pressure_workload(tok) -> list[list[int]]:
    topics = ["rivers", "mountains", "trains", "cheese", "poems", "planets"]
    return [tok.encode(f"Notes on {topics[i % 6]}. " * (1 + i % 3) + f"Item {i}: the fact is") for i in range(24)]


@pytest.fixture(scope="module")
def pressured(checkpoints, tok):
    """A TP=2 engine whose KV pool holds a fraction of what its workload needs, and the workload's
    outputs from a roomy TP=1 engine."""
    prompts = _pressure_workload(tok)
    with make_engine(model=checkpoints["llama"]) as roomy:
        expected = [o.token_ids for o in _run(roomy, prompts)]
    need = sum(len(p) + NEW for p in prompts)
    eng = make_engine(model=checkpoints["llama"], tp=2, max_total_tokens=int(need * 0.25), **CHUNKED)
    yield eng, prompts, expected
    eng.shutdown()


def test_tp2_retraction_gives_the_unpressured_output(pressured):
    eng, prompts, expected = pressured
    outs = _run(eng, prompts)
    assert [o.token_ids for o in outs] == expected
    stats = eng.stats()
    assert stats["retractions"] > 0 and stats["evicted_tokens"] > 0
    assert stats["running"] == 0 and stats["kv_private_tokens"] == 0
    eng.check_integrity()


def test_tp2_abort_frees_and_keeps_serving(pressured):
    eng, prompts, expected = pressured
    before = eng.stats()["requests_finished"].get("abort", 0)

    async def two_then_close():
        stream = eng.generate_stream(input_ids=prompts[0], sampling_params=SamplingParams(
            max_new_tokens=200, ignore_eos=True, temperature=0))
        got = []
        async for delta in stream:
            got.append(delta)
            if len(got) == 2:
                break
        await stream.aclose()
        return got

    assert len(asyncio.run(two_then_close())) == 2
    for _ in range(100):
        s = eng.stats()
        if s["running"] == 0 and s["waiting"] == 0:
            break
        time.sleep(0.05)
    assert s["running"] == 0 and s["kv_private_tokens"] == 0
    assert s["requests_finished"].get("abort", 0) == before + 1
    eng.check_integrity()
    assert [o.token_ids for o in _run(eng, prompts[:3])] == expected[:3]  # the other ranks kept in step


def test_tp2_dead_rank_fails_the_engine_clearly(pressured):
    """Runs last on the shared engine: it kills rank 1 in the middle of a request's decode."""
    eng, prompts, _ = pressured
    proc = eng.runner.ranks.procs[0]

    async def kill_after_first_token():
        got = 0
        stream = eng.generate_stream(input_ids=prompts[0], sampling_params=SamplingParams(
            max_new_tokens=64, ignore_eos=True, temperature=0))
        async for delta in stream:
            got += len(delta.token_ids)
            if proc.poll() is None:
                proc.kill()
        return got

    start = time.monotonic()
    with pytest.raises(EngineDeadError, match="tensor-parallel rank 1"):
        asyncio.run(kill_after_first_token())
    assert time.monotonic() - start < 60  # failed, not hung in a collective
    assert not eng.is_alive()
    with pytest.raises(EngineDeadError, match="tensor-parallel rank 1"):
        _run(eng, prompts[:1])
    eng.shutdown()
    assert not torch.distributed.is_initialized()


def test_tp2_with_speculation_gives_tp1_tokens(checkpoints, tok):
    """Verify steps are extend steps to the other ranks: TP=2 with radix drafts gives TP=1's tokens."""
    prompts = _prompts(tok)
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    with make_engine(model=checkpoints["llama"]) as ref:
        want = [o.token_ids for o in ref.generate(input_ids=prompts, sampling_params=params)]
    spec = {"method": "radix", "num_speculative_tokens": 3}
    with make_engine(model=checkpoints["llama"], tp=2, speculative_config=spec) as e:
        assert [o.token_ids for o in e.generate(input_ids=prompts, sampling_params=params)] == want
        # again: the tree holds the answers, so the second run drafts them and keeps them
        assert [o.token_ids for o in e.generate(input_ids=prompts, sampling_params=params)] == want
        assert e.stats()["spec_accepted_tokens"] > 0
