"""`radixserve bench lang`: a branching program written in radixserve.lang — a few-shot prefix and a
question, fork(F) reasoning chains each judged by a select, a final answer — run as a batch of
programs on the radix tree, against the same programs issued as independent requests with the
radix cache off (the same engine, reconfigured), and the cached-token ratio against the optimal.

Before either timed run the engine runs the same program once in each mode on a few other
questions (untimed), so neither timed run pays one-time costs (Triton JIT of the kernel variants
the workload reaches, allocator growth); the report gives those warm-up walls too. The timed runs
go radix-on first, so any one-time cost left would count against the radix tree.

Every engine call of a run is recorded (prompt ids, output ids, cached count, start and end time),
so the report gives:
- achieved hit rate: cached prompt tokens / prompt tokens, as the engine reported them;
- optimal: 1 - unique prompt tokens / prompt tokens over all calls, tokens an earlier call
  generated counting as known (workloads.optimal_hit_rate);
- reachable: the engine's rules replayed over the calls in the order they were made, with an
  unbounded cache: a prompt's last token is always computed (its logits are needed), a scoring
  request recomputes the token before its first scored position, and a generation's last sampled
  token has no KV yet. The gap between optimal and reachable is those rules, not the cache. (An
  estimate: concurrent calls may be served in another order than they were made.)
- where the time went: engine steps (model steps, decode-only steps, mean decode batch), the
  scheduler thread's idle time, and per call kind when its calls were made and returned.
"""
from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import radixserve.lang as sgl
from radixserve.bench import report
from radixserve.bench.offline import reconfigure, warmup
from radixserve.bench.step_trace import StepTrace
from radixserve.bench.workloads import optimal_hit_rate
from radixserve.lang.backend.base import Backend, GenOutput, ScoreOutput, ScoreRequest
from radixserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from radixserve.engine.engine import Engine  # reaches the in-process engine's runner and loop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BranchingConfig:
    programs: int = 16
    few_shot_tokens: int = 256  # shared by every program
    branches: int = 4  # fork(branches) reasoning chains per program
    thought_tokens: int = 8  # per chain (ignore_eos: forced length)
    answer_tokens: int = 4
    choices: tuple[str, ...] = (" yes", " no")  # each chain's verdict (select)
    seed: int = 0
    warmup_programs: int = 2  # programs of the untimed warm-up run of each mode, on other questions (0: none)

    def __post_init__(self) -> None:
        for name in ("programs", "few_shot_tokens", "branches", "thought_tokens", "answer_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup_programs, int) or self.warmup_programs < 0:
            raise ValueError(f"warmup_programs must be an integer >= 0, got {self.warmup_programs!r}")
        if len(self.choices) < 2:
            raise ValueError("the verdict select needs at least two choices")


# NOTE: on a GPU the warm-up meets the Triton kernel variants of the workload (prefill after a cached
# prefix, mixed steps, ...) before the timed runs; on a CPU there is no JIT and a small one does.
SCALES = {"cpu": BranchingConfig(programs=16, few_shot_tokens=256, branches=4, thought_tokens=8, answer_tokens=4),
          "gpu": BranchingConfig(programs=64, few_shot_tokens=1024, branches=4, thought_tokens=48, answer_tokens=16,
                                 warmup_programs=16)}

_NAMES = ["Ana", "Bo", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
_THINGS = ["apples", "books", "coins", "stamps", "shells", "marbles", "pencils", "tickets"]


def _problem(rng: random.Random) -> tuple[str, str]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(2, 90), rng.randint(2, 90)
    return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", str(a + b)


def few_shot_text(encode, target_tokens: int, seed: int) -> str:
    """Worked examples until the text is at least `target_tokens` tokens long."""
    rng = random.Random(seed)
    parts: list[str] = []
    while len(encode("".join(parts))) < target_tokens:
        q, a = _problem(rng)
        parts.append(f"Question: {q}\nReasoning: add the two numbers.\nAnswer: {a}\n\n")
    return "".join(parts)


def questions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [_problem(rng)[0] for _ in range(n)]


@sgl.function
def branching(s, few_shot, question, branches, thought_tokens, answer_tokens, choices):
    s += few_shot + "Question: " + question + "\nLet us reason in several ways.\n"
    forks = s.fork(branches)
    forks += lambda i: (f"Way {i + 1}:" + sgl.gen("thought", max_tokens=thought_tokens, ignore_eos=True)
                        + "\nIs this way right?" + sgl.select("verdict", choices=list(choices)))
    forks.join()
    margin = [m["scores"][0] - max(m["scores"][1:]) for m in s.meta("verdict")]
    best = margin.index(max(margin))
    s += f"\nThe best way is way {best + 1}.\nAnswer:" + sgl.gen("answer", max_tokens=answer_tokens, ignore_eos=True)
    return best


# ---- recording the engine calls -------------------------------------------------------------------
class Call(NamedTuple):
    kind: str  # "gen" | "prefill" | "score"
    prompt: list[int]
    output: list[int]
    cached: int
    limit: int  # the most of the prompt the engine may serve from the cache
    start: float = 0.0  # perf_counter when the call was made
    end: float = 0.0  # and when it returned
    max_new_tokens: int = 0


class RecordingBackend(Backend):
    """Delegates to `inner`, recording every call in the order the calls were made."""

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self._lock = threading.Lock()
        self._slots: list[list[Call]] = []

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return [c for slot in self._slots for c in slot]

    @property
    def caches_prefixes(self) -> bool:
        return self.inner.caches_prefixes

    def _slot(self) -> list[Call]:
        slot: list[Call] = []
        with self._lock:
            self._slots.append(slot)
        return slot

    def generate(self, input_ids, params: SamplingParams, rid: str, on_chunk=None) -> GenOutput:
        slot = self._slot()
        t0 = time.perf_counter()
        out = self.inner.generate(input_ids, params, rid, on_chunk)
        kind = "prefill" if params.max_new_tokens == 0 else "gen"
        slot.append(Call(kind, list(input_ids), list(out.token_ids), out.cached_tokens, len(input_ids) - 1,
                         t0, time.perf_counter(), params.max_new_tokens))
        return out

    def score(self, requests: Sequence[ScoreRequest], rid: str) -> list[ScoreOutput]:
        slot = self._slot()
        t0 = time.perf_counter()
        outs = self.inner.score(requests, rid)
        t1 = time.perf_counter()
        slot.extend(Call("score", list(r.input_ids), [], o.cached_tokens, min(len(r.input_ids) - 1, r.start - 1),
                         t0, t1) for r, o in zip(requests, outs))
        return outs

    def abort(self, rid: str) -> None:
        self.inner.abort(rid)


def reachable_hit_rate(calls: Sequence[Call]) -> float:
    """Hit rate of an unbounded cache under the engine's rules (see the module doc), in call order."""
    mod, base = (1 << 61) - 1, 1_000_003
    known: set[tuple[int, int]] = set()  # (length, rolling hash) of every cached prefix
    hit = total = 0
    for c in calls:
        h, match = 0, 0
        for i, t in enumerate(c.prompt[:c.limit]):
            h = (h * base + t + 1) % mod
            if (i + 1, h) not in known:
                break
            match = i + 1
        hit, total = hit + match, total + len(c.prompt)
        computed = c.prompt + c.output[:-1]  # NOTE: the last sampled token was never fed to the model
        h = 0
        for i, t in enumerate(computed):
            h = (h * base + t + 1) % mod
            known.add((i + 1, h))
    return hit / total if total else 0.0


def summarize_calls(calls: Sequence[Call]) -> dict:
    prompt = sum(len(c.prompt) for c in calls)
    cached = sum(c.cached for c in calls)
    return {"requests": len(calls), "prompt_tokens": prompt, "cached_tokens": cached,
            "computed_prompt_tokens": prompt - cached, "generated_tokens": sum(len(c.output) for c in calls),
            "hit_rate": cached / prompt if prompt else 0.0,
            "optimal_hit_rate": optimal_hit_rate([c.prompt for c in calls], [(c.prompt, c.output) for c in calls]),
            "reachable_hit_rate": reachable_hit_rate(calls),
            "requests_by_kind": {k: sum(c.kind == k for c in calls) for k in ("prefill", "gen", "score")}}


def call_phases(calls: Sequence[Call], t0: float) -> dict:
    """Per call kind (gens by length): how many, when the first and the last were made, when the
    last returned, and the median call latency; times in seconds from the run's start."""
    kinds: dict[str, list[Call]] = {}
    for c in calls:
        kinds.setdefault(c.kind if c.kind != "gen" else f"gen {c.max_new_tokens} tokens", []).append(c)
    return {k: {"calls": len(cs), "first_made_s": min(c.start for c in cs) - t0,
                "last_made_s": max(c.start for c in cs) - t0, "last_returned_s": max(c.end for c in cs) - t0,
                "median_latency_s": statistics.median(c.end - c.start for c in cs)}
            for k, cs in sorted(kinds.items())}


# ---- the benchmark ---------------------------------------------------------------------------------
def run_mode(engine: Engine, cfg: BranchingConfig, few_shot: str, qs: list[str], radix: bool,
             progress_bar: bool = True) -> tuple[dict, list]:
    reconfigure(engine, schedule_policy=engine.config.schedule_policy, disable_radix_cache=not radix)
    backend = RecordingBackend(sgl.LocalBackend(engine))
    args = [dict(few_shot=few_shot, question=q, branches=cfg.branches, thought_tokens=cfg.thought_tokens,
                 answer_tokens=cfg.answer_tokens, choices=cfg.choices) for q in qs]
    try:
        with StepTrace(engine) as trace:
            t0 = time.perf_counter()
            states = branching.run_batch(args, backend=backend, temperature=0.0, progress_bar=progress_bar)
            t1 = time.perf_counter()
        wall = t1 - t0
    finally:
        backend.inner.shutdown()
    name = "radixserve.lang, radix cache on" if radix else "same program, independent requests, radix cache off"
    result = {"name": name, "wall_s": wall, "programs": len(states), "programs_per_s": len(states) / wall,
              **summarize_calls(backend.calls), "engine": trace.summary(t0, t1),
              "phases": call_phases(backend.calls, t0)}
    result["generated_tok_per_s"] = result["generated_tokens"] / wall
    return result, [s.token_ids() for s in states]


def run(spec: Any, cfg: BranchingConfig, out_dir: str, stem: str, title: str) -> dict:
    engine = spec.build()
    try:
        warmup(engine, engine.vocab_size)
        encode = sgl.LocalBackend(engine)
        try:
            few_shot = few_shot_text(encode.encode, cfg.few_shot_tokens, cfg.seed)
            shared = len(encode.encode(few_shot))
        finally:
            encode.shutdown()
        qs = questions(cfg.programs, cfg.seed)
        # NOTE: untimed warm-up of both modes on other questions (each run starts from a flushed cache).
        warm_qs = questions(cfg.programs + cfg.warmup_programs, cfg.seed)[cfg.programs:]
        warm = {}
        for radix in (True, False) if warm_qs else ():
            t0 = time.perf_counter()
            run_mode(engine, cfg, few_shot, warm_qs, radix=radix, progress_bar=False)
            warm["radix on" if radix else "radix off"] = time.perf_counter() - t0
        logger.info("warm-up walls (untimed): %s", {k: round(v, 2) for k, v in warm.items()})
        on, on_ids = run_mode(engine, cfg, few_shot, qs, radix=True)
        off, off_ids = run_mode(engine, cfg, few_shot, qs, radix=False)
        reconfigure(engine, disable_radix_cache=False)
    finally:
        engine.shutdown()
    same = sum(a == b for a, b in zip(on_ids, off_ids))
    speedup = off["wall_s"] / on["wall_s"]
    lines = [
        f"- **radixserve.lang on the radix tree vs the same program as independent requests with the cache off**: "
        f"{on['wall_s']:.2f} s vs {off['wall_s']:.2f} s for {cfg.programs} programs = **{speedup:.2f}x**",
        f"- cached prompt tokens (radix on): {on['hit_rate']:.1%} of {on['prompt_tokens']} prompt tokens; optimal "
        f"{on['optimal_hit_rate']:.1%} -> achieved/optimal **{on['hit_rate'] / max(on['optimal_hit_rate'], 1e-9):.1%}**; "
        f"reachable under the engine's rules {on['reachable_hit_rate']:.1%} -> achieved/reachable "
        f"**{on['hit_rate'] / max(on['reachable_hit_rate'], 1e-9):.1%}**",
        f"- prompt tokens computed: {on['computed_prompt_tokens']} (radix on) vs {off['computed_prompt_tokens']} (off); "
        f"requests per mode {on['requests']} ({on['requests_by_kind']} on, {off['requests_by_kind']} off)",
        f"- programs whose final token ids are identical in both modes: {same}/{cfg.programs}",
        f"- workload: {cfg.programs} programs, few-shot prefix {shared} tokens shared by all, fork({cfg.branches}) "
        f"chains of {cfg.thought_tokens} tokens, each judged by select over {list(cfg.choices)}, answer "
        f"{cfg.answer_tokens} tokens; greedy, ignore_eos",
        f"- before the timed runs, one untimed warm-up run per mode of {len(warm_qs)} programs on other questions "
        f"(walls: {', '.join(f'{k} {v:.2f} s' for k, v in warm.items())}); timed runs radix on first",
        "",
        "| run | engine steps | decode-only | mean decode batch | mean rows/step | scheduler busy s | idle s | "
        "longest idle s |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {r['name']} | {e['model_steps']} | {e['decode_steps']} | {e['mean_decode_batch']:.1f} | "
          f"{e['mean_rows_per_step']:.1f} | {e['scheduler_busy_s']:.2f} | {e['scheduler_idle_s']:.2f} | "
          f"{e['longest_idle_gap_s']:.3f} |" for r in (on, off) for e in [r["engine"]]],
        "",
        "| run | calls | count | first made s | last made s | last returned s | median latency s |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['name']} | {k} | {p['calls']} | {p['first_made_s']:.2f} | {p['last_made_s']:.2f} | "
          f"{p['last_returned_s']:.2f} | {p['median_latency_s']:.3f} |" for r in (on, off)
          for k, p in r["phases"].items()],
        "",
        "| run | wall s | programs/s | requests | prompt tokens | computed | cached | hit rate | optimal | reachable |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (on, off):
        lines.append(f"| {r['name']} | {r['wall_s']:.2f} | {r['programs_per_s']:.2f} | {r['requests']} | "
                     f"{r['prompt_tokens']} | {r['computed_prompt_tokens']} | {r['cached_tokens']} | {r['hit_rate']:.1%} | "
                     f"{r['optimal_hit_rate']:.1%} | {r['reachable_hit_rate']:.1%} |")
    extra = {"config": {**asdict(cfg), "few_shot_tokens_actual": shared, "model": spec.model,
                        "engine_options": dict(spec.options)},
             "speedup": speedup, "identical_programs": same, "warmup_wall_s": warm, "modes": [on, off]}
    return report.write(out_dir, stem, title, [], extra, lines)
