"""`radixserve bench spec`: speculative decoding on real text, against speculation off.

Four workloads on the chosen model (default: the embedded SmolLM2-135M), each at batch 1 and batch 8,
greedy, for speculation off, `ngram` and `radix` (three engines, same options, taking turns):

- rag: answer a question over a retrieved passage (answers quote it: prompt lookup finds drafts);
- regenerate: a multi-turn chat whose last answer the user asks for again (the timed run repeats a
  conversation the engine already answered; the radix tree holds that answer);
- json: extract fields from a document under a JSON schema (grammar requests decode one token per
  step: this row shows what speculation costs where it cannot draft);
- rerun: a few-shot program's prompts sent a second time (what re-running a frontend-language
  program sends), the first run untimed.

Reported per run: output tokens, wall seconds, tok/s, speedup over off, draft tokens, acceptance,
mean tokens per verify row. The engine's own counters give the draft figures.
"""
from __future__ import annotations

import json
import logging
import os
import time

from radixserve.bench import report

logger = logging.getLogger(__name__)
METHODS = (None, "ngram", "radix")

PASSAGE = (
    "The Harwick Canal was opened in 1832 to carry coal from the Ellery valley to the port of Saltmouth. "
    "It is 42 kilometres long and climbs 96 metres through 23 locks, the steepest flight being the seven "
    "locks at Brenton Hill. The canal was built by the engineer Margaret Olcott, who also designed the "
    "iron aqueduct over the River Tam, the first of its kind in the region. Traffic peaked in 1868, when "
    "more than 400,000 tonnes of coal were carried, but the opening of the Ellery Valley Railway in 1875 "
    "took most of the trade. The last commercial boat passed through in 1931. After decades of neglect, "
    "a volunteer trust restored the canal between 1978 and 2004, and today it carries about 9,000 leisure "
    "boats a year. The towpath is part of the national cycle network, and the old toll house at Brenton "
    "Hill is now a museum about the canal's history.")
RAG_QUESTIONS = ["Who built the Harwick Canal, and what else did she design?",
                 "How long is the canal and how many locks does it have?",
                 "What happened to the canal's trade after 1875?",
                 "When was the canal restored, and by whom?",
                 "What is the old toll house used for today?",
                 "How much coal did the canal carry at its peak, and when?",
                 "Where does the canal run from and to?",
                 "How many leisure boats use the canal each year?"]
DOCS = [f"Invoice {1000 + i}: issued to {name} on 2026-0{1 + i % 9}-1{i % 10} for {amount} EUR, due in {days} days."
        for i, (name, amount, days) in enumerate([("Alder Ltd", 1200, 30), ("Birch & Co", 560, 14), ("Cedar GmbH", 98, 60),
                                                  ("Dune SA", 4300, 30), ("Elm Partners", 77, 7), ("Fir Works", 915, 45),
                                                  ("Gorse BV", 2500, 30), ("Hazel Inc", 310, 21)])]
SCHEMA = {"type": "object", "properties": {"invoice": {"type": "integer"}, "customer": {"type": "string"},
                                           "amount_eur": {"type": "number"}, "due_days": {"type": "integer"}},
          "required": ["invoice", "customer", "amount_eur", "due_days"], "additionalProperties": False}
CHAT_TOPICS = ["trains in Norway", "baking bread", "learning the violin", "the moons of Jupiter",
               "composting at home", "the history of chess", "tide pools", "writing a cover letter"]
FEW_SHOT = ("Classify the sentiment of each review as positive or negative, then explain in one sentence.\n"
            "Review: The soup was cold and the waiter ignored us.\nSentiment: negative. The food and service were poor.\n"
            "Review: A lovely walk with views over the whole bay.\nSentiment: positive. The reviewer enjoyed the views.\n")
REVIEWS = ["The hotel room was spotless and the staff were kind.", "The train was two hours late and nobody told us why.",
           "Best pizza I have had in years.", "The museum was closed although the website said it was open.",
           "A quiet, comfortable cafe with good coffee.", "The concert sound was muddy and far too loud.",
           "The guide knew every story about the old town.", "My order arrived broken and support never answered."]


def _workloads(engine, batch: int):
    """name -> (timed prompts, untimed warm-up prompts run first, sampling params)."""
    from radixserve import SamplingParams

    tmpl = engine.apply_chat_template
    greedy = SamplingParams(max_new_tokens=96, temperature=0)
    rag = [tmpl([{"role": "system", "content": "Answer from the passage, quoting it where you can.\n\n" + PASSAGE},
                 {"role": "user", "content": q}]) for q in RAG_QUESTIONS[:batch]]
    chats = [[{"role": "user", "content": f"Tell me something interesting about {t}."}] for t in CHAT_TOPICS[:batch]]
    regen = [tmpl(c) for c in chats]
    js = [tmpl([{"role": "user", "content": f"Extract the invoice fields as JSON.\n{d}"}]) for d in DOCS[:batch]]
    constrained = SamplingParams(max_new_tokens=96, temperature=0, json_schema=json.dumps(SCHEMA))
    rerun = [engine.tokenizer.encode(FEW_SHOT + f"Review: {r}\nSentiment:") for r in REVIEWS[:batch]]
    return {"rag": (rag, [], greedy), "regenerate": (regen, regen, greedy), "json": (js, [], constrained),
            "rerun": (rerun, rerun, greedy)}


def _timed(engine, prompts, params) -> tuple[float, int, dict]:
    s0 = engine.stats()
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params=params)
    wall = time.perf_counter() - t0
    s1 = engine.stats()
    delta = {k: s1[k] - s0[k] for k in ("spec_draft_tokens", "spec_accepted_tokens", "spec_verify_rows")}
    return wall, sum(len(o.token_ids) for o in outs), {"delta": delta, "outputs": [o.token_ids for o in outs]}


def run(model: str | None, device: str, out_dir: str, stem: str, batches=(1, 8), k: int = 4, **options) -> dict:
    from radixserve import Engine

    runs, outputs, engines = [], {}, {}
    # NOTE: the three engines stay loaded and take turns on each workload, so a change in the
    # machine's load hits all methods alike (on a shared machine it does)
    try:
        for method in METHODS:
            spec = {"method": method, "num_speculative_tokens": k} if method else None
            engines[method] = Engine(model, device=device, speculative_config=spec, **options)
            engines[method].generate(input_ids=[engines[method].tokenizer.encode("Warm up the kernels.")])
        for batch in batches:
            for name in ("rag", "regenerate", "json", "rerun"):
                for method, engine in engines.items():
                    prompts, warm, params = _workloads(engine, batch)[name]
                    engine.flush_cache()
                    if warm:
                        engine.generate(input_ids=warm, sampling_params=params)
                    wall, tokens, info = _timed(engine, prompts, params)
                    d = info["delta"]
                    same = outputs.setdefault((name, batch), info["outputs"]) == info["outputs"]
                    runs.append({"workload": name, "batch": batch, "method": method or "off", "tokens": tokens,
                                 "seconds": round(wall, 3), "tok_s": round(tokens / wall, 2),
                                 "draft_tokens": d["spec_draft_tokens"], "accepted_tokens": d["spec_accepted_tokens"],
                                 "acceptance": round(d["spec_accepted_tokens"] / d["spec_draft_tokens"], 3)
                                 if d["spec_draft_tokens"] else None,
                                 "tokens_per_verify": round(1 + d["spec_accepted_tokens"] / d["spec_verify_rows"], 2)
                                 if d["spec_verify_rows"] else None,
                                 "same_output_as_off": same})
                    logger.info("%s", runs[-1])
    finally:
        for engine in engines.values():
            engine.shutdown()
    base = {(r["workload"], r["batch"]): r["tok_s"] for r in runs if r["method"] == "off"}
    for r in runs:
        r["speedup"] = round(r["tok_s"] / base[(r["workload"], r["batch"])], 3)
    doc = {**report.header(f"speculative decoding on real text, k={k}"), "model": model or "embedded SmolLM2-135M",
           "options": options, "runs": runs}
    lines = report.head_lines(doc) + ["", "Greedy; three engines (off, ngram, radix), same options, taking turns on each workload; "
                                      "tok/s = output tokens / "
                                      "wall seconds of the timed generate call.", "",
                                      "| workload | batch | method | tokens | s | tok/s | speedup vs off | acceptance "
                                      "| tokens/verify | same output |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['workload']} | {r['batch']} | {r['method']} | {r['tokens']} | {r['seconds']} | {r['tok_s']} | "
                     f"{r['speedup']:.2f}x | {r['acceptance'] if r['acceptance'] is not None else '-'} | "
                     f"{r['tokens_per_verify'] or '-'} | {r['same_output_as_off']} |")
    report.save(os.path.join(out_dir, stem), doc, "\n".join(lines) + "\n")
    return doc
