"""GET /cache/events: what the radix tree cached and evicted since a cursor, for routers that
mirror this cache to the token (see radixserve/cache/cache_events.py).

`?after=<seq>&epoch=<epoch>` answers the events with seq > after, oldest first:
    {"epoch", "page_size", "cache_enabled", "model", "max_model_len", "vocab_size", "head",
     "events": [{"seq", "op": "insert" | "evict", "namespace", "shared", "tail", "tokens"}
                | {"seq", "op": "reset"}],
     "more": bool}
An insert's path is the new leaf's whole token path; an eviction's is the prefix + first page of
the evicted run (the tree holds no path starting with it any more). Each path is the previous
event's path in this answer cut to `shared` tokens, then `tail`. `head` is the newest event's
seq; with `more` the answer stopped at `limit` events.

Without a cursor, with another epoch (the server restarted) or with a cursor the bounded log no
longer reaches, the answer is a resync instead of "events":
    "resync": {"head": seq, "namespaces": [{"namespace", "nodes": [[parent index or -1, tokens]]}]}
the whole tree (parents before children); the reader replaces its mirror and continues from head.
Both are read on the engine's loop thread, so they see the tree between two scheduler steps.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from radixserve.cache.cache_events import RESET
from radixserve.server.engine_io import JSONResponse
from radixserve.server.errors import error_response

router = APIRouter()
READ_TIMEOUT_S = 30.0


@router.get("/cache/events")
async def cache_events(request: Request, after: int = Query(-1, ge=-1), epoch: str | None = None,
                       limit: int = Query(4096, ge=1, le=65536)) -> Response:
    st = request.app.state
    engine = st.engine
    if not engine.is_alive():
        return error_response(503, "The engine loop is not running; see the server log.")

    def read(scheduler) -> tuple[dict, list | None]:  # on the loop thread: no copying, no encoding here
        tree = scheduler.kv.tree
        log = tree.events
        body = {"epoch": log.epoch, "page_size": tree.page_size, "cache_enabled": not tree.disable,
                "model": st.model_name, "max_model_len": engine.max_context_len, "vocab_size": engine.vocab_size,
                "head": log.head}
        events = log.since(after, limit) if epoch == log.epoch else None
        if events is None:
            # NOTE: the tree never mutates a token list in place (a split makes new ones), so the
            # lists can be serialised after the loop thread moves on.
            body["resync"] = {"head": log.head, "namespaces": [
                {"namespace": ns, "nodes": nodes} for ns, nodes in tree.dump()]}
        return body, events

    try:
        body, events = await asyncio.wait_for(asyncio.wrap_future(engine.loop.submit(read)), READ_TIMEOUT_S)
    except asyncio.TimeoutError:
        return error_response(503, f"The engine loop did not answer within {READ_TIMEOUT_S:.0f} s; retry later.")
    if events is not None:
        body["events"] = _encode(events)
        body["more"] = bool(events) and events[-1].seq < body["head"]
    return JSONResponse(body)


def _encode(events) -> list[dict]:
    out, prev = [], ()
    for ev in events:
        if ev.kind == RESET:
            out.append({"seq": ev.seq, "op": RESET})
            continue
        shared = _common_prefix(prev, ev.path)
        out.append({"seq": ev.seq, "op": ev.kind, "namespace": ev.namespace, "shared": shared,
                    "tail": list(ev.path[shared:]), "tokens": ev.tokens})
        prev = ev.path
    return out


def _common_prefix(a: tuple, b: tuple) -> int:
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # NOTE: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
