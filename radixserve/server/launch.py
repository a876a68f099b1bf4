"""Run the HTTP server in the foreground until SIGINT/SIGTERM, then shut down cleanly (exit 0)."""
from __future__ import annotations

import logging
from typing import Any

from radixserve.engine.interface import EngineHandle
from radixserve.server.app import ServerConfig, build_app
from radixserve.server.shutdown import DrainingServer, bind_socket, exit_on_next_signal

logger = logging.getLogger(__name__)


def serve(config: ServerConfig, engine_process: bool = True, **engine_options: Any) -> int:
    """Load the engine with `engine_options` (EngineConfig fields), serve it, return the exit code.

    engine_process: the scheduler and model run in their own process (radixserve/engine/process.py),
    this one does HTTP, tokenisation and text; False keeps everything in this process.

    The port is bound first: a taken port is a ValueError before any model loads. On SIGTERM the
    server stops accepting connections and lets in-flight requests finish until shortly before
    `config.graceful_shutdown_s`, then aborts them (each stream gets its final event); on SIGINT
    it aborts them at once; a second signal exits at once (radixserve/server/shutdown.py).
    Afterwards the engine is shut down. If the engine process dies, requests in flight and new
    ones get 503, the server stops and the exit code is 1.
    """
    import uvicorn

    from radixserve import Engine
    from radixserve.engine.client import EngineClient

    failed: list[bool] = []
    servers: list[Any] = []

    def on_death() -> None:
        failed.append(True)
        logger.error("the engine process died; stopping the server")
        if servers:
            servers[0].should_exit = True

    sock = bind_socket(config.host, config.port)
    engine: EngineHandle
    try:
        if engine_process:
            engine = EngineClient(on_death=on_death, log_level=config.log_level, **engine_options)
        else:
            engine = Engine(**engine_options)
    except BaseException:
        sock.close()
        raise
    try:
        app = build_app(engine, config)
        uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                   timeout_graceful_shutdown=int(config.graceful_shutdown_s) or None,
                                   lifespan="off", access_log=config.log_level == "debug")
        server = DrainingServer(uv_config, engine.abort_all, config.graceful_shutdown_s)
        servers.append(server)
        if failed:  # died while the app was being built
            return 1
        if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
            logger.warning("serving on %s without an API key: anyone who can reach this address can use it",
                           config.host)
        logger.info("serving %s on http://%s:%d", app.state.model_name, config.host, config.port)
        server.run(sockets=[sock])
    finally:
        exit_on_next_signal()  # NOTE: a signal while the engine shuts down means "now"
        sock.close()
        engine.shutdown()
    if failed:
        logger.error("exiting: the engine process died")
        return 1
    logger.info("shut down cleanly")
    return 0

