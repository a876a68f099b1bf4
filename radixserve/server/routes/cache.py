"""POST /cache/save: snapshot the radix cache (tree and K/V) into the server's --cache-dir.

GET /cache/events: what the radix tree cached and evicted since a cursor, for routers that
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
        return error_response(503, "The engine is not running; see the server log.")
    try:
        body = await asyncio.wait_for(engine.cache_events(after, epoch, limit), READ_TIMEOUT_S)
    except asyncio.TimeoutError:
        return error_response(503, f"The engine did not answer within {READ_TIMEOUT_S:.0f} s; retry later.")
    return JSONResponse({**body, "model": st.model_name, "max_model_len": engine.max_context_len,
                         "vocab_size": engine.vocab_size})


@router.post("/cache/save")
async def cache_save(request: Request) -> Response:
    """Write the snapshot now (atomically; the previous one stays whole if this fails)."""
    engine = request.app.state.engine
    if not engine.is_alive():
        return error_response(503, "The engine is not running; see the server log.")
    try:
        info = await engine.save_cache()
    except (ValueError, RuntimeError) as e:
        if "no cache_dir" in str(e):
            return error_response(400, "This server has no cache directory; start it with --cache-dir DIR.")
        raise
    return JSONResponse(info)
