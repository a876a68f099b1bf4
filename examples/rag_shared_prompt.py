"""Many questions over one long system prompt + one retrieved passage.

Every question's prompt starts with the same ~230 tokens; the radix tree computes them once and
every other request reads them from the cache. The script prints each answer with its prompt and
cached token counts.

    python examples/rag_shared_prompt.py                              # in process, embedded SmolLM2
    python examples/rag_shared_prompt.py --url http://127.0.0.1:8000  # a running `radixserve serve`
"""
from __future__ import annotations

import argparse

import radixserve.lang as sgl

SYSTEM = ("You are the help desk of the Danube River Museum. Answer from the retrieved passage only, in "
          "one short sentence. If the passage does not say, answer 'The passage does not say.' ")
PASSAGE = (
    "The Danube is Europe's second-longest river, about 2,850 kilometres long. It rises in the Black Forest "
    "in Germany, at the town of Donaueschingen, and flows east through ten countries: Germany, Austria, "
    "Slovakia, Hungary, Croatia, Serbia, Romania, Bulgaria, Moldova and Ukraine. Four capital cities lie on "
    "its banks: Vienna, Bratislava, Budapest and Belgrade. The river ends in the Danube Delta on the Black "
    "Sea, a wetland of about 4,150 square kilometres that is home to more than 300 species of birds. Ships "
    "can sail from the North Sea to the Black Sea through the Rhine-Main-Danube Canal, opened in 1992. The "
    "museum is open from 9am to 5pm, Tuesday to Sunday; entry is free for children under twelve.")
QUESTIONS = [
    "How long is the Danube?",
    "Where does the Danube begin?",
    "Which capital cities are on the Danube?",
    "Where does the river end?",
    "How many bird species live in the delta?",
    "When did the Rhine-Main-Danube Canal open?",
    "When is the museum open?",
    "Do children pay to enter?",
]


@sgl.function
def ask(s, question):
    s += sgl.system(SYSTEM + "\n\nRetrieved passage:\n" + PASSAGE)
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=24, stop="\n"))


def main(argv: list[str] | None = None, backend: sgl.Backend | None = None) -> list[sgl.ProgramState]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running radixserve server (default: in process)")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    own = backend is None
    if own:
        backend = sgl.RuntimeEndpoint(args.url, args.api_key) if args.url else sgl.LocalBackend(max_total_tokens=8192)
    try:
        states = ask.run_batch([{"question": q} for q in QUESTIONS], backend=backend, temperature=0)
    finally:
        if own:
            backend.shutdown()
    prompt = cached = 0
    for q, st in zip(QUESTIONS, states):
        m = st.meta("answer")
        prompt, cached = prompt + m["prompt_tokens"], cached + m["cached_tokens"]
        print(f"Q: {q}\nA: {st['answer'].strip()}\n   prompt {m['prompt_tokens']} tokens, "
              f"cached {m['cached_tokens']}\n")
    print(f"cached prompt tokens: {cached} of {prompt} ({cached / prompt:.0%})")
    return states


if __name__ == "__main__":
    main()
