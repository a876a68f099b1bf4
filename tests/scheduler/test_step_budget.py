"""The step cost model and the per-step prefill budget, against brute-force references."""
from __future__ import annotations

import random

import pytest
import torch

from radixserve.models.dummy import dummy_config
from radixserve.models.loader import load_model
from radixserve.scheduler.step_budget import StepBudget, StepTimer, step_budget
from radixserve.scheduler.step_cost import (NO_WORK, CostCoefficients, ModelShape, StepCostModel, StepWork,
                                            batch_work, chunk_work, for_model, prior_coefficients)

COEF = CostCoefficients(step_ms=5.0, token_ms=0.03, pair_ms=1.2e-6, logit_ms=0.002)


def test_chunk_work_counts_every_causal_pair():
    for start, n in [(0, 1), (0, 7), (5, 1), (13, 9), (100, 33)]:
        brute = sum(1 for i in range(start, start + n) for _ in range(i + 1))  # token i attends to keys 0..i
        assert chunk_work(start, n) == StepWork(n, brute, 0)
    assert batch_work([(3, 4, True), (10, 1, True)]) == chunk_work(3, 4, True).plus(chunk_work(10, 1, True))
    assert batch_work([]) == NO_WORK


def test_shape_flops_match_the_loaded_model():
    """Dense FLOPs per token = 2 x the decoder layers' matrix weights, counted on the real module."""
    loaded = load_model("dummy:tiny-qwen3", torch.float32, "cpu")
    shape = ModelShape.from_hf_config(loaded.config, torch.float32)
    weights = sum(p.numel() for name, p in loaded.model.layers.named_parameters() if p.dim() == 2)
    assert shape.dense_flops_per_token == 2 * weights
    cfg = loaded.config
    assert shape.attention_flops_per_pair == 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
    assert shape.weight_bytes == 4 * weights


def test_h100_prior_reproduces_the_measured_steps():
    """benchmarks/results/gpu_runtime_h100_*: Llama-3.1-8B bf16, fresh 2048-token chunk 57 ms, 2048 tokens after
    a 100k prefix 323 ms, batch-32 decode 7.8 ms. The prior built from the shape is within 25% of each."""
    m = for_model(dummy_config("llama-3.1-8b"), torch.bfloat16, "cuda", online=False)
    for work, measured in [(chunk_work(0, 2048, True), 57.0), (chunk_work(100_000, 2048, True), 323.0),
                           (batch_work([(512, 1, True)] * 32), 7.8)]:
        assert abs(m.predict_ms(work) / measured - 1) < 0.25, (work, m.predict_ms(work), measured)
    with pytest.raises(ValueError, match="no step-cost rates"):
        prior_coefficients(ModelShape.from_hf_config(dummy_config("tiny-llama"), torch.float32), "mps")


def test_max_chunk_is_the_largest_chunk_that_fits():
    m = StepCostModel(COEF, online=False)
    rng = random.Random(0)
    for _ in range(200):
        start, limit, budget = rng.randrange(0, 200_000), rng.randrange(0, 3000), rng.uniform(-5, 400)
        samples = rng.random() < 0.5
        brute = max((n for n in range(limit + 1) if n == 0 or m.work_ms(chunk_work(start, n, samples)) <= budget),
                    default=0)
        assert m.max_chunk(start, limit, budget, samples) == brute, (start, limit, budget)
    # deeper in a long prompt, the same time buys fewer tokens
    assert m.max_chunk(0, 4096, 50) > m.max_chunk(50_000, 4096, 50) > m.max_chunk(100_000, 4096, 50) > 0


def test_online_fit_converges_to_the_true_costs():
    true = CostCoefficients(step_ms=9.0, token_ms=0.05, pair_ms=0.6e-6, logit_ms=0.004)
    m = StepCostModel(COEF, online=True)
    rng = random.Random(1)

    def batch():
        return batch_work([(rng.randrange(0, 100_000), rng.choice([1, 1, 64, 512, 2048]), True)
                           for _ in range(rng.randrange(1, 8))])

    def true_ms(w):
        return true.step_ms + true.token_ms * w.tokens + true.pair_ms * w.pairs + true.logit_ms * w.logit_rows

    held_out = [batch() for _ in range(200)]
    before = max(abs(m.predict_ms(w) / true_ms(w) - 1) for w in held_out)
    for _ in range(400):
        w = batch()
        m.observe(w, true_ms(w) * rng.uniform(0.97, 1.03))
    after = [abs(m.predict_ms(w) / true_ms(w) - 1) for w in held_out]
    assert before > 0.4 and max(after) < 0.1 and sum(after) / len(after) < 0.05, (before, max(after))
    assert m.observations == 400
    # an offline model keeps its prior; nonsense measurements are ignored
    fixed = StepCostModel(COEF, online=False)
    fixed.observe(chunk_work(0, 100), 1e6)
    m2 = StepCostModel(COEF)
    m2.observe(chunk_work(0, 100), float("nan"))
    m2.observe(chunk_work(0, 100), -1.0)
    assert fixed.coefficients == COEF and m2.coefficients == COEF and m2.observations == 0


def test_online_fit_keeps_unexercised_terms_at_the_prior():
    """Short prompts only: attention pairs barely vary, so pair_ms must not drift far from the prior."""
    m = StepCostModel(COEF)
    for i in range(300):
        w = batch_work([(100, 1, True)] * (1 + i % 32))
        m.observe(w, 2 * (COEF.step_ms + COEF.token_ms * w.tokens))  # the device is twice as slow
    assert abs(m.coefficients.pair_ms / COEF.pair_ms - 1) < 0.5
    assert m.predict_ms(batch_work([(100, 1, True)] * 16)) == pytest.approx(2 * (5.0 + 0.03 * 16), rel=0.1)


def test_step_timer_times_overlapped_and_sequential_steps():
    seen = []

    class Recorder(StepCostModel):
        def observe(self, w, ms, steps=1):
            seen.append((w, round(ms, 6), steps))

    now = [0.0]
    timer = StepTimer(Recorder(COEF), lambda: now[0])
    a, b, c, d = object(), object(), object(), object()
    wa, wb, wc, wd = chunk_work(0, 8), chunk_work(8, 4), StepWork(1, 13, 1), StepWork(2, 30, 2)
    # overlap: b launched before a's samples are awaited
    timer.launched(a, wa, 0.000)
    timer.launched(b, wb, 0.001)
    now[0] = 0.010
    timer.completed(a, synced=True)  # a: 0 -> 10 ms
    now[0] = 0.018
    timer.completed(b, synced=True)  # b: from a's end, 8 ms
    # sequential after idle: c samples nothing (not awaited), d awaited: both timed together
    timer.launched(c, wc, 1.000)
    now[0] = 1.004
    timer.completed(c, synced=False)
    timer.launched(d, wd, 1.005)
    now[0] = 1.012
    timer.completed(d, synced=True)
    timer.completed(object(), synced=True)  # unknown step: ignored
    assert seen == [(wa, 10.0, 1), (wb, 8.0, 1), (wc.plus(wd), 12.0, 2)]


def test_budget_grants_within_time_with_one_floor_chunk():
    m = StepCostModel(COEF, online=False)
    assert not StepBudget(100).limited and StepBudget(100).grant(0, 500) == 100
    unlimited = step_budget(8192, 50.0, m, NO_WORK, 2048)  # nothing decodes: full chunks
    assert not unlimited.limited and unlimited.grant(90_000, 2048) == 2048
    decode = batch_work([(300, 1, True)] * 8)
    b = step_budget(8192, 50.0, m, decode, 2048)
    assert b.ms == pytest.approx(50.0 - m.predict_ms(decode))
    n = b.grant(90_000, 2048, floor=True)
    assert n == m.max_chunk(90_000, 2048, b.ms) and 0 < n < 2048
    b.take(90_000, n, floor=True)
    assert 0 <= b.ms < m.work_ms(chunk_work(90_000 + n, 1)) and b.grant(90_000 + n, 2048) == 0
    # used up by the decode rows: the first chunked prefill still moves by the floor, once
    tight = step_budget(8192, 1.0, m, decode, 2048)
    assert tight.ms == 0 and not tight.exhausted
    assert tight.grant(0, 10) == 0 and tight.grant(0, 2048, floor=True) == 2048 // 16
    tight.take(0, 128, floor=True)
    assert tight.exhausted and tight.grant(0, 2048, floor=True) == 0
    # time held back from whole-prompt admission
    h = step_budget(8192, 50.0, m, decode, 2048)
    full = h.grant(0, 2048)
    h.hold_ms = h.ms / 2
    assert h.grant(0, 2048) < full


def test_cut_chunks_are_whole_multiples_of_the_device_alignment():
    """On CUDA the long-prompt attention pads a chunk's queries to a multiple of 512: a cut chunk is cut
    to such a multiple; uncut chunks (the whole rest of a prompt) and small ones keep their size."""
    m = for_model(dummy_config("llama-3.1-8b"), torch.bfloat16, "cuda", online=False)
    assert m.chunk_align == 512
    decode = batch_work([(300, 1, True)] * 32)
    for start in (0, 20_000, 60_000, 99_000):
        for budget_ms in (30.0, 60.0, 100.0, 150.0):
            b = step_budget(8192, budget_ms, m, decode, 2048)
            fit = m.max_chunk(start, 2048, b.ms)
            n = b.grant(start, 2048)
            assert n == (fit if fit <= 512 or fit == 2048 else fit - fit % 512), (start, budget_ms, fit, n)
    b = step_budget(8192, 1000.0, m, decode, 2048)
    assert b.grant(0, 700) == 700  # the whole rest of a prompt fits: not cut


@pytest.mark.parametrize("name", ["tiny-mixtral", "tiny-qwen3-moe"])
def test_moe_shape_counts_active_flops_and_all_expert_bytes(name):
    """A token computes its top-k experts; a step reads every expert's weights (and the routers')."""
    loaded = load_model(f"dummy:{name}", torch.float32, "cpu", with_tokenizer=False)
    shape = ModelShape.from_hf_config(loaded.config, torch.float32)
    stored = sum(p.numel() for name_, p in loaded.model.layers.named_parameters()
                 if p.dim() >= 2 and not name_.endswith("gate.weight"))  # the routers' E x hidden: not counted
    assert shape.weight_bytes == 4 * stored
    moe = loaded.model.layers[0].mlp
    dense_per_layer = sum(p.numel() for n, p in loaded.model.layers[0].named_parameters() if "self_attn" in n
                          and p.dim() == 2)
    per_token_mlp = moe.top_k * 3 * moe.hidden * moe.intermediate
    assert shape.dense_flops_per_token == 2 * loaded.config.num_hidden_layers * (dense_per_layer + per_token_mlp)
