"""radixserve.lang on the embedded SmolLM2 (CPU, float32): token-exact state, roles from the chat
template, select against prompt log-probs computed independently by Engine.generate, fork, run_batch
hit rate vs optimal, LocalBackend vs RuntimeEndpoint token for token, streaming, arun, errors."""
from __future__ import annotations

import asyncio
import time

import pytest

import radixserve.lang as sgl
from radixserve import Engine, SamplingParams
from radixserve.bench.workloads import optimal_hit_rate
from radixserve.server import ServerConfig, build_app
from radixserve.server.testing import ServerThread
from server_fixtures import assert_no_leak

API_KEY = "sk-lang-test"
CONTEXT = 2048
FEW_SHOT = "".join(f"Q: What is {a} plus {b}?\nA: {a + b}\n\n" for a, b in
                   [(2, 3), (10, 7), (21, 4), (8, 8), (13, 29), (100, 1), (45, 5), (6, 70)])
QUESTIONS = [f"What is {a} plus {b}?" for a, b in [(1, 1), (2, 9), (30, 12), (7, 7), (50, 50), (3, 4), (11, 22),
                                                    (9, 10), (14, 6), (5, 25), (60, 3), (8, 1), (12, 12),
                                                    (40, 2), (16, 16), (99, 1)]]


@pytest.fixture(scope="module")
def engine():
    eng = Engine(device="cpu", dtype="float32", max_total_tokens=16384, max_context_len=CONTEXT,
                 check_integrity=True)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def local(engine):
    be = sgl.LocalBackend(engine)
    yield be
    be.shutdown()


@pytest.fixture(scope="module")
def remote(engine):
    with ServerThread(build_app(engine, ServerConfig(api_key=API_KEY))) as srv:
        be = sgl.RuntimeEndpoint(srv.url, api_key=API_KEY)
        yield be
        be.shutdown()


def greedy_oracle(engine, ids, max_new_tokens, **kw):
    return engine.generate(input_ids=[ids], sampling_params=SamplingParams(
        max_new_tokens=max_new_tokens, temperature=0.0, **kw))[0]


# ---- token-exact state ---------------------------------------------------------------------------
@sgl.function
def two_steps(s):
    s += FEW_SHOT + "Q: What is 3 plus 5?\nA:"
    s += sgl.gen("first", max_tokens=6, ignore_eos=True)
    s += "\nQ: And 4 plus 4?\nA:"
    s += sgl.gen("second", max_tokens=6, ignore_eos=True)


def test_each_call_continues_from_the_exact_tokens_and_hits_the_tree(engine, local):
    st = two_steps.run(backend=local, temperature=0)
    enc = local.encode
    p1 = enc(FEW_SHOT + "Q: What is 3 plus 5?\nA:")
    first = greedy_oracle(engine, p1, 6, ignore_eos=True)
    assert st["first"] == first.text
    p2 = p1 + first.token_ids + enc("\nQ: And 4 plus 4?\nA:")
    second = greedy_oracle(engine, p2, 6, ignore_eos=True)
    assert st["second"] == second.text
    assert st.token_ids() == p2 + second.token_ids  # the generated ids themselves, never re-tokenised
    assert st.text() == FEW_SHOT + "Q: What is 3 plus 5?\nA:" + first.text + "\nQ: And 4 plus 4?\nA:" + second.text
    m1, m2 = st.meta("first"), st.meta("second")
    assert set(m1) >= {"prompt_tokens", "cached_tokens", "completion_tokens", "finish_reason", "latency_s"}
    assert (m1["prompt_tokens"], m1["completion_tokens"], m1["finish_reason"]) == (len(p1), 6, "length")
    # everything the first call computed (its prompt and all its output but the last sampled token)
    assert m2["prompt_tokens"] == len(p2) and m2["cached_tokens"] >= len(p1) + 6 - 1


def test_constant_text_is_tokenised_once_as_appended(local):
    @sgl.function
    def pieces(s):
        s += "a"
        s += "b"
        s += "hello "
        s += "world"
    st = pieces.run(backend=local)
    enc = local.encode
    assert st.token_ids() == enc("a") + enc("b") + enc("hello ") + enc("world")
    assert st.token_ids() != enc("abhello world")  # the documented boundary rule: "a"+"b" is not "ab"
    assert st.text() == "abhello world"


def test_gen_value_excludes_the_stop_token_and_stop_string(engine, local):
    @sgl.function
    def stops(s):
        s += sgl.user("Say hi.")
        s += sgl.assistant(sgl.gen("cut", max_tokens=40, stop="ere to"))  # cuts a token in two
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant(sgl.gen("eos", max_tokens=40))
    st = stops.run(backend=local, temperature=0)
    p1 = engine.apply_chat_template([{"role": "user", "content": "Say hi."}])
    cut = greedy_oracle(engine, p1, 40, stop="ere to")
    assert cut.finish_reason == "stop" and st["cut"] == cut.text and "ere to" not in cut.text
    assert st.meta("eos")["finish_reason"] == "stop"  # the model's <|im_end|> (EOS)
    text = st.text()
    msgs = st.messages()
    # the EOS the model produced is not kept next to the role's own end marker
    assert text == engine.tokenizer.apply_chat_template(msgs, tokenize=False)
    assert local.decode(st.token_ids(), skip_special_tokens=False) == text
    # the model's own tokens up to the cut token stay; the call after them hits them in the tree
    assert st.token_ids()[len(p1):len(p1) + 2] == cut.token_ids[:2]
    assert st.meta("eos")["cached_tokens"] >= len(p1) + 2
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[1]["content"] == st["cut"] and msgs[3]["content"] == st["eos"]


# ---- roles ---------------------------------------------------------------------------------------
def test_roles_give_exactly_the_chat_templates_tokens(engine, local):
    @sgl.function
    def chat(s, system):
        if system:
            s += sgl.system("You are terse.")
        s += sgl.user("Name a colour.")
        s += sgl.assistant_begin()
        s += sgl.gen("colour", max_tokens=8)
        s += sgl.assistant_end()
    for system in (True, False):
        st = chat.run(system, backend=local, temperature=0)
        msgs = ([{"role": "system", "content": "You are terse."}] if system else []) + [
            {"role": "user", "content": "Name a colour."}]
        prompt = engine.apply_chat_template(msgs)  # SmolLM2's default system prompt when none is given
        assert st.token_ids()[:len(prompt)] == prompt
        assert st["colour"] == greedy_oracle(engine, prompt, 8).text
        full = msgs + [{"role": "assistant", "content": st["colour"]}]
        assert st.text() == engine.tokenizer.apply_chat_template(full, tokenize=False)


def test_with_role_blocks_and_nested_roles_rejected(local):
    @sgl.function
    def scoped(s):
        with s.user():
            s += "Hello"
        s.assistant("Hi!")
    assert scoped.run(backend=local).messages() == [{"role": "user", "content": "Hello"},
                                                    {"role": "assistant", "content": "Hi!"}]

    @sgl.function
    def nested(s):
        s += sgl.user_begin()
        s += sgl.assistant_begin()
    with pytest.raises(ValueError, match="inside an open user role"):
        nested.run(backend=local)


# ---- select --------------------------------------------------------------------------------------
WET = "Q: Is water wet?\nA:"
WET_CHOICES = [" Yes", " No", " Yes, it is", " It depends"]


def _oracle_scores(engine, prefix_ids, choice_ids, method):
    """Each choice on its own request, its prompt log-probs from Engine.generate, the method's
    formula written out here."""
    def prompt_lps(ids):
        out = engine.generate(input_ids=[ids], sampling_params=SamplingParams(max_new_tokens=0, prompt_logprobs_start=0))
        return [p.logprob for p in out[0].prompt_logprobs]  # positions 1..len-1
    cond = [prompt_lps(prefix_ids + c)[-len(c):] for c in choice_ids]
    first: dict[tuple, float] = {}  # a token after the same context has one log-prob, whichever request saw it
    cond = [[first.setdefault(tuple(c[:j + 1]), lp) for j, lp in enumerate(lps)] for c, lps in zip(choice_ids, cond)]
    if method == "token_length_normalized":
        scores = [sum(c) / len(c) for c in cond]
        return scores.index(max(scores)), scores
    if method == "unconditional_likelihood_normalized":
        uncond = [[0.0] + prompt_lps(c) for c in choice_ids]
        scores = [sum(a - b for a, b in zip(c, u)) / len(c) for c, u in zip(cond, uncond)]
        return scores.index(max(scores)), scores
    width = max(map(len, cond))
    rows = [c + [sum(c) / len(c)] * (width - len(c)) for c in cond]
    alive = list(range(len(rows)))
    for j in range(width):
        best = max(rows[i][j] for i in alive)
        alive = [i for i in alive if rows[i][j] == best]
    return alive[0], None


@pytest.mark.parametrize("method", ["token_length_normalized", "greedy_token_selection",
                                    "unconditional_likelihood_normalized"])
def test_select_picks_the_best_normalised_logprob(engine, local, method):
    @sgl.function
    def ask(s):
        s += WET
        s += sgl.select("c", choices=WET_CHOICES, choices_method=method)
    before = engine.stats()["generated_tokens"]
    st = ask.run(backend=local)
    assert engine.stats()["generated_tokens"] == before  # prompt log-probs only: no decode step
    prefix = local.encode(WET)
    choice_ids = [local.encode(c) for c in WET_CHOICES]
    best, scores = _oracle_scores(engine, prefix, choice_ids, method)
    assert st["c"] == WET_CHOICES[best]
    assert st.token_ids() == prefix + choice_ids[best]
    meta = st.meta("c")
    if scores is not None:
        assert meta["scores"] == pytest.approx(scores, abs=1e-3)
    assert meta["completion_tokens"] == 0 and meta["prefix_tokens"] == len(prefix)


def test_the_three_methods_disagree_on_the_water_question(local):
    """The case above discriminates: each method picks a different choice."""
    picks = set()
    for method in ("token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized"):
        @sgl.function
        def ask(s):
            s += WET + sgl.select("c", choices=WET_CHOICES, choices_method=method)
        picks.add(ask.run(backend=local)["c"])
    assert len(picks) == 3


class StepCounter(sgl.Backend):
    """Delegates to a LocalBackend; counts the engine steps each select's scoring took."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.tokenizer, self.steps = inner, inner.tokenizer, []

    def generate(self, input_ids, params, rid, on_chunk=None):
        return self.inner.generate(input_ids, params, rid, on_chunk)

    def score(self, requests, rid):
        before = self.inner.engine.scheduler.step_count
        out = self.inner.score(requests, rid)
        self.steps.append(self.inner.engine.scheduler.step_count - before)
        return out

    def abort(self, rid):
        self.inner.abort(rid)


def test_select_shares_the_prefix_and_scores_the_choices_together(engine, local):
    choices = [" yes", " no", " maybe", " never", " always", " sometimes"]

    @sgl.function
    def after_gen(s):
        s += FEW_SHOT + "Q: What is 6 plus 1?\nA:"
        s += sgl.gen("a", max_tokens=3, ignore_eos=True)
        s += sgl.select("sure", choices=choices)
    counter = StepCounter(local)
    st = after_gen.run(backend=counter, temperature=0)
    m = st.meta("sure")
    # every choice finds the whole prefix but its last token in the tree (that token's logits
    # score the choice's first token, so it is computed again), the gen's output included
    assert m["cached_tokens"] == len(choices) * (m["prefix_tokens"] - 1)
    # the choices are computed side by side: the steps do not grow with the number of choices
    # (2, not 1, when the idle engine starts a step before the last choice has arrived)
    assert counter.steps[0] <= 2


# ---- fork / run_batch / arun ---------------------------------------------------------------------
def test_fork_branches_report_the_shared_prefix_cached(engine, local):
    engine.flush_cache()

    @sgl.function
    def tree(s):
        s += FEW_SHOT + "Q: What is 12 plus 30?\nA: Let's think."
        forks = s.fork(3)
        forks += lambda i: f" Step {i + 1}:" + sgl.gen("step", max_tokens=5, ignore_eos=True)
        forks.join()
        return forks.prefill_meta, [f.token_ids() for f in forks]
    st = tree.run(backend=local, temperature=0)
    prefill, branch_ids = st.ret_value
    shared = len(local.encode(FEW_SHOT + "Q: What is 12 plus 30?\nA: Let's think."))
    assert prefill["prompt_tokens"] == shared and prefill["cached_tokens"] == 0
    metas = st.meta("step")
    assert len(st["step"]) == 3 and all(m["cached_tokens"] >= shared for m in metas)
    for i, ids in enumerate(branch_ids):  # each branch equals the engine on its own prompt
        prompt = ids[:metas[i]["prompt_tokens"]]
        assert st["step"][i] == greedy_oracle(engine, prompt, 5, ignore_eos=True).text


@sgl.function
def few_shot_qa(s, question):
    s += FEW_SHOT + "Q: " + question + "\nA:"
    s += sgl.gen("answer", max_tokens=6, stop="\n")


def test_run_batch_over_one_few_shot_prefix_reaches_the_optimal_hit_rate(engine, local):
    assert engine.flush_cache()
    states = few_shot_qa.run_batch([{"question": q} for q in QUESTIONS], backend=local, temperature=0,
                                   progress_bar=True)
    metas = [s.meta("answer") for s in states]
    prompts = [s.token_ids()[:m["prompt_tokens"]] for s, m in zip(states, metas)]
    achieved = sum(m["cached_tokens"] for m in metas) / sum(m["prompt_tokens"] for m in metas)
    optimal = optimal_hit_rate(prompts)
    assert optimal > 0.8 and achieved >= 0.95 * optimal, (achieved, optimal)
    for s, q in zip(states[:3], QUESTIONS):
        assert s["answer"] == greedy_oracle(engine, local.encode(FEW_SHOT + "Q: " + q + "\nA:"), 6, stop="\n").text


def test_arun_under_asyncio_gather_of_8_programs(local):
    async def main():
        return await asyncio.gather(*(few_shot_qa.arun(question=q, backend=local, temperature=0)
                                      for q in QUESTIONS[:8]))
    states = asyncio.run(main())
    expected = few_shot_qa.run_batch([{"question": q} for q in QUESTIONS[:8]], backend=local, temperature=0)
    assert [s["answer"] for s in states] == [s["answer"] for s in expected]
    assert all(s.meta("answer")["finish_reason"] in ("stop", "length") for s in states)


def test_default_backend_and_program_defaults(local):
    @sgl.function
    def prog(s, temperature):  # the program's own parameter, not a sampling default
        s += f"Temperature {temperature}:"
        s += sgl.gen("x", max_tokens=2, ignore_eos=True)
    sgl.set_default_backend(local)
    try:
        st = prog.run(temperature="hot", max_new_tokens=50)
    finally:
        sgl.set_default_backend(None)
    assert st.text().startswith("Temperature hot:") and st.meta("x")["completion_tokens"] == 2
    with pytest.raises(ValueError, match="no backend"):
        prog.run(temperature="cold")


# ---- streaming -----------------------------------------------------------------------------------
@sgl.function
def chatty(s, topic):
    s += sgl.user(f"Write one sentence about {topic}.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=24))


@pytest.mark.parametrize("which", ["local", "remote"])
def test_streaming_joins_to_the_final_value(request, which):
    be = request.getfixturevalue(which)
    st = chatty.run(topic="rivers", backend=be, temperature=0, stream=True)
    pieces = list(st.text_iter("answer"))
    assert len(pieces) > 3 and "".join(pieces) == st["answer"]
    st2 = chatty.run(topic="rivers", backend=be, temperature=0, stream=True)
    assert "".join(st2.text_iter()) == st2.text() and st2["answer"] == st["answer"]


# ---- LocalBackend vs RuntimeEndpoint -------------------------------------------------------------
@sgl.function
def everything(s, question):
    s += sgl.system("You answer in one short sentence.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16, stop="."))
    forks = s.fork(2)
    forks += [sgl.user("Give one reason.") + sgl.assistant(sgl.gen("reason", max_tokens=8)),
              sgl.user("Give one example.") + sgl.assistant(sgl.gen("example", max_tokens=8))]
    s += sgl.user("Is your answer correct?")
    s += sgl.assistant(sgl.select("sure", choices=["Yes", "No", "I am not sure"],
                                  choices_method="unconditional_likelihood_normalized"))
    return [f.token_ids() for f in forks]


def test_local_and_remote_agree_token_for_token(local, remote):
    a = everything.run(question="Which planet is largest?", backend=local, temperature=0)
    b = everything.run(question="Which planet is largest?", backend=remote, temperature=0)
    assert a.token_ids() == b.token_ids() and a.text() == b.text()
    assert a.ret_value == b.ret_value  # the branches too
    assert a["answer"] == b["answer"] and a["sure"] == b["sure"]
    assert a.meta("sure")["scores"] == pytest.approx(b.meta("sure")["scores"], abs=1e-3)
    assert b.meta("answer")["prompt_tokens"] == a.meta("answer")["prompt_tokens"]


def test_endpoint_rejects_a_tokenizer_that_differs(remote):
    class Shifted:
        chat_template = None

        def encode(self, text, add_special_tokens=True):
            return [t + 1 for t in remote.tokenizer.encode(text, add_special_tokens=add_special_tokens)]
    with pytest.raises(ValueError, match="does not tokenise like the server"):
        sgl.RuntimeEndpoint(remote.base_url, api_key=API_KEY, tokenizer=Shifted())
    with pytest.raises(ValueError, match="no radixserve server answers"):
        sgl.RuntimeEndpoint("http://127.0.0.1:9", api_key=API_KEY)


# ---- errors --------------------------------------------------------------------------------------
def test_a_failing_call_is_named_and_frees_everything(engine, local, remote):
    @sgl.function
    def too_long(s):
        s += "Once upon a time"
        forks = s.fork(2)
        forks[0] += sgl.gen("story", max_tokens=1500, ignore_eos=True)
        forks[1] += " and then" * 1200
        forks[1] += sgl.gen("overflow", max_tokens=4)  # the prompt is past the 2048-token context
    for be in (local, remote):
        t0 = time.monotonic()
        with pytest.raises(sgl.ProgramError) as info:
            too_long.run(backend=be)
        msg = str(info.value)
        assert "gen('overflow') in too_long (test_lang.py:" in msg and "context" in msg
        assert time.monotonic() - t0 < 60  # the 1500-token story was aborted, not finished
        assert_no_leak(engine)


def test_an_exception_in_the_program_aborts_its_requests(engine, local):
    @sgl.function
    def doomed(s):
        s += "Count: 1, 2, 3,"
        forks = s.fork(2)
        forks += sgl.gen("n", max_tokens=1500, ignore_eos=True)
        time.sleep(0.5)
        raise RuntimeError("the program gave up")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="the program gave up"):
        doomed.run(backend=local)
    assert time.monotonic() - t0 < 60
    assert_no_leak(engine)


def test_bad_calls_raise_value_error_at_the_line(local):
    @sgl.function
    def reuse(s):
        s += "Hi" + sgl.gen("x", max_tokens=1)
        s += sgl.gen("x", max_tokens=1)
    with pytest.raises(ValueError, match="the name 'x' is already used"):
        reuse.run(backend=local)

    @sgl.function
    def empty(s):
        s += sgl.select("x", choices=["a", "b"])
    with pytest.raises(ValueError, match="needs text before it"):
        empty.run(backend=local)
    with pytest.raises(TypeError):
        few_shot_qa.run(backend=local, nonsense=1)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        few_shot_qa.run(question="q", backend=local, temperature=-2.0)
    with pytest.raises(ValueError, match="fork.*n >= 1"):
        @sgl.function
        def bad_fork(s):
            s += "x"
            s.fork(0)
        bad_fork.run(backend=local)


def test_run_batch_returns_or_raises_failures(local):
    @sgl.function
    def maybe(s, n):
        s += "Number:"
        if n == 2:
            raise KeyError("two")
        s += sgl.gen("x", max_tokens=1)
    results = maybe.run_batch([{"n": i} for i in range(4)], backend=local, return_exceptions=True)
    assert isinstance(results[2], KeyError) and all(isinstance(results[i], sgl.ProgramState) for i in (0, 1, 3))
    with pytest.raises(KeyError, match="two"):
        maybe.run_batch([{"n": i} for i in range(4)], backend=local)
