"""Sampler and logprobs against brute-force per-row references written here (stops: test_stop.py)."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from radixserve.sampling import (SamplingRow, build_sampling_tensors, processed_probs, prompt_logprobs, sample,
                                 to_token_logprobs)
from radixserve.sampling.noise import gumbel_noise, mix32, uniform_noise
from radixserve.sampling_params import SamplingParams

V = 40
EOS = [2]


# ---------------------------------------------------------------- brute-force reference


def ref_penalized(logits: list[float], p: SamplingParams, prompt: list[int], out: list[int],
                  eos: list[int], mask: list[bool] | None) -> list[float]:
    x = list(logits)
    for tok in set(prompt) | set(out):
        if p.repetition_penalty != 1.0:
            x[tok] = x[tok] / p.repetition_penalty if x[tok] > 0 else x[tok] * p.repetition_penalty
    for tok, c in Counter(out).items():
        x[tok] -= p.frequency_penalty * c + p.presence_penalty
    blocked = set()
    if len(out) < p.min_new_tokens:
        blocked |= set(eos) | set(p.stop_token_ids)
    if p.ignore_eos:
        blocked |= set(eos)
    for tok in range(len(x)):
        if tok in blocked or (mask is not None and not mask[tok]):
            x[tok] = -math.inf
    return x


def ref_probs(logits: list[float], p: SamplingParams, prompt: list[int], out: list[int],
              eos: list[int], mask: list[bool] | None) -> list[float]:
    x = ref_penalized(logits, p, prompt, out, eos, mask)
    n = len(x)
    if p.temperature == 0 or p.top_k == 1:
        best = max(range(n), key=lambda i: (x[i], -i))
        return [1.0 if i == best else 0.0 for i in range(n)]
    x = [v / p.temperature for v in x]
    order = sorted(range(n), key=lambda i: (-x[i], i))
    k = n if p.top_k <= 0 else min(p.top_k, n)
    kept = order[:k]
    m = max(x[i] for i in kept)
    z = sum(math.exp(x[i] - m) for i in kept)
    prob = {i: math.exp(x[i] - m) / z for i in kept}
    nucleus, mass = [], 0.0
    for i in kept:
        if mass >= p.top_p:
            break
        nucleus.append(i)
        mass += prob[i]
    pmax = prob[kept[0]]
    final = [i for i in nucleus if prob[i] >= p.min_p * pmax]
    z2 = sum(math.exp(x[i] - m) for i in final)
    return [math.exp(x[i] - m) / z2 if i in final else 0.0 for i in range(n)]


def random_params(rng: random.Random) -> SamplingParams:
    mn = rng.choice([0, 0, 2])
    return SamplingParams(
        temperature=rng.choice([0.0, 0.5, 1.0, 1.7]), top_k=rng.choice([-1, 0, 1, 3, 10, 100]),
        top_p=rng.choice([1.0, 0.9, 0.5, 0.1]), min_p=rng.choice([0.0, 0.05, 0.3]),
        repetition_penalty=rng.choice([1.0, 1.3, 0.8]), presence_penalty=rng.choice([0.0, 0.5, -0.7]),
        frequency_penalty=rng.choice([0.0, 0.3, -0.2]), min_new_tokens=mn, max_new_tokens=mn + 5,
        stop_token_ids=rng.choice([[], [5, 7]]), ignore_eos=rng.random() < 0.2, logprobs=rng.choice([None, 0, 3]))


def random_rows(rng: random.Random, b: int, with_masks: bool = True):
    rows = []
    for i in range(b):
        mask = None
        if with_masks and rng.random() < 0.3:
            allowed = rng.sample(range(V), rng.randint(3, V))
            mask = torch.zeros(V, dtype=torch.bool)
            mask[allowed] = True
        rows.append(SamplingRow(random_params(rng), seed=rng.randrange(2**40), step=rng.randrange(5),
                                prompt_ids=[rng.randrange(V) for _ in range(rng.randint(1, 6))],
                                output_ids=[rng.randrange(V) for _ in range(rng.randint(0, 4))],
                                eos_ids=EOS, vocab_mask=mask))
    return rows


def ref_row_probs(logits: torch.Tensor, r: SamplingRow) -> list[float]:
    mask = r.vocab_mask.tolist() if r.vocab_mask is not None else None
    return ref_probs(logits.double().tolist(), r.params, list(r.prompt_ids), list(r.output_ids), r.eos_ids, mask)


# ---------------------------------------------------------------- distribution


@pytest.mark.parametrize("trial", range(12))
def test_processed_probs_match_bruteforce(trial: int) -> None:
    rng = random.Random(trial)
    rows = random_rows(rng, 8)
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(trial)) * 3
    t = build_sampling_tensors(rows, V)
    got = processed_probs(logits, t)
    for b, r in enumerate(rows):
        want = torch.tensor(ref_row_probs(logits[b], r), dtype=torch.float32)
        torch.testing.assert_close(got[b], want, atol=2e-6, rtol=1e-4, msg=f"row {b} params {r.params}")


def test_greedy_rows_take_argmax_of_penalized_logits() -> None:
    rng = random.Random(99)
    rows = [r._replace(params=SamplingParams(temperature=0.0, repetition_penalty=1.5, presence_penalty=0.4,
                                             frequency_penalty=0.2, min_new_tokens=r.params.min_new_tokens,
                                             max_new_tokens=10, stop_token_ids=r.params.stop_token_ids))
            for r in random_rows(rng, 16)]
    logits = torch.randn(16, V, generator=torch.Generator().manual_seed(5))
    res = sample(logits, build_sampling_tensors(rows, V))
    for b, r in enumerate(rows):
        mask = r.vocab_mask.tolist() if r.vocab_mask is not None else None
        x = ref_penalized(logits[b].double().tolist(), r.params, list(r.prompt_ids), list(r.output_ids), EOS, mask)
        assert int(res.token_ids[b]) == max(range(V), key=lambda i: (x[i], -i))


def test_sampled_tokens_are_in_support_and_vocab_mask_honoured() -> None:
    rng = random.Random(3)
    rows = random_rows(rng, 64)
    logits = torch.randn(64, V, generator=torch.Generator().manual_seed(3)) * 2
    for step in range(5):
        rows = [r._replace(step=step) for r in rows]
        t = build_sampling_tensors(rows, V)
        res = sample(logits, t)
        probs = processed_probs(logits, t)
        for b, r in enumerate(rows):
            tok = int(res.token_ids[b])
            assert probs[b, tok] > 0, f"row {b} sampled token {tok} outside its filtered support"
            if r.vocab_mask is not None:
                assert r.vocab_mask[tok]


def chi_square(counts: Counter, probs: list[float], n: int) -> tuple[float, int]:
    stat, df = 0.0, -1
    for i, p in enumerate(probs):
        if p == 0:
            assert counts[i] == 0, f"token {i} with probability 0 was sampled"
            continue
        stat += (counts[i] - n * p) ** 2 / (n * p)
        df += 1
    return stat, df


# 99.9% quantiles of chi-square with df degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 9: 27.88}


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=5),
                                    SamplingParams(top_p=0.8, min_p=0.05, temperature=1.3)])
def test_empirical_frequencies_match_probabilities_over_seeds(params: SamplingParams) -> None:
    n, vocab = 6000, 10
    logits_row = torch.tensor([1.0, 0.5, 0.2, 0.0, -0.3, -0.5, -1.0, -1.5, -2.0, 0.8])
    rows = [SamplingRow(params, seed=s, step=0, prompt_ids=[], output_ids=[], eos_ids=[]) for s in range(n)]
    t = build_sampling_tensors(rows, vocab)
    res = sample(logits_row.expand(n, vocab), t)
    want = ref_probs(logits_row.double().tolist(), params, [], [], [], None)
    stat, df = chi_square(Counter(res.token_ids.tolist()), want, n)
    assert stat < CHI2_999[df], (stat, df)


def test_empirical_frequencies_match_over_steps_of_one_seed() -> None:
    n, vocab = 6000, 6
    logits_row = torch.tensor([0.3, 1.2, -0.4, 0.0, 0.9, -2.0])
    rows = [SamplingRow(SamplingParams(), seed=1234, step=s, prompt_ids=[], output_ids=[], eos_ids=[])
            for s in range(n)]
    res = sample(logits_row.expand(n, vocab), build_sampling_tensors(rows, vocab))
    want = torch.softmax(logits_row.double(), -1).tolist()
    stat, df = chi_square(Counter(res.token_ids.tolist()), want, n)
    assert stat < CHI2_999[df], (stat, df)


# ---------------------------------------------------------------- reproducibility


def test_seeded_sampling_independent_of_batch_composition_and_order() -> None:
    rng = random.Random(11)
    rows = random_rows(rng, 8)
    rows = [r._replace(params=SamplingParams(temperature=1.5, top_p=0.95, min_new_tokens=0,
                                             repetition_penalty=r.params.repetition_penalty)) for r in rows]
    logits = torch.randn(8, V, generator=torch.Generator().manual_seed(11)) * 2
    alone = [int(sample(logits[b:b + 1], build_sampling_tensors([rows[b]], V)).token_ids[0]) for b in range(8)]
    perm = list(range(8))
    rng.shuffle(perm)
    batched = sample(logits[perm], build_sampling_tensors([rows[i] for i in perm], V)).token_ids.tolist()
    assert [alone[i] for i in perm] == batched
    again = sample(logits[perm], build_sampling_tensors([rows[i] for i in perm], V)).token_ids.tolist()
    assert again == batched
    # a different seed gives a different draw for at least one row (not a constant sampler)
    other = [r._replace(seed=r.seed + 1) for r in rows]
    assert sample(logits, build_sampling_tensors(other, V)).token_ids.tolist() != alone


def test_mix32_matches_python_lowbias32() -> None:
    def lowbias32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    rng = random.Random(0)
    xs = [0, 1, 0xFFFFFFFF, 0x80000000] + [rng.randrange(2**32) for _ in range(2000)]
    assert mix32(torch.tensor(xs, dtype=torch.int64)).tolist() == [lowbias32(x) for x in xs]


def test_uniform_noise_range_and_any_int_seed() -> None:
    seeds = torch.tensor([0, -1, 2**63 - 1, -(2**63)], dtype=torch.int64)
    u = uniform_noise(seeds, torch.zeros(4, dtype=torch.int64), 1000)
    assert bool((u > 0).all()) and bool((u < 1).all())
    assert abs(float(u.mean()) - 0.5) < 0.02
    assert len({tuple(r) for r in u.tolist()}) == 4  # different seeds, different streams
    # seeds outside int64 keep their low 64 bits (so -1 and 2**64 - 1 are the same stream)
    row = lambda s: SamplingRow(SamplingParams(), seed=s, step=0, prompt_ids=[], output_ids=[], eos_ids=[])
    t = build_sampling_tensors([row(2**64 - 1), row(-1), row(2**70 + 5)], 8)
    assert t.seeds.tolist() == [-1, -1, 5]



def test_noise_never_reaches_one() -> None:
    """Regression: the largest 24-bit draw rounded to exactly 1.0 in float32, so its Gumbel noise was
    +inf and that token won whatever its probability, even when masked (-inf + inf = NaN, which
    argmax picks). About 0.3% of sampled steps over a 49k vocabulary hit it."""
    seeds, steps = torch.tensor([11]), torch.tensor([21])  # a draw that used to be 1.0 (token 45720)
    u = uniform_noise(seeds, steps, 49152)
    assert float(u.max()) < 1.0 and float(u.min()) > 0.0
    assert torch.isfinite(gumbel_noise(seeds, steps, 49152)).all()
    h_max = torch.tensor([2**32 - 1], dtype=torch.int64)
    assert float(((h_max >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))) == 1.0  # why the clamp is there


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax_and_top_sorted() -> None:
    rng = random.Random(21)
    rows = [r._replace(params=SamplingParams(temperature=0.6, repetition_penalty=1.4, logprobs=4))
            for r in random_rows(rng, 6, with_masks=False)]
    rows[0] = rows[0]._replace(params=SamplingParams(logprobs=0))
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(21))
    t = build_sampling_tensors(rows, V)
    assert t.want_logprobs and t.top_logprobs_k == 4
    res = sample(logits, t)
    for b in range(6):
        row = logits[b].double()
        lse = math.log(sum(math.exp(v) for v in row.tolist()))
        tok = int(res.token_ids[b])
        assert float(res.logprobs[b]) == pytest.approx(row[tok].item() - lse, abs=1e-5)
        want_top = sorted(range(V), key=lambda i: -row[i].item())[:4]
        assert res.top_ids[b].tolist() == want_top
        assert res.top_logprobs[b].tolist() == pytest.approx([row[i].item() - lse for i in want_top], abs=1e-5)
    out = to_token_logprobs(res.token_ids, res.logprobs, res.top_ids, res.top_logprobs, ks=[0, 4, 4, 2, 4, 4])
    assert out[0].top == [] and len(out[1].top) == 4 and len(out[3].top) == 2
    assert out[3].top[0] == (int(res.top_ids[3, 0]), pytest.approx(float(res.top_logprobs[3, 0])))
    assert out[2].token_id == int(res.token_ids[2])


def test_no_logprobs_when_not_asked() -> None:
    rows = [SamplingRow(SamplingParams(), 0, 0, [], [], [])]
    assert sample(torch.randn(1, V), build_sampling_tensors(rows, V)).logprobs is None


def test_prompt_logprobs() -> None:
    logits = torch.randn(7, V, generator=torch.Generator().manual_seed(8))
    nxt = torch.tensor([3, 0, 39, 5, 5, 12, 1])
    lps, top_ids, top_lps = prompt_logprobs(logits, nxt, 3)
    for n in range(7):
        row = logits[n].double().tolist()
        lse = math.log(sum(math.exp(v) for v in row))
        assert float(lps[n]) == pytest.approx(row[int(nxt[n])] - lse, abs=1e-5)
        assert top_ids[n].tolist() == sorted(range(V), key=lambda i: -row[i])[:3]
    with pytest.raises(ValueError):
        prompt_logprobs(logits, nxt[:3], 2)


# ---------------------------------------------------------------- blocks and validation


def test_min_new_tokens_blocks_eos_and_stop_ids_then_allows_them() -> None:
    logits = torch.full((1, V), -5.0)
    logits[0, EOS[0]] = 10.0
    logits[0, 7] = 9.0
    logits[0, 11] = 1.0
    p = SamplingParams(min_new_tokens=3, max_new_tokens=10, stop_token_ids=[7])
    for temp in (0.0, 1.0):
        params = SamplingParams(**{**p.__dict__, "temperature": temp})
        for out_len in range(3):
            rows = [SamplingRow(params, s, out_len, [1], [11] * out_len, EOS) for s in range(50)]
            toks = set(sample(logits.expand(50, V), build_sampling_tensors(rows, V)).token_ids.tolist())
            assert not toks & {EOS[0], 7}
        rows = [SamplingRow(params, 0, 3, [1], [11] * 3, EOS)]
        assert sample(logits, build_sampling_tensors(rows, V)).token_ids.tolist() == [EOS[0]]
    ignore = SamplingParams(temperature=0.0, ignore_eos=True)
    assert sample(logits, build_sampling_tensors([SamplingRow(ignore, 0, 9, [], [11] * 9, EOS)], V)).token_ids.tolist() == [7]


def test_build_rejects_out_of_vocab_ids_and_bad_masks() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        build_sampling_tensors([SamplingRow(SamplingParams(repetition_penalty=1.2), 0, 0, [V], [], [])], V)
    with pytest.raises(ValueError, match="vocab_mask"):
        build_sampling_tensors([SamplingRow(SamplingParams(), 0, 0, [], [], [], torch.ones(V - 1, dtype=torch.bool))], V)


def test_unused_features_build_no_vocab_tensors() -> None:
    t = build_sampling_tensors([SamplingRow(SamplingParams(temperature=0), 0, 0, [1, 2], [3], EOS)], V)
    assert t.seen_mask is None and t.token_counts is None and t.vocab_mask is None and t.min_tokens_block is None
    assert t.all_greedy and not t.need_filter and not t.want_logprobs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_equal_cpu_draws() -> None:
    seeds = torch.tensor([0, -1, 2**63 - 1, 12345], dtype=torch.int64)
    steps = torch.tensor([0, 7, 3, 100000], dtype=torch.int64)
    cpu = uniform_noise(seeds, steps, 49152)
    gpu = uniform_noise(seeds.cuda(), steps.cuda(), 49152).cpu()
    assert torch.equal(cpu, gpu)
    rng = random.Random(4)
    rows = random_rows(rng, 32)
    logits = torch.randn(32, V, generator=torch.Generator().manual_seed(4)) * 3
    want = sample(logits, build_sampling_tensors(rows, V)).token_ids
    got = sample(logits.cuda(), build_sampling_tensors(rows, V, "cuda")).token_ids.cpu()
    assert torch.equal(want, got)


def test_logit_bias_is_added_after_penalties_and_before_masks() -> None:
    """Brute force: the reference penalised logits plus each row's bias, then the usual pipeline."""
    from radixserve.sampling.tensors import greedy_blocked_ids, logit_bias_row

    rng = random.Random(17)
    rows = random_rows(rng, 12)
    biases = [None if b % 3 == 0 else {rng.randrange(V): rng.uniform(-100, 100) for _ in range(rng.randrange(1, 6))}
              for b in range(12)]
    rows = [r._replace(params=SamplingParams(**{**r.params.__dict__, "logit_bias": bias}),
                       logit_bias=logit_bias_row(bias, V, "cpu") if bias else None) for r, bias in zip(rows, biases)]
    logits = torch.randn(12, V, generator=torch.Generator().manual_seed(17)) * 3
    t = build_sampling_tensors(rows, V)
    got = processed_probs(logits, t)
    for b, (r, bias) in enumerate(zip(rows, biases)):
        mask = r.vocab_mask.tolist() if r.vocab_mask is not None else None
        params = SamplingParams(**{**r.params.__dict__, "logit_bias": None})
        x = ref_penalized(logits[b].double().tolist(), params, list(r.prompt_ids), list(r.output_ids), EOS, None)
        for tok, v in (bias or {}).items():
            x[tok] += v
        # the reference with biased "raw" logits and no penalties (already applied) gives the distribution
        plain = SamplingParams(**{**params.__dict__, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                                  "frequency_penalty": 0.0})
        want = ref_probs(x, plain, [], list(r.output_ids), EOS, mask)
        torch.testing.assert_close(got[b], torch.tensor(want, dtype=torch.float32), atol=2e-6, rtol=1e-4,
                                   msg=f"row {b} bias {bias}")
    assert all(greedy_blocked_ids(r, V) is None for r, bias in zip(rows, biases) if bias)
    # logprobs stay those of the raw logits
    res = sample(logits, t)
    if res.logprobs is not None:
        raw = torch.log_softmax(logits, -1).gather(1, res.token_ids[:, None]).squeeze(1)
        torch.testing.assert_close(res.logprobs, raw)


def test_logit_bias_rows_need_their_device_tensor() -> None:
    from radixserve.sampling.tensors import logit_bias_row

    row = SamplingRow(SamplingParams(logit_bias={3: 5.0}), 0, 0, [1], [], EOS)
    with pytest.raises(ValueError, match="logit_bias_row"):
        build_sampling_tensors([row], V)
    with pytest.raises(ValueError, match="vocabulary"):
        logit_bias_row({V: 1.0}, V, "cpu")
    t = build_sampling_tensors([row._replace(logit_bias=logit_bias_row({3: 5.0}, V, "cpu")),
                                SamplingRow(SamplingParams(), 0, 0, [1], [], EOS)], V)
    assert t.logit_bias.shape == (2, V) and t.logit_bias[0, 3] == 5.0 and t.logit_bias.abs().sum() == 5.0
    for bad in ({-1: 1.0}, {3: 100.5}, {3: float("nan")}, {"3": 1.0}, [3]):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias=bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logit_bias_equals_cpu() -> None:
    from radixserve.sampling.tensors import logit_bias_row

    rng = random.Random(8)
    rows = random_rows(rng, 16, with_masks=False)
    biases = [{rng.randrange(V): rng.uniform(-100, 100) for _ in range(3)} if b % 2 else None for b in range(16)]
    logits = torch.randn(16, V, generator=torch.Generator().manual_seed(8)) * 3
    out = {}
    for device in ("cpu", "cuda"):
        dev_rows = [r._replace(params=SamplingParams(**{**r.params.__dict__, "logit_bias": bias}),
                               logit_bias=logit_bias_row(bias, V, device) if bias else None)
                    for r, bias in zip(rows, biases)]
        t = build_sampling_tensors(dev_rows, V, device)
        assert t.logit_bias.device.type == device
        out[device] = (sample(logits.to(device), t).token_ids.cpu(), processed_probs(logits.to(device), t).cpu())
    assert torch.equal(out["cpu"][0], out["cuda"][0])
    torch.testing.assert_close(out["cpu"][1], out["cuda"][1], atol=1e-5, rtol=1e-4)
