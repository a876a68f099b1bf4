"""With the KV pool far smaller than the workload needs, every request still finishes with the
output it would have had without pressure; the scheduler retracts and evicts to get there."""
from __future__ import annotations

from engine_fixtures import make_engine
from radixserve import SamplingParams

NEW = 16


def _workload(tok) -> list[list[int]]:
    topics = ["rivers", "mountains", "trains", "cheese", "poems", "planets", "birds", "bridges"]
    prompts = []
    for i in range(64):
        prefix = f"Notes on {topics[i % 8]}. " * (1 + i % 3)
        prompts.append(tok.encode(prefix + f"Item {i}: the most interesting fact is"))
    return prompts


def test_64_requests_under_pressure_match_unpressured():
    params = SamplingParams(max_new_tokens=NEW, temperature=0)
    roomy = make_engine()
    try:
        prompts = _workload(roomy.tokenizer)
        expected = [o.token_ids for o in roomy.generate(input_ids=prompts, sampling_params=params)]
    finally:
        roomy.shutdown()
    need = sum(len(p) + NEW for p in prompts)
    small = make_engine(max_total_tokens=int(need * 0.12))
    try:
        outs = small.generate(input_ids=prompts, sampling_params=params)
        assert [o.token_ids for o in outs] == expected
        assert all(o.finish_reason in ("length", "stop") for o in outs)
        stats = small.stats()
        assert stats["retractions"] > 0
        assert stats["evicted_tokens"] > 0
        assert stats["running"] == 0 and stats["kv_private_tokens"] == 0
        small.check_integrity()
    finally:
        small.shutdown()
