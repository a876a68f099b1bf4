"""Structured extraction over a batch of texts: gen(json_schema=...) constrains every answer to
the schema, so each output parses and validates. The instructions prefix is shared by all texts
and computed once.

    python examples/dsl_json_extraction.py
    python examples/dsl_json_extraction.py --url http://127.0.0.1:8000
"""
from __future__ import annotations

import argparse
import json

import radixserve.lang as sgl

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "city": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
    },
    "required": ["name", "city", "age"],
    "additionalProperties": False,
}
TEXTS = [
    "Maria Silva, 34, moved to Porto last spring to open a bakery.",
    "At 71, retired teacher Henrik Olsen still swims in the harbour of Bergen every morning.",
    "The new striker, 22-year-old Kenji Watanabe, signed with a club in Osaka.",
    "Amara Nwosu (45) runs the largest bookshop in Lagos.",
]


@sgl.function
def extract(s, text):
    s += sgl.system("You extract facts from text and answer with JSON only.")
    s += sgl.user("Give the person's name, city and age as JSON.\nText: " + text)
    s += sgl.assistant(sgl.gen("person", max_tokens=64, json_schema=SCHEMA))


def main(argv: list[str] | None = None, backend: sgl.Backend | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running radixserve server (default: in process)")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    own = backend is None
    if own:
        backend = sgl.RuntimeEndpoint(args.url, args.api_key) if args.url else sgl.LocalBackend(max_total_tokens=8192)
    try:
        states = extract.run_batch([{"text": t} for t in TEXTS], backend=backend, temperature=0)
    finally:
        if own:
            backend.shutdown()
    people = []
    for text, st in zip(TEXTS, states):
        person = json.loads(st["person"])
        people.append(person)
        m = st.meta("person")
        print(f"{text}\n  -> {person}  (prompt {m['prompt_tokens']} tokens, cached {m['cached_tokens']})")
    return people


if __name__ == "__main__":
    main()
