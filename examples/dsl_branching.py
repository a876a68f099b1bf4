"""Tree-of-thought style branching with fork and select.

One question, three approaches explored in parallel branches (fork: the shared conversation is
computed once, the branches decode together), each branch judging its own approach with a
select (scored with prompt log-probs, no decoding), then the main line answers from the approach
the branches liked best.

    python examples/dsl_branching.py
    python examples/dsl_branching.py --url http://127.0.0.1:8000
"""
from __future__ import annotations

import argparse

import radixserve.lang as sgl

QUESTIONS = ["A farmer has 17 sheep and buys 5 more. How many sheep does he have?",
             "What is a good way to keep bread fresh for a week?"]


@sgl.function
def tree_of_thought(s, question, branches=3):
    s += sgl.system("You think step by step and answer briefly.")
    s += sgl.user(question)
    s += sgl.assistant_begin()
    s += "Let me consider a few approaches.\n"
    forks = s.fork(branches)
    # sampled (seeded, so the run is reproducible): three different ideas from the same prefix
    forks += lambda i: ("Approach:" + sgl.gen("idea", max_tokens=24, min_tokens=2, stop="\n", temperature=0.8,
                                              seed=i)
                        + "\nIs this approach sound? Answer:" + sgl.select("verdict", choices=[" yes", " no"]))
    forks.join()
    # the branch whose " yes" scored highest (select's meta holds each choice's score)
    yes = [m["scores"][0] - m["scores"][1] for m in s.meta("verdict")]
    best = yes.index(max(yes))
    s += f"The best approach is approach {best + 1}:{s['idea'][best]}\nSo the answer is:"
    s += sgl.gen("answer", max_tokens=32, stop="\n")
    s += sgl.assistant_end()
    return best


def main(argv: list[str] | None = None, backend: sgl.Backend | None = None) -> list[sgl.ProgramState]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running radixserve server (default: in process)")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    own = backend is None
    if own:
        backend = sgl.RuntimeEndpoint(args.url, args.api_key) if args.url else sgl.LocalBackend(max_total_tokens=8192)
    try:
        states = tree_of_thought.run_batch([{"question": q} for q in QUESTIONS], backend=backend, temperature=0)
    finally:
        if own:
            backend.shutdown()
    for q, st in zip(QUESTIONS, states):
        print(f"Q: {q}")
        for i, (idea, verdict, m) in enumerate(zip(st["idea"], st["verdict"], st.meta("idea"))):
            print(f"  approach {i + 1}:{idea}  -> sound?{verdict}  (prompt {m['prompt_tokens']}, "
                  f"cached {m['cached_tokens']})")
        print(f"  chosen: approach {st.ret_value + 1}\n  answer:{st['answer']}\n")
    return states


if __name__ == "__main__":
    main()
