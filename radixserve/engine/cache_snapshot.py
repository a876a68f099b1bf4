"""The engine's side of radix cache snapshots (radixserve/cache/snapshot.py): what identifies the
K/V it computes (the fingerprint), and when it restores and saves (start, shutdown, on request).

The fingerprint covers everything that changes the K/V of a token sequence: the model's source and
its files' sizes and modification times (new weights under the same path differ), the seed of
random weights, dtype, quantization, page size, the KV pool's shape, and the tokenizer's vocabulary.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from radixserve.cache import snapshot

logger = logging.getLogger(__name__)


def fingerprint(engine) -> str:
    runner, cfg = engine.runner, engine.config
    files = []
    path = runner.source.split(":", 1)[-1] if ":" in runner.source else runner.source
    if os.path.exists(path):
        targets = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in sorted(os.listdir(path))]
        files = [(os.path.basename(t), os.path.getsize(t), int(os.path.getmtime(t))) for t in targets if os.path.isfile(t)]
    vocab = hashlib.sha256(json.dumps(sorted(engine.tokenizer.get_vocab().items())).encode()).hexdigest()
    k = runner.pool.k[0]
    ident = {"source": runner.source, "files": files, "seed": cfg.seed, "dtype": str(runner.dtype),
             "quantization": cfg.quantization, "page_size": cfg.page_size, "layers": len(runner.pool.k),
             "kv_shape": list(k.shape[1:]), "kv_dtype": str(k.dtype), "vocab": vocab}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def snapshot_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, snapshot.FILE_NAME)


def restore_at_start(engine) -> dict | None:
    """Restore the snapshot in config.cache_dir, if any; one that does not fit is logged and skipped
    (the engine starts with an empty cache, and its own snapshot replaces that file at shutdown)."""
    path = snapshot_path(engine.config.cache_dir)
    if not os.path.exists(path):
        return None
    try:
        return snapshot.restore(path, engine.kv.tree, engine.runner.pool, fingerprint(engine))
    except snapshot.SnapshotError as e:
        logger.error("not restoring the radix cache: %s", e)
        return None


def save(engine, path: str | None = None) -> dict:
    """Save the tree and its K/V (on the loop thread, between two steps, or with the loop stopped)."""
    if path is None:
        if engine.config.cache_dir is None:
            raise ValueError("no cache_dir configured: start with --cache-dir DIR to save the radix cache")
        path = snapshot_path(engine.config.cache_dir)
    return snapshot.save(path, engine.kv.tree, engine.runner.pool, fingerprint(engine))
