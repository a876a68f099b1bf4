"""`radixserve bench grammar`: what structured output costs, measured against its baseline in one run.

Parts (`--parts`):
- throughput: B requests constrained by a JSON schema (RECORDS) vs the same B requests
  unconstrained, greedy, same prompts, same engine. RECORDS is far longer than the token budget,
  so every request, constrained or not, stops at max_new_tokens: both runs generate exactly
  B x max_new_tokens tokens, and output tok/s compares directly, with random weights too.
  Constrained runs: jump-forward off (the mask's cost alone), on, and with overlap scheduling off
  (what hiding the host work behind the forward is worth).
- jump-forward: LONG_KEYS (long fixed keys, bounded values, so even random weights finish) on B
  requests, jump-forward on vs off: decode steps and end-to-end time.
- host (no model forward): the scheduler thread's grammar work per step on B rows walking RECORDS,
  the earlier way (one accept call per row, a tokenizer call per jump-forward check) against the
  current one (one batched accept, remembered tokenisations), both on the same states in one run;
  and the per-request schema check, first and remembered.
- micro (no model forward): compile time of each schema of SCHEMAS with the cache off, and the
  per-token mask time along a random walk through each grammar, median and p99.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import statistics
import time

from radixserve.bench import report
from radixserve.bench.grammar_schemas import LONG_KEYS, RECORDS, SCHEMAS
from radixserve.bench.metrics import percentiles
from radixserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)
FIRST_ID = 100


def _set_knobs(engine, *, jump_forward: bool, overlap: bool) -> None:
    """Switch an idle engine's jump-forward and overlap scheduling (benchmark-only; both are read
    afresh every step). Flushes the radix cache so every run computes the same prompts."""
    if not engine.flush_cache():
        raise RuntimeError("the grammar benchmark needs an idle engine")
    cfg = dataclasses.replace(engine.scheduler.config, overlap_schedule=overlap, jump_forward=jump_forward)
    engine.config = engine.scheduler.config = cfg
    engine.results.jump_forward = jump_forward


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    hi = min(vocab, 32000)
    return [[rng.randrange(FIRST_ID, hi) for _ in range(length)] for _ in range(n)]


def _grammar_accepts(engine, schema: dict, token_ids: list[int]) -> bool:
    """An independent matcher (fresh, from the engine's compiler) accepts every token in order."""
    import xgrammar as xgr

    compiled = engine.grammar.compiler(json_only=True).compile_json_schema(json.dumps(schema), any_whitespace=False)
    m = xgr.GrammarMatcher(compiled)
    return all(m.accept_token(t) for t in token_ids)


def _timed_run(engine, name: str, prompts, params: SamplingParams, schema: dict | None) -> dict:
    before, steps0 = engine.stats(), engine.scheduler.step_count
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    wall = time.perf_counter() - t0
    after, steps = engine.stats(), engine.scheduler.step_count - steps0
    tokens = sum(len(o.token_ids) for o in outs)
    rows = after["grammar_mask_rows"] - before["grammar_mask_rows"]
    fill_s = after["grammar_mask_fill_s"] - before["grammar_mask_fill_s"]
    run = {"name": name, "requests": len(prompts), "output_tokens": tokens, "wall_s": wall,
           "output_tok_per_s": tokens / wall, "steps": steps, "ms_per_step": 1e3 * wall / max(steps, 1),
           "mask_rows": rows, "mask_fill_ms_per_step": 1e3 * fill_s / max(steps, 1),
           "mask_fill_us_per_row": 1e6 * fill_s / rows if rows else None,
           "jump_forward_tokens": after["jump_forward_tokens"] - before["jump_forward_tokens"],
           "finish_reasons": {r: sum(o.finish_reason == r for o in outs) for r in {o.finish_reason for o in outs}}}
    if schema is not None:
        run["all_outputs_in_grammar"] = all(_grammar_accepts(engine, schema, o.token_ids) for o in outs)
    logger.info("%s: %d tokens in %.2f s = %.1f tok/s, %d steps", name, tokens, wall, run["output_tok_per_s"], steps)
    return run


def throughput(engine, batch_sizes: list[int], output_len: int, prompt_len: int, seed: int) -> list[dict]:
    """Per batch size: unconstrained, constrained (jump-forward off / on), constrained with overlap off."""
    free = lambda: SamplingParams(max_new_tokens=output_len, temperature=0, ignore_eos=True)  # noqa: E731
    json_p = lambda: SamplingParams(max_new_tokens=output_len, temperature=0, json_schema=RECORDS)  # noqa: E731
    variants = [("unconstrained", free, False, True, None),
                ("json schema", json_p, False, True, RECORDS),
                ("json schema + jump-forward", json_p, True, True, RECORDS),
                ("json schema, overlap off", json_p, False, False, RECORDS),
                ("unconstrained, overlap off", free, False, False, None)]
    results = []
    warm = _prompts(2, prompt_len, engine.vocab_size, seed + 1)
    for _, make, jf, overlap, _ in variants:  # compiles the grammar and any kernels once, untimed
        _set_knobs(engine, jump_forward=jf, overlap=overlap)
        engine.generate(input_ids=warm, sampling_params=dataclasses.replace(make(), max_new_tokens=4))
    for b in batch_sizes:
        prompts = _prompts(b, prompt_len, engine.vocab_size, seed + b)
        runs = []
        for name, make, jf, overlap, schema in variants:
            _set_knobs(engine, jump_forward=jf, overlap=overlap)
            runs.append(_timed_run(engine, f"{name} (batch {b})", prompts, make(), schema))
        base = runs[0]["output_tok_per_s"]
        for r in runs:
            r["batch"] = b
            r["vs_unconstrained"] = r["output_tok_per_s"] / base
        results += runs
    _set_knobs(engine, jump_forward=True, overlap=True)
    return results


def jump_forward(engine, batch: int, prompt_len: int, max_new_tokens: int, seed: int) -> list[dict]:
    """LONG_KEYS on `batch` requests, jump-forward on and off (greedy, so both are deterministic)."""
    import jsonschema

    prompts = _prompts(batch, prompt_len, engine.vocab_size, seed + 7)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, json_schema=LONG_KEYS)
    _set_knobs(engine, jump_forward=True, overlap=True)
    engine.generate(input_ids=prompts[:1], sampling_params=dataclasses.replace(params, max_new_tokens=4))
    runs = []
    for jf in (False, True):
        _set_knobs(engine, jump_forward=jf, overlap=True)
        run = _timed_run(engine, f"long fixed keys, jump-forward {'on' if jf else 'off'}", prompts, params, LONG_KEYS)
        outs = engine.generate(input_ids=prompts[:4], sampling_params=params)  # validity (cached prompts: cheap)
        valid = 0
        for o in outs:
            try:
                jsonschema.validate(json.loads(o.text), LONG_KEYS)
                valid += o.finish_reason == "stop"
            except (ValueError, jsonschema.ValidationError):
                pass
        run["checked_outputs_valid"] = f"{valid}/{len(outs)}"
        run["example"] = outs[0].text[:200]
        runs.append(run)
    _set_knobs(engine, jump_forward=True, overlap=True)
    return runs


def micro(tokenizer, vocab_size: int, stop_ids: list[int], repeats: int, steps: int, seed: int) -> dict:
    """Compile time (cache off) per schema and per-token mask time along random walks."""
    import xgrammar as xgr

    from radixserve.grammar.tokenizer_info import build_tokenizer_info
    from radixserve.sampling.bitmask import unpack_bitmask

    t0 = time.perf_counter()
    info = build_tokenizer_info(tokenizer, vocab_size, stop_ids, json_only=True)
    info_s = time.perf_counter() - t0
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t0 = time.perf_counter()
    compiler.compile_json_schema('{"type": "integer"}', any_whitespace=False)
    first_s = time.perf_counter() - t0
    compile_ms, per_schema = [], {}
    compiled = {}
    for name, schema in SCHEMAS.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            compiled[name] = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
            times.append(1e3 * (time.perf_counter() - t0))
        per_schema[name] = statistics.median(times)
        compile_ms += times
    rng = random.Random(seed)
    mask = xgr.allocate_token_bitmask(1, vocab_size)
    mask_us = []
    stop = set(stop_ids)
    for cg in compiled.values():
        m = xgr.GrammarMatcher(cg)
        for _ in range(steps):
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            mask_us.append(1e6 * (time.perf_counter() - t0))
            allowed = unpack_bitmask(mask, vocab_size)[0].nonzero().flatten().tolist()
            content = [t for t in allowed if t not in stop]
            if not content:
                break
            assert m.accept_token(rng.choice(content))
    # the same states again, all schemas as one batch (what a step with len(SCHEMAS) grammar rows pays)
    batch = xgr.BatchGrammarMatcher()
    ms = [xgr.GrammarMatcher(cg) for cg in compiled.values()]
    big = xgr.allocate_token_bitmask(len(ms), vocab_size)
    batch_ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch.batch_fill_next_token_bitmask(ms, big)
        batch_ms.append(1e3 * (time.perf_counter() - t0))
        allowed = unpack_bitmask(big, vocab_size)
        for i, m in enumerate(ms):
            content = [t for t in allowed[i].nonzero().flatten().tolist() if t not in stop]
            if content and not m.is_terminated():
                m.accept_token(rng.choice(content))
    return {"tokenizer_info_s": info_s, "first_compile_ms": 1e3 * first_s, "schemas": len(SCHEMAS),
            "compile_repeats": repeats, "compile_ms": percentiles(compile_ms, (50, 90, 99)),
            "compile_ms_max": max(compile_ms), "compile_ms_median_by_schema": per_schema,
            "mask_tokens": len(mask_us), "mask_us_per_token": percentiles(mask_us, (50, 90, 99)),
            "mask_us_max": max(mask_us), "batch_rows": len(ms),
            "batch_mask_ms_per_step": percentiles(batch_ms, (50, 90, 99))}


def host(engine, batch_sizes: list[int], steps: int, seed: int) -> list[dict]:
    """Per batch size: milliseconds per step of each piece of grammar host work (median over steps)."""
    import xgrammar as xgr

    from radixserve.grammar.spec import GrammarSpec
    from radixserve.sampling.bitmask import unpack_bitmask

    backend = engine.grammar
    spec = GrammarSpec("json_schema", "json_schema", json.dumps(RECORDS))
    backend._validated.clear()
    t0 = time.perf_counter()
    backend.validate(spec)
    check_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend.validate(spec)
    check_again = time.perf_counter() - t0
    compiled = backend.compiler(json_only=True).compile_json_schema(spec.source, any_whitespace=False)
    batch, stop, rng = backend.batch_matcher(), set(engine.eos_ids), random.Random(seed)
    out = []
    for b in batch_sizes:
        ms = [xgr.GrammarMatcher(compiled) for _ in range(b)]
        mask = xgr.allocate_token_bitmask(b, engine.vocab_size)
        t = {k: [] for k in ("mask_fill", "accept_per_row", "accept_batched", "jump_check_tokenizer",
                             "jump_check_remembered")}
        for _ in range(steps):
            t0 = time.perf_counter()
            batch.batch_fill_next_token_bitmask(ms, mask)
            t["mask_fill"].append(time.perf_counter() - t0)
            allowed = unpack_bitmask(mask, engine.vocab_size)
            toks = [rng.choice([x for x in allowed[i].nonzero().flatten().tolist() if x not in stop] or [0])
                    for i in range(b)]
            forks = [m.fork() for m in ms]
            t0 = time.perf_counter()
            for m, x in zip(forks, toks):
                m.accept_token(x)
            t["accept_per_row"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            batch.batch_accept_token(ms, toks)
            t["accept_batched"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for m in ms:
                text = m.find_jump_forward_string()
                if text:
                    backend.encode(text)
            t["jump_check_tokenizer"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for m in ms:
                text = m.find_jump_forward_string()
                if text:
                    backend.encode_forced(text)
            t["jump_check_remembered"].append(time.perf_counter() - t0)
        row = {"batch": b, "steps": steps} | {f"{k}_ms": 1e3 * statistics.median(v) for k, v in t.items()}
        row["schema_check_first_ms"] = 1e3 * check_first
        row["schema_check_remembered_ms"] = 1e3 * check_again
        out.append(row)
        logger.info("host work, batch %d: %s", b, row)
    return out


def run(spec, out_dir: str, stem: str, parts: set[str], batch_sizes: list[int], output_len: int, prompt_len: int,
        jf_batch: int, jf_max_new_tokens: int, repeats: int, steps: int, seed: int) -> dict:
    engine = spec.build()
    extra: dict = {"settings": {"parts": sorted(parts), "batch_sizes": batch_sizes, "output_len": output_len,
                                "prompt_len": prompt_len, "jump_forward_batch": jf_batch, "seed": seed,
                                "model": engine.model_name, "device": str(engine.runner.device),
                                "dtype": str(engine.runner.dtype), "vocab_size": engine.vocab_size,
                                "tokenizer_vocab": len(engine.tokenizer)}}
    lines: list[str] = []
    try:
        if "micro" in parts:
            m = micro(engine.tokenizer, engine.vocab_size, sorted(engine.eos_ids), repeats, steps, seed)
            extra["micro"] = m
            lines += [f"- compile time per schema ({m['schemas']} schemas x {m['compile_repeats']}, cache off): "
                      f"median **{m['compile_ms']['p50']:.1f} ms**, p99 **{m['compile_ms']['p99']:.1f} ms** "
                      f"(max {m['compile_ms_max']:.1f} ms); vocabulary set-up {m['tokenizer_info_s']:.2f} s once",
                      f"- mask time per token ({m['mask_tokens']} tokens of random walks): median "
                      f"**{m['mask_us_per_token']['p50']:.1f} us**, p99 **{m['mask_us_per_token']['p99']:.1f} us** "
                      f"(max {m['mask_us_max']:.0f} us); a batch of {m['batch_rows']} grammar rows: median "
                      f"{m['batch_mask_ms_per_step']['p50']:.2f} ms per step"]
        if "host" in parts:
            rows = host(engine, batch_sizes, steps, seed)
            extra["host"] = rows
            lines += ["", _table(rows, ("batch", "mask_fill_ms", "accept_per_row_ms", "accept_batched_ms",
                                        "jump_check_tokenizer_ms", "jump_check_remembered_ms",
                                        "schema_check_first_ms", "schema_check_remembered_ms")), ""]
            for r in rows:
                old = r["accept_per_row_ms"] + r["jump_check_tokenizer_ms"]
                new = r["accept_batched_ms"] + r["jump_check_remembered_ms"]
                lines.append(f"- batch {r['batch']}: accept + jump-forward check per step {old:.2f} ms (one call per "
                             f"row, tokenizer each time) -> **{new:.2f} ms** (batched, remembered); "
                             f"schema check per request {r['schema_check_first_ms']:.1f} ms -> "
                             f"{r['schema_check_remembered_ms'] * 1e3:.0f} us")
        if "throughput" in parts:
            runs = throughput(engine, batch_sizes, output_len, prompt_len, seed)
            extra["throughput"] = runs
            lines += ["", _table(runs, ("name", "output_tok_per_s", "vs_unconstrained", "steps", "ms_per_step",
                                        "mask_fill_ms_per_step", "mask_fill_us_per_row", "jump_forward_tokens",
                                        "all_outputs_in_grammar")), ""]
            for b in batch_sizes:
                r = {x["name"].split(" (")[0]: x for x in runs if x["batch"] == b}
                lines.append(f"- batch {b}: JSON-schema constrained / unconstrained output tok/s = "
                             f"**{r['json schema']['vs_unconstrained']:.1%}** (jump-forward off), "
                             f"{r['json schema + jump-forward']['vs_unconstrained']:.1%} with jump-forward; "
                             f"with overlap off: {r['json schema, overlap off']['vs_unconstrained']:.1%} "
                             f"(unconstrained, overlap off: {r['unconstrained, overlap off']['vs_unconstrained']:.1%})")
        if "jump-forward" in parts:
            runs = jump_forward(engine, jf_batch, prompt_len, jf_max_new_tokens, seed)
            extra["jump_forward"] = runs
            off, on = runs
            lines += ["", _table(runs, ("name", "output_tokens", "steps", "wall_s", "output_tok_per_s",
                                        "jump_forward_tokens", "checked_outputs_valid")), "",
                      f"- jump-forward on a schema with long fixed keys ({jf_batch} requests): decode steps "
                      f"{off['steps']} -> **{on['steps']}**, end-to-end {off['wall_s']:.2f} s -> "
                      f"**{on['wall_s']:.2f} s** ({off['wall_s'] / on['wall_s']:.2f}x)",
                      f"- example output: `{on['example']}`"]
    finally:
        engine.shutdown()
    return report.write(out_dir, stem, "Structured output (xgrammar): cost and jump-forward", [], extra, lines)


def _table(runs: list[dict], cols: tuple[str, ...]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in runs]
    return "\n".join(out)
