"""The radix cache on disk: the tree's token paths and their K/V, saved and restored whole.

A snapshot is one safetensors file: per layer the K and V of every cached token (in the order of
the tree's nodes, parents before children), the token runs of the nodes, and in its metadata the
nodes' parents and namespaces and the fingerprint of what computed the K/V (model, weights, dtype,
page size, tokenizer, KV shape). A restore into a different fingerprint is refused: K/V of another
model would give wrong tokens without any error. Saving writes a temporary file beside the target
and renames it over the target, so a crash during a save leaves the previous snapshot whole.

Restoring inserts the paths parent first into a fresh tree with newly allocated slots and copies
their K/V into the pool, until the pool is full (what does not fit is left out, leaves last).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import torch

from radixserve.cache.kv_pool import KVPool
from radixserve.cache.radix_tree import RadixTree

logger = logging.getLogger(__name__)
FORMAT = "radixserve-kv-snapshot/1"
FILE_NAME = "radix_cache.safetensors"


class SnapshotError(ValueError):
    """A snapshot that cannot be used: missing parts, corrupt, or made by another model/config."""


def save(path: str, tree: RadixTree, pool: KVPool, fingerprint: str) -> dict:
    """Write the whole tree and its K/V to `path` atomically; returns what was written."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    exported = tree.export()
    nodes = [(ns, parent, key) for ns, parent, key, _ in exported]
    slots = [value for _, _, _, value in exported]
    index = torch.cat(slots) if slots else torch.zeros(0, dtype=torch.int64)
    dev_index = index.to(pool.k[0].device)
    tensors = {"tokens": torch.tensor([t for _, _, key in nodes for t in key], dtype=torch.int64)}
    for layer in range(len(pool.k)):
        tensors[f"k.{layer}"] = pool.k[layer][dev_index].cpu().contiguous()
        tensors[f"v.{layer}"] = pool.v[layer][dev_index].cpu().contiguous()
    meta = {"format": FORMAT, "fingerprint": fingerprint, "page_size": str(tree.page_size),
            "nodes": json.dumps([[ns, parent, len(key)] for ns, parent, key in nodes])}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".snapshot-", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)  # NOTE: atomic on POSIX: readers see the old file or the new one
    except BaseException:
        os.unlink(tmp)
        raise
    info = {"path": path, "nodes": len(nodes), "tokens": int(index.numel()), "bytes": os.path.getsize(path),
            "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("saved the radix cache: %s", info)
    return info


def restore(path: str, tree: RadixTree, pool: KVPool, fingerprint: str) -> dict:
    """Load `path` into an empty `tree` and `pool`; SnapshotError when it does not fit this engine."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    t0 = time.perf_counter()
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            _check(meta, fingerprint, tree.page_size, path)
            nodes = json.loads(meta["nodes"])
            tokens = f.get_tensor("tokens").tolist()
            layers = len(pool.k)
            if f"k.{layers - 1}" not in f.keys() or f"k.{layers}" in f.keys():
                raise SnapshotError(f"{path}: the snapshot's layer count differs from this model's ({layers})")
            k = [f.get_tensor(f"k.{i}") for i in range(layers)]
            v = [f.get_tensor(f"v.{i}") for i in range(layers)]
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
        raise SnapshotError(f"{path}: not a readable radix cache snapshot ({e})") from None
    if sum(n for _, _, n in nodes) != len(tokens) or any(t.shape[0] != len(tokens) for t in k + v):
        raise SnapshotError(f"{path}: the snapshot is inconsistent (token and K/V counts differ)")
    if tree.total_size:
        raise SnapshotError("restore needs an empty radix cache")
    paths: list[list[int]] = []
    held: list[torch.Tensor | None] = []
    start = restored = 0
    device = pool.k[0].device
    for ns, parent, n in nodes:
        run = tokens[start:start + n]
        src = torch.arange(start, start + n)
        start += n
        if parent >= 0 and held[parent] is None:  # its parent did not fit: neither does it
            paths.append([])
            held.append(None)
            continue
        new = tree.allocator.alloc(n // tree.page_size)
        if new is None:
            paths.append([])
            held.append(None)
            continue
        prefix = paths[parent] if parent >= 0 else []
        full = prefix + run
        slots = torch.cat([held[parent], new]) if parent >= 0 else new
        dst = new.to(device)
        for i in range(len(pool.k)):
            pool.k[i][dst] = k[i][src].to(device, pool.dtype)
            pool.v[i][dst] = v[i][src].to(device, pool.dtype)
        tree.insert(full, slots, ns)
        paths.append(full)
        held.append(slots)
        restored += n
    info = {"path": path, "nodes": len(nodes), "tokens": len(tokens), "restored_tokens": restored,
            "seconds": round(time.perf_counter() - t0, 3)}
    logger.info("restored the radix cache: %s", info)
    return info


def _check(meta: dict, fingerprint: str, page_size: int, path: str) -> None:
    if meta.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a radix cache snapshot (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("fingerprint") != fingerprint:
        raise SnapshotError(f"{path}: made by another model or configuration (fingerprint {meta.get('fingerprint')!r}, "
                            f"this engine {fingerprint!r}); refusing it, delete it or point --cache-dir elsewhere")
    if meta.get("page_size") != str(page_size):
        raise SnapshotError(f"{path}: page size {meta.get('page_size')} differs from this engine's {page_size}")
