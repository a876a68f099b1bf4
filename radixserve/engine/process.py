"""The engine process of the split server: the scheduler and the model runner own the device here;
the HTTP front end (radixserve/engine/client.py) talks to it over two ZeroMQ ipc sockets.

Threads: the main thread receives the front end's batches and hands them to the scheduler loop;
the loop thread runs steps and, after each (EngineLoop.after_step), sends everything the step
produced as ONE message. Only the loop thread sends. Grammar compiles are watched by a small pool.
No text is made here (Engine(detokenize=False)): events carry token ids.

Signals: SIGINT and SIGTERM are ignored (the front end drains and then asks this process to shut
down). If the front end disappears, in any phase (loading, serving, shutting down), this process
dies with it (radixserve/parent_watch.py: SIGKILL from the kernel on Linux, a pid watcher elsewhere).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radixserve.engine import cache_snapshot, wire
from radixserve.engine.errors import QueueFullError
from radixserve.grammar.errors import GrammarError
from radixserve.parent_watch import die_with_parent

logger = logging.getLogger(__name__)
POLL_MS = 500


class _Outbox:
    """Events and replies gathered between two sends; sent by the loop thread after each step."""

    def __init__(self, sock) -> None:
        self._sock = sock
        self._items: list[wire.FromEngine] = []
        self._lock = threading.Lock()

    def put(self, item: wire.FromEngine) -> None:
        with self._lock:
            self._items.append(item)

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        if items:
            self._sock.send(wire.encode(items), copy=False)


def engine_main(options: dict[str, Any], recv_addr: str, send_addr: str, log_level: str = "INFO",
                parent: int | None = None, pdeathsig: bool = True) -> None:
    """Entry point of the engine process (multiprocessing spawn target). `parent`: the front end's
    pid, which this process must not outlive (`pdeathsig`: started from its main thread)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid() if parent is None else parent
    die_with_parent(parent, pdeathsig)
    import zmq

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s engine %(name)s: %(message)s")
    ctx = zmq.Context(1)
    recv = ctx.socket(zmq.PULL)
    recv.connect(recv_addr)
    send = ctx.socket(zmq.PUSH)
    send.setsockopt(zmq.LINGER, 5000)
    send.connect(send_addr)
    try:
        from radixserve.engine.engine import Engine

        engine = Engine(detokenize=False, **options)
    except ValueError as exc:  # the user's mistake (a missing model, a bad option): the front end says it in one line
        logger.debug("the engine failed to start", exc_info=True)
        send.send(wire.encode([wire.StartupFailed(str(exc), user_error=True)]))
        send.close()
        ctx.term()
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - said to the front end, which exits with it
        logger.exception("the engine failed to start")
        send.send(wire.encode([wire.StartupFailed(f"{type(exc).__name__}: {exc}")]))
        send.close()
        ctx.term()
        raise SystemExit(1) from None
    server = _EngineServer(engine, send)
    try:
        server.run(recv, parent)
    finally:
        engine.shutdown()
        server.outbox.flush()
        recv.close(linger=0)
        send.close()
        ctx.term()
    logger.info("engine process exits")


class _EngineServer:
    def __init__(self, engine, send_sock) -> None:
        self.engine = engine
        self.outbox = _Outbox(send_sock)
        self._grammar_waits = ThreadPoolExecutor(max_workers=4, thread_name_prefix="radixserve-grammar-wait")
        self._stop = False
        engine.loop.after_step = self.outbox.flush
        info = wire.EngineInfo(engine.model_name, engine.max_context_len, engine.vocab_size,
                               tuple(sorted(engine.eos_ids)), engine.kv.allocator.capacity, engine.config,
                               engine.tokenizer, os.getpid())
        send_sock.send(wire.encode([wire.Ready.of(info)]))

    def run(self, recv, parent: int) -> None:
        import zmq

        while not self._stop:
            if not recv.poll(POLL_MS, zmq.POLLIN):
                if os.getppid() != parent:
                    logger.error("the front end is gone; shutting down")
                    return
                if not self.engine.loop.is_alive():
                    logger.error("the scheduler loop stopped; exiting")
                    raise SystemExit(1)
                continue
            for msg in wire.decode_to_engine(recv.recv(copy=False).buffer):
                self._handle(msg)
            self.engine.loop.submit(_noop)  # wake an idle loop: it sends the replies queued above

    def _handle(self, msg: wire.ToEngine) -> None:
        if isinstance(msg, wire.Add):
            self._add(msg)
        elif isinstance(msg, wire.Abort):
            self.engine.abort(msg.rid, msg.reason, msg.index)
        elif isinstance(msg, wire.Call):
            self._call(msg)
        else:  # NOTE: cannot happen: decoding admits the declared types only
            logger.error("unknown message %r", msg)

    def _add(self, msg: wire.Add) -> None:
        """Submit a PreparedRequest: prepared (checked) in the front end, so trusted here."""
        engine, out, rid = self.engine, self.outbox, msg.rid
        try:
            started: set[int] = set()

            def sink(ev) -> None:  # on the loop thread
                r = ev.req
                plp = None
                if r.index not in started:  # prompt logprobs travel with a sample's first message
                    started.add(r.index)
                    if r.params.prompt_logprobs_start is not None:
                        plp = wire.logprobs_to_wire(r.prompt_logprobs) or []
                if ev.finished:
                    out.put(wire.Finished(rid, r.index, r.finish_reason, r.matched_stop, len(r.prompt_ids),
                                          r.cached_tokens or 0, plp))
                    return
                out.put(wire.Tokens(rid, r.index, ev.token_ids, wire.logprobs_to_wire(ev.logprobs),
                                    r.finish_reason, len(r.prompt_ids), r.cached_tokens or 0, plp))

            group = engine.submit(msg.prepared, rid, msg.namespace, sink)
        except QueueFullError as exc:
            out.put(wire.Failed(rid, "queue_full", None, str(exc)))
            return
        except GrammarError as exc:
            out.put(wire.Failed(rid, "grammar", exc.field, str(exc)))
            return
        except ValueError as exc:
            out.put(wire.Failed(rid, "invalid", None, str(exc)))
            return
        if group[0].grammar is not None:
            self._grammar_waits.submit(self._watch_grammar, rid, group)

    def _watch_grammar(self, rid: str, group: list) -> None:
        try:
            self.engine.wait_grammar(group)
        except GrammarError as exc:
            self.engine.abort(rid)
            self.outbox.put(wire.Failed(rid, "grammar", exc.field, str(exc)))
            self.engine.loop.submit(_noop)

    def _call(self, msg: wire.Call) -> None:
        engine, out, call_id, name = self.engine, self.outbox, msg.call_id, msg.name

        def reply(fut) -> None:  # on the loop thread, or here for answers that need no loop
            exc = fut.exception()
            out.put(wire.Reply.of(call_id, exc is None, repr(exc) if exc is not None else fut.result()))

        if name == "stats":
            out.put(wire.Reply.of(call_id, True, engine.stats()))
        elif name == "flush_cache":
            engine.loop.submit(lambda s: s.flush_cache()).add_done_callback(reply)
        elif name == "check_integrity":
            engine.loop.submit(lambda s: s.check_integrity()).add_done_callback(reply)
        elif name == "cache_events":
            # NOTE: the events travel as CacheEvent tuples, pickled; the front end encodes them as JSON.
            engine.read_cache_events(*msg.args).add_done_callback(reply)
        elif name == "save_cache":
            engine.loop.submit(lambda s: cache_snapshot.save(engine)).add_done_callback(reply)
        elif name == "shutdown":
            engine.loop.call(lambda s: s.abort_all(), timeout=30)
            out.put(wire.Reply.of(call_id, True, None))
            self._stop = True
        else:  # NOTE: cannot happen: Call.name is a Literal checked when decoded
            out.put(wire.Reply.of(call_id, False, f"unknown call {name!r}"))


def _noop(_scheduler) -> None:
    return None
