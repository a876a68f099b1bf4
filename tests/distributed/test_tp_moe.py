"""Tensor parallelism of mixture-of-experts models: each rank holds every expert's slice of the
intermediate dimension (and the router whole); TP=2 over gloo gives the TP=1 logits."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from model_fixtures import embedded_tokenizer, save_tiny_hf_model
from radixserve.config import EngineConfig
from radixserve.core.forward_batch import ForwardBatch
from radixserve.distributed.group import TensorParallel
from radixserve.models.loader import safetensors_weights
from radixserve.models.moe import SparseMoE
from radixserve.models.registry import model_class
from radixserve.runtime.model_runner import ModelRunner

KINDS = ["qwen3-moe", "mixtral"]


class _FakeGroupTP(TensorParallel):
    """A rank's view without a process group (loading only)."""

    def __init__(self, rank: int, size: int) -> None:
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "group", None)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tok = embedded_tokenizer()
    return {kind: save_tiny_hf_model(kind, str(tmp_path_factory.mktemp(kind)), tok) for kind in KINDS + ["qwen2-moe"]}


def _batch(rows: list[tuple[int, int, int]], seqs: dict[int, list[int]], slot_of) -> ForwardBatch:
    """rows: (row, start, end) -> a ForwardBatch computing positions start..end-1 of each row."""
    ids, pos, out, starts = [], [], [], []
    for row, start, end in rows:
        starts.append(len(ids))
        ids += seqs[row][start:end]
        pos += range(start, end)
        out += [slot_of(row, p) for p in range(start, end)]
    ext = [end - start for _, start, end in rows]
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return ForwardBatch(input_ids=t(ids), positions=t(pos), out_slots=t(out), req_rows=t([r[0] for r in rows]),
                        seq_lens=t([r[2] for r in rows]), extend_lens=t(ext), extend_starts=t(starts),
                        logits_indices=torch.arange(len(ids)), max_seq_len=max(r[2] for r in rows),
                        max_extend_len=max(ext), is_decode=all(e == 1 for e in ext))


def _script(runner: ModelRunner) -> list[torch.Tensor]:
    """A batched prefill of two rows, then three batched decode steps -> the logits of each step."""
    gen = torch.Generator().manual_seed(0)
    seqs = {r: torch.randint(3, 49152, (30,), generator=gen).tolist() for r in range(2)}
    slot_of = lambda row, p: 1 + row * 100 + p  # noqa: E731
    for row in seqs:
        runner.req_table.write(row, 0, torch.tensor([slot_of(row, p) for p in range(30)]))
    out = [runner.forward(_batch([(0, 0, 9), (1, 0, 21)], seqs, slot_of))]
    for step in range(3):
        out.append(runner.forward(_batch([(0, 9 + step, 10 + step), (1, 21 + step, 22 + step)], seqs, slot_of)))
    return out


@pytest.mark.parametrize("kind", KINDS + ["qwen2-moe"])  # Qwen2-MoE: its shared expert split like a dense MLP
def test_tp2_logits_match_tp1(checkpoints, kind):
    opts = dict(model=checkpoints[kind], device="cpu", dtype="float32", max_total_tokens=512,
                max_running_requests=4, cuda_graph=False)
    ref = _script(ModelRunner(EngineConfig(**opts)))
    runner = ModelRunner(EngineConfig(**opts, tp=2))
    try:
        moe = next(m for m in runner.model.modules() if isinstance(m, SparseMoE))
        assert moe.experts_down.shape[2] * 2 == moe.experts_gate_up.shape[1]  # half of I, gate and up
        got = _script(runner)
    finally:
        runner.release()
    assert not torch.distributed.is_initialized()
    for step, (a, b) in enumerate(zip(ref, got)):
        scale = max(1.0, a.abs().max().item())
        diff = (a - b).abs().max().item()
        # NOTE: the down projections sum two partial dot products under TP=2: float32 rounding only
        assert diff <= 1e-5 * scale, f"step {step}: TP=2 vs TP=1 max diff {diff:.3g} (scale {scale:.1f})"
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_loading_takes_each_ranks_expert_slice(checkpoints, kind):
    state = dict(safetensors_weights(checkpoints[kind]))
    config = AutoConfig.from_pretrained(checkpoints[kind])
    shard = model_class(config)(config, torch.float32, "cpu", tp=_FakeGroupTP(1, 2))
    shard.load_weights(state.items())
    moe = shard.layers[0].mlp
    inter = moe.intermediate  # this rank's half
    p = "model.layers.0." + ("block_sparse_moe.experts.3." if kind == "mixtral" else "mlp.experts.3.")
    gate, up, down = (("w1", "w3", "w2") if kind == "mixtral" else ("gate_proj", "up_proj", "down_proj"))
    assert torch.equal(moe.experts_gate_up[3, :inter], state[p + gate + ".weight"][inter:])
    assert torch.equal(moe.experts_gate_up[3, inter:], state[p + up + ".weight"][inter:])
    assert torch.equal(moe.experts_down[3], state[p + down + ".weight"][:, inter:])
    router = "block_sparse_moe.gate" if kind == "mixtral" else "mlp.gate"
    assert torch.equal(moe.gate.weight, state[f"model.layers.0.{router}.weight"])  # replicated


def test_loading_reports_a_missing_expert(checkpoints):
    state = dict(safetensors_weights(checkpoints["qwen3-moe"]))
    del state["model.layers.2.mlp.experts.5.up_proj.weight"]
    config = AutoConfig.from_pretrained(checkpoints["qwen3-moe"])
    model = model_class(config)(config, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"missing tensors: layers\.2\.mlp\.experts_gate_up\[expert 5, shard 1\]"):
        model.load_weights(state.items())
