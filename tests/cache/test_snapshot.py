"""Radix cache snapshots: save -> a new engine restores -> the same prompts hit the cache and give
the same tokens; the tree's paths and K/V survive exactly; a foreign, corrupt or truncated
snapshot is refused with a clear message; a failed save leaves the previous snapshot whole."""
from __future__ import annotations

import os
import random

import pytest
import torch

from radixserve import Engine, SamplingParams
from radixserve.cache import snapshot
from radixserve.engine import cache_snapshot

MODEL = "dummy:tiny-llama"
GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


def _engine(cache_dir, **kw) -> Engine:
    opts = dict(device="cpu", dtype="float32", max_total_tokens=4096, check_integrity=True, cache_dir=str(cache_dir))
    return Engine(MODEL, **{**opts, **kw})


def _prompts():
    rng = random.Random(0)
    system = [rng.randrange(100, 3000) for _ in range(40)]
    return [system + [rng.randrange(100, 3000) for _ in range(8)] for _ in range(4)] + \
        [[rng.randrange(100, 3000) for _ in range(30)]]


def _paths(tree) -> dict:
    """namespace -> every cached token path (the brute-force view of the tree)."""
    out, nodes = {}, tree.export()
    full = []
    for ns, parent, key, _ in nodes:
        full.append((full[parent] if parent >= 0 else []) + key)
        out.setdefault(ns, set()).add(tuple(full[-1]))
    return out


def _kv_of(engine, path, ns=None):
    m = engine.kv.tree.match_prefix(list(path), ns)
    pool = engine.runner.pool
    return torch.stack([torch.stack([pool.k[i][m.slots], pool.v[i][m.slots]]) for i in range(len(pool.k))])


def test_save_restore_hits_and_same_tokens(tmp_path):
    prompts = _prompts()
    a = _engine(tmp_path)
    try:
        first = [o.token_ids for o in a.generate(input_ids=prompts, sampling_params=GREEDY)]
        a.generate(input_ids=prompts[:2], sampling_params=GREEDY, cache_salt="tenant-b")
        paths = _paths(a.kv.tree)
        kv = {(ns, p): _kv_of(a, p, ns) for ns, ps in paths.items() for p in ps}
    finally:
        a.shutdown()  # saves into cache_dir
    assert os.path.exists(cache_snapshot.snapshot_path(str(tmp_path)))
    b = _engine(tmp_path)
    try:
        assert b.cache_restored["restored_tokens"] == b.cache_restored["tokens"] > 0
        assert _paths(b.kv.tree) == paths  # every path, in every namespace
        for ns, ps in paths.items():
            for p in ps:
                assert torch.equal(_kv_of(b, p, ns), kv[ns, p])  # the K/V, exactly
        b.check_integrity()
        outs = b.generate(input_ids=prompts, sampling_params=GREEDY)
        assert [o.token_ids for o in outs] == first
        assert all(o.cached_tokens >= len(p) - 1 for o, p in zip(outs, prompts))  # served from the restored tree
    finally:
        b.shutdown()


def test_restore_stops_where_the_pool_is_full(tmp_path):
    a = _engine(tmp_path)
    try:
        a.generate(input_ids=_prompts(), sampling_params=GREEDY)
    finally:
        a.shutdown()
    b = _engine(tmp_path, max_total_tokens=64)
    try:
        info = b.cache_restored
        assert 0 < info["restored_tokens"] < info["tokens"]
        b.check_integrity()
        assert b.generate(input_ids=_prompts()[:1], sampling_params=GREEDY)[0].token_ids
    finally:
        b.shutdown()


def test_foreign_and_corrupt_snapshots_are_refused(tmp_path, caplog):
    a = _engine(tmp_path)
    try:
        a.generate(input_ids=_prompts(), sampling_params=GREEDY)
        fp = cache_snapshot.fingerprint(a)
        assert cache_snapshot.fingerprint(a) == fp
    finally:
        a.shutdown()
    path = cache_snapshot.snapshot_path(str(tmp_path))
    # another model configuration: a different seed gives different random weights
    other = _engine(tmp_path, seed=1)
    try:
        assert other.cache_restored is None and other.kv.tree.total_size == 0
        assert "made by another model" in caplog.text
        with pytest.raises(snapshot.SnapshotError, match="another model"):
            snapshot.restore(path, other.kv.tree, other.runner.pool, cache_snapshot.fingerprint(other))
    finally:
        other.loop.stop()  # NOTE: not shutdown(): that would save over the snapshot
    data = open(path, "rb").read()
    bad = tmp_path / "bad"
    bad.mkdir()
    open(cache_snapshot.snapshot_path(str(bad)), "wb").write(data[:len(data) // 2])  # truncated
    c = _engine(bad)
    try:
        assert c.cache_restored is None and "not a readable radix cache snapshot" in caplog.text
    finally:
        c.loop.stop()


def test_a_failed_save_leaves_the_previous_snapshot(tmp_path, monkeypatch):
    a = _engine(tmp_path)
    try:
        a.generate(input_ids=_prompts(), sampling_params=GREEDY)
        first = a.save_cache_to()
        before = open(first["path"], "rb").read()
        a.generate(input_ids=[[5, 6, 7, 8, 9] * 4], sampling_params=GREEDY)

        def crash(tensors, path, metadata):  # a crash part-way through writing
            open(path, "wb").write(b"partial")
            raise OSError("disk full")
        import safetensors.torch
        monkeypatch.setattr(safetensors.torch, "save_file", crash)
        with pytest.raises(OSError, match="disk full"):
            a.save_cache_to()
        assert open(first["path"], "rb").read() == before
        assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    finally:
        monkeypatch.undo()
        a.shutdown()


def test_http_save_through_the_engine_process_and_restore(tmp_path):
    """POST /cache/save on the split layout (engine process): the snapshot a new engine restores
    serves the same prompt from the cache; a server without --cache-dir answers 400."""
    import httpx

    from radixserve.engine.client import EngineClient
    from radixserve.server import build_app
    from radixserve.server.testing import ServerThread

    prompt = _prompts()[0]
    eng = EngineClient(model=MODEL, device="cpu", dtype="float32", max_total_tokens=4096, cache_dir=str(tmp_path))
    try:
        with ServerThread(build_app(eng)) as srv:
            r = httpx.post(srv.url + "/generate", json={"input_ids": prompt, "sampling_params": {
                "max_new_tokens": 12, "temperature": 0, "ignore_eos": True}}, timeout=120)
            assert r.status_code == 200, r.text
            first = r.json()
            saved = httpx.post(srv.url + "/cache/save", timeout=120)
            assert saved.status_code == 200, saved.text
            assert saved.json()["tokens"] >= len(prompt)
    finally:
        eng.shutdown()
    b = _engine(tmp_path)
    try:
        out = b.generate(input_ids=[prompt], sampling_params=GREEDY)[0]
        assert out.cached_tokens >= len(prompt) - 1
        assert out.token_ids == first["output_ids"]
    finally:
        b.loop.stop()
    plain = Engine(MODEL, device="cpu", dtype="float32", max_total_tokens=1024)
    try:
        with ServerThread(build_app(plain)) as srv:
            r = httpx.post(srv.url + "/cache/save", timeout=60)
            assert r.status_code == 400 and "--cache-dir" in r.json()["error"]["message"]
    finally:
        plain.shutdown()
