"""Grammars inside the engine: batch isolation, overlap, retraction, the radix cache, n > 1,
logprobs, stop strings, abort, jump-forward, and compilation off the scheduler loop (a request
waits in the queue while its grammar compiles; a compile past the timeout is a ValueError)."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time

import jsonschema
import pytest

from engine_fixtures import make_engine, mixed_prompts
from grammar_cases import ARITH_EBNF, CHOICES, REGEXES, SCHEMAS, arith_ok, json_prompt
from radixserve import SamplingParams
from radixserve.grammar import GrammarError
import radixserve.scheduler.scheduler as scheduler_mod

PERSON = SCHEMAS["flat_person"]
LONG_KEYS = SCHEMAS["long_fixed_keys"]


@pytest.fixture(scope="module")
def engine():
    e = make_engine(max_total_tokens=8192, jump_forward=True)
    yield e
    e.shutdown()


def _mixed(e):
    """Unconstrained and constrained requests, greedy and seeded."""
    plain = [e.tokenizer.encode(p) for p in mixed_prompts()[:4]]
    person = e.apply_chat_template(json_prompt(PERSON))
    keys = e.apply_chat_template(json_prompt(LONG_KEYS))
    ask = e.apply_chat_template([{"role": "user", "content": "How do you feel today?"}])
    reqs = [(plain[0], SamplingParams(max_new_tokens=12, temperature=0)),
            (person, SamplingParams(max_new_tokens=64, temperature=0, json_schema=PERSON)),
            (plain[1], SamplingParams(max_new_tokens=12, temperature=0.9, seed=4)),
            (ask, SamplingParams(max_new_tokens=16, temperature=0, choice=CHOICES["sentiment"])),
            (keys, SamplingParams(max_new_tokens=96, temperature=1.0, seed=7, json_schema=LONG_KEYS)),
            (plain[2], SamplingParams(max_new_tokens=12, temperature=0)),
            (ask, SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, ebnf=ARITH_EBNF)),
            (plain[3], SamplingParams(max_new_tokens=24, temperature=0, regex=REGEXES["phone"])),
            (keys, SamplingParams(max_new_tokens=96, temperature=0, json_schema=LONG_KEYS))]
    return [r[0] for r in reqs], [r[1] for r in reqs]


def _tokens(outs):
    return [o.token_ids for o in outs]


def _check_valid(params, out):
    if params.json_schema is not None:
        jsonschema.validate(json.loads(out.text), params.json_schema)
    elif params.regex is not None:
        assert re.fullmatch(params.regex, out.text), out.text
    elif params.choice is not None:
        assert out.text in params.choice
    elif params.ebnf is not None:
        assert arith_ok(out.text), out.text
    else:
        return
    assert out.finish_reason == "stop", (out.finish_reason, out.text)


@pytest.fixture(scope="module")
def together(engine):
    prompts, params = _mixed(engine)
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    for p, o in zip(params, outs):
        _check_valid(p, o)
    return prompts, params, outs


def test_mixed_batch_matches_each_request_alone(engine, together):
    prompts, params, outs = together
    alone = [engine.generate(input_ids=[ids], sampling_params=p)[0] for ids, p in zip(prompts, params)]
    assert _tokens(outs) == _tokens(alone)
    engine.check_integrity()


def test_synchronous_steps_give_the_same_outputs(together):
    """Overlap on (grammar rows finalize the previous step between forward and sampling) and off."""
    prompts, params, outs = together
    e = make_engine(max_total_tokens=4096, overlap_schedule=False, jump_forward=True)
    try:
        assert _tokens(e.generate(input_ids=prompts, sampling_params=params)) == _tokens(outs)
    finally:
        e.shutdown()


def test_retraction_under_memory_pressure_gives_the_same_outputs(engine, monkeypatch):
    prompts, params = [], []
    for i in range(12):
        schema = PERSON if i % 2 else LONG_KEYS
        chat = json_prompt(schema)
        chat[0] = {"role": "system", "content": f"Record {i} of the registry. " + chat[0]["content"]}  # no sharing
        prompts.append(engine.apply_chat_template(chat))
        params.append(SamplingParams(max_new_tokens=96, temperature=0 if i % 3 == 0 else 1.0, seed=100 + i,
                                     json_schema=schema))
    expected = engine.generate(input_ids=prompts, sampling_params=params)
    for p, o in zip(params, expected):
        _check_valid(p, o)
    need = sum(len(p) + len(o.token_ids) for p, o in zip(prompts, expected))
    lone = max(len(p) + len(o.token_ids) for p, o in zip(prompts, expected)) + 16
    # NOTE: admission reserves no decode room, so decode runs out of slots and must retract (with room
    # reserved, these short outputs fit and nothing would be retracted).
    monkeypatch.setattr(scheduler_mod, "DECODE_RESERVE_RATIO", 0.0)
    tight = make_engine(max_total_tokens=max(need // 4, lone), max_prefill_tokens=256, chunked_prefill_size=128,
                        jump_forward=True)
    try:
        # NOTE: compile both grammars first: requests whose grammar is ready at once are admitted in a
        # fixed order, so the run (and its retractions) does not depend on compile timing.
        tight.generate(input_ids=prompts[:2], sampling_params=[dataclasses.replace(p, max_new_tokens=1)
                                                                for p in params[:2]])
        outs = tight.generate(input_ids=prompts, sampling_params=params)
        stats = tight.stats()
        assert stats["retractions"] > 0
        assert stats["running"] == 0 and stats["kv_private_tokens"] == 0
        tight.check_integrity()
    finally:
        tight.shutdown()
    assert _tokens(outs) == _tokens(expected)


def test_cached_prompt_and_jump_forward_tokens_enter_the_tree(engine):
    prompt = engine.apply_chat_template([{"role": "user", "content": "Registration record number 8812, as JSON: "
                                                                       + json.dumps(LONG_KEYS)}])
    engine.generate(input_ids=[prompt], sampling_params=SamplingParams(max_new_tokens=1, temperature=0))
    jumped_before = engine.stats()["jump_forward_tokens"]
    out = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=96, temperature=0, json_schema=LONG_KEYS))[0]
    assert out.cached_tokens == len(prompt) - 1  # all but the last prompt token, whose logits are needed
    jsonschema.validate(json.loads(out.text), LONG_KEYS)
    jumped = engine.stats()["jump_forward_tokens"] - jumped_before
    assert jumped >= 20  # the long keys came by jump-forward
    # every output token but the final EOS (never fed to the model) is in the tree now
    follow = prompt + out.token_ids[:-1] + engine.tokenizer.encode(" Thanks.")
    again = engine.generate(input_ids=[follow], sampling_params=SamplingParams(max_new_tokens=1, temperature=0))[0]
    assert again.cached_tokens == len(prompt) + len(out.token_ids) - 1


def test_n_samples_each_follow_the_grammar_with_their_own_matcher(engine):
    prompt = engine.apply_chat_template(json_prompt(PERSON))
    outs = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=64, temperature=1.0, seed=21, n=3, json_schema=PERSON))
    assert [o.index for o in outs] == [0, 1, 2]
    for o in outs:
        jsonschema.validate(json.loads(o.text), PERSON)
        assert o.finish_reason == "stop"
    # sample i draws with seed + 1_000_003 * i: the same as asking for that seed alone
    alone = [engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=64, temperature=1.0, seed=21 + 1_000_003 * i, json_schema=PERSON))[0] for i in range(3)]
    assert _tokens(outs) == _tokens(alone)


def test_logprobs_cover_every_token_and_stop_strings_cut_the_output(engine):
    prompt = engine.apply_chat_template(json_prompt(LONG_KEYS))
    out = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=96, temperature=0, json_schema=LONG_KEYS, logprobs=2))[0]
    jsonschema.validate(json.loads(out.text), LONG_KEYS)
    # no jump-forward for a request that wants logprobs: every token was decoded, and has one
    assert [lp.token_id for lp in out.logprobs] == out.token_ids
    assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in out.logprobs)
    stopped = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=96, temperature=0, json_schema=LONG_KEYS, stop=['number": ']))[0]
    assert stopped.finish_reason == "stop" and stopped.matched_stop == 'number": '
    assert stopped.text == '{"customer_identification_'
    full = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=96, temperature=0, json_schema=LONG_KEYS))[0]
    stop_id = full.token_ids[len(full.token_ids) // 2]
    by_token = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=96, temperature=0, json_schema=LONG_KEYS, stop_token_ids=[stop_id]))[0]
    assert by_token.finish_reason == "stop" and by_token.matched_stop == stop_id
    assert by_token.token_ids == full.token_ids[:full.token_ids.index(stop_id) + 1]


def test_jump_forward_saves_decode_steps_and_keeps_outputs_valid(engine):
    prompts = [engine.apply_chat_template(json_prompt(LONG_KEYS) + [{"role": "user", "content": f"Customer {i}."}])
               for i in range(4)]
    params = SamplingParams(max_new_tokens=96, temperature=0, json_schema=LONG_KEYS)
    off = make_engine(max_total_tokens=4096, jump_forward=False)
    try:
        steps = {}
        outs = {}
        for name, e in (("on", engine), ("off", off)):
            before = e.scheduler.step_count
            outs[name] = e.generate(input_ids=prompts, sampling_params=params)
            steps[name] = e.scheduler.step_count - before
        assert off.stats()["jump_forward_tokens"] == 0
        # with logprobs (no jump-forward) the jump engine decodes exactly like the one without
        lp = engine.generate(input_ids=prompts[:1], sampling_params=SamplingParams(
            max_new_tokens=96, temperature=0, json_schema=LONG_KEYS, logprobs=0))[0]
        assert lp.token_ids == outs["off"][0].token_ids
    finally:
        off.shutdown()
    for o in outs["on"] + outs["off"]:
        jsonschema.validate(json.loads(o.text), LONG_KEYS)
        assert o.finish_reason == "stop"
    assert steps["on"] * 2 < steps["off"], steps


def test_json_object_mode(engine):
    prompt = engine.apply_chat_template([{"role": "user", "content": "Give a JSON object with the keys name and age."}])
    out = engine.generate(input_ids=[prompt], sampling_params=SamplingParams(
        max_new_tokens=96, temperature=0, json_schema={"type": "object"}))[0]
    assert isinstance(json.loads(out.text), dict) and out.finish_reason == "stop", out.text


def test_abort_of_a_constrained_stream_frees_everything(engine):
    prompt = engine.apply_chat_template(json_prompt(SCHEMAS["array_of_objects"]))

    async def first_delta_then_close():
        stream = engine.generate_stream(prompt, SamplingParams(max_new_tokens=64, temperature=1.0, seed=3,
                                                               json_schema=SCHEMAS["array_of_objects"]))
        async for d in stream:
            await stream.aclose()
            return d
    asyncio.run(first_delta_then_close())
    for _ in range(100):
        s = engine.stats()
        if not s["running"] and not s["waiting"]:
            break
        time.sleep(0.05)
    assert s["running"] == 0 and s["waiting"] == 0 and s["kv_private_tokens"] == 0
    engine.check_integrity()


class _SlowCompiles:
    """Holds every compile of `engine` until released (deterministic 'slow grammar')."""

    def __init__(self, engine, monkeypatch):
        self.release = threading.Event()
        real = engine.grammar._compile

        def held(spec):
            assert self.release.wait(60)
            return real(spec)
        monkeypatch.setattr(engine.grammar, "_compile", held)


def test_a_compiling_grammar_waits_in_the_queue_without_blocking_others(engine, monkeypatch):
    slow = _SlowCompiles(engine, monkeypatch)
    prompt = engine.apply_chat_template(json_prompt(PERSON))
    result = {}
    t = threading.Thread(target=lambda: result.update(out=engine.generate(input_ids=[prompt], sampling_params=(
        SamplingParams(max_new_tokens=64, temperature=0, json_schema=PERSON)))[0]))
    t.start()
    try:
        deadline = time.monotonic() + 30
        while engine.stats()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["waiting"] == 1  # queued, grammar not ready
        other = engine.generate("The capital of France is", SamplingParams(max_new_tokens=8, temperature=0))[0]
        assert other.finish_reason == "length" and t.is_alive()
        assert engine.stats()["waiting"] == 1
    finally:
        slow.release.set()
        t.join(60)
    jsonschema.validate(json.loads(result["out"].text), PERSON)


def test_compile_timeout_is_a_value_error_and_the_engine_keeps_serving(monkeypatch):
    e = make_engine(max_total_tokens=1024, grammar_compile_timeout_s=0.3, jump_forward=True)
    try:
        slow = _SlowCompiles(e, monkeypatch)
        prompt = e.apply_chat_template(json_prompt(PERSON))
        params = SamplingParams(max_new_tokens=32, temperature=0, json_schema=PERSON)
        with pytest.raises(GrammarError, match=r"json_schema: the grammar did not compile within 0.3 s") as exc:
            e.generate(input_ids=[prompt], sampling_params=params)
        assert exc.value.field == "json_schema"

        async def via_async():
            return await e.agenerate(prompt, SamplingParams(max_new_tokens=32, temperature=0, regex="[0-9]+"))
        with pytest.raises(ValueError, match=r"regex: the grammar did not compile within"):
            asyncio.run(via_async())
        slow.release.set()
        out = e.generate("Hello", SamplingParams(max_new_tokens=4, temperature=0))[0]
        assert out.finish_reason == "length"
        deadline = time.monotonic() + 30
        while (e.stats()["waiting"] or e.stats()["running"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        s = e.stats()
        assert s["waiting"] == 0 and s["running"] == 0 and s["kv_private_tokens"] == 0
        assert s["requests_finished"].get("abort") == 2
        ok = e.generate(input_ids=[prompt], sampling_params=params)[0]  # compiled (and cached) by now
        jsonschema.validate(json.loads(ok.text), PERSON)
        e.check_integrity()
    finally:
        e.shutdown()
