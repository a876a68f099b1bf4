"""One engine for the server modules: started once for tests/server/ and shared by every module that
takes server_fixtures' `engine` (each module still builds its own app and server over it).

The modules do not need a fresh engine: their prefix-cache checks use their own cache_salt
namespaces or look for hits, counters are read as deltas, and leak checks wait until the engine is
idle. Starting the embedded model's engine process once instead of once per module saves its
start-up per module."""
from __future__ import annotations

import pytest

from server_fixtures import ENGINE_OPTIONS, SPLIT


@pytest.fixture(scope="package")
def shared_engine():
    """An EngineClient over an engine process (or an in-process Engine, see server_fixtures.SPLIT)."""
    if SPLIT:
        from radixserve.engine.client import EngineClient

        eng = EngineClient(**ENGINE_OPTIONS)
    else:
        from radixserve import Engine

        eng = Engine(**ENGINE_OPTIONS)
    yield eng
    eng.shutdown()
