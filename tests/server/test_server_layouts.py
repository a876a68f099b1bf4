"""The in-process layout (`radixserve serve --no-engine-process`, and build_app over an Engine):
the core server tests of test_server.py, run again over an in-process Engine. The rest of the
server suite runs over the split layout (see server_fixtures.py)."""
from __future__ import annotations

import pytest

from radixserve import Engine
from server_fixtures import ENGINE_OPTIONS, client, http, server  # noqa: F401 - fixtures are used by name
from test_server import (  # noqa: F401 - collected here again, with this module's engine
    test_chat_matches_engine, test_chat_stop, test_client_disconnect_mid_stream_aborts, test_completions_stream,
    test_concurrent_streams, test_shared_prefix_is_cached_and_metrics_move)


@pytest.fixture(scope="module")
def engine():
    eng = Engine(**ENGINE_OPTIONS)
    assert type(eng) is Engine  # the layout this module is about
    yield eng
    eng.shutdown()
