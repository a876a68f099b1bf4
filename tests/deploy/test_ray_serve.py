"""radixserve on Ray Serve (radixserve/deploy/): one local Ray cluster for the module, two engine
replicas of the embedded model behind the ingress, routed by RadixRequestRouter.

Oracles: the openai SDK as the client, and one in-process Engine's greedy output on the same prompts.
"""
from __future__ import annotations

import concurrent.futures
import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from engine_fixtures import QUESTIONS, SYSTEM, make_engine  # noqa: E402
from port_fixtures import free_port_block  # noqa: E402

from radixserve import SamplingParams  # noqa: E402
from radixserve.deploy.ray_serve import APP_NAME, RayDeployment, build_application  # noqa: E402

pytestmark = pytest.mark.slow
ENGINE = dict(device="cpu", dtype="float32", max_total_tokens=4096)
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def base_url():
    port = free_port_block()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # NOTE: half a CPU each, so a restarted replica finds room while the other still runs
        app = build_application(ENGINE, RayDeployment(replicas=2, num_cpus=0.5, stats_period_s=0.5))
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        _await_running(600)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _await_running(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(APP_NAME)
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"the application failed to deploy: {app.message}")
        time.sleep(1)
    raise TimeoutError("the application did not start")


@pytest.fixture(scope="module")
def client(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300, max_retries=0)
    client.served_model = client.models.list().data[0].id
    return client


@pytest.fixture(scope="module")
def oracle():
    """One engine's greedy answers to the test's chats."""
    engine = make_engine(**ENGINE)
    try:
        sp = SamplingParams(max_new_tokens=MAX_TOKENS, temperature=0.0)
        return {q: engine.chat(_messages(q), sp).text for q in QUESTIONS}
    finally:
        engine.shutdown()


def _messages(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _chat(client, question: str):
    return client.chat.completions.create(model=client.served_model, messages=_messages(question),
                                          max_tokens=MAX_TOKENS, temperature=0)


def test_two_replicas_answer_the_openai_sdk_as_one_engine(client, oracle):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: _chat(client, q), QUESTIONS))
    assert [a.choices[0].message.content for a in answers] == [oracle[q] for q in QUESTIONS]
    assert [m.id for m in client.models.list().data] == [client.served_model]


def test_streaming_through_the_ingress_matches(client, oracle):
    q = QUESTIONS[3]
    stream = client.chat.completions.create(model=client.served_model, messages=_messages(q), max_tokens=MAX_TOKENS,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == oracle[q]


def test_cache_aware_router_sends_a_shared_prefix_to_the_replica_that_holds_it(client):
    """Sequential chats sharing the long system prompt: after the first, each finds that prefix
    cached, because the router sends it where the prefix is (Ray's default router would alternate)."""
    salt_system = "Tenant 7. " + SYSTEM  # NOTE: a prefix no earlier test cached
    cached = []
    for q in QUESTIONS[:5]:
        r = client.chat.completions.create(model=client.served_model, max_tokens=4, temperature=0,
                                           messages=[{"role": "system", "content": salt_system},
                                                     {"role": "user", "content": q}])
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    assert cached[0] < 16, cached  # the chat template's first tokens at most
    assert all(c >= 64 for c in cached[1:]), cached


def test_a_killed_replica_is_restarted_and_the_app_keeps_serving(client, oracle):
    """Kill one engine replica's actor while requests run: Ray starts a new one. Clients see
    either the right answer or a 5xx naming the failure (a request whose replica died is retried
    once on another when it is whole-answer, so 5xx should be rare); nothing else."""
    replicas = _engine_replica_actors()
    assert len(replicas) == 2
    seen: list[str] = []

    def one(q):
        try:
            return "ok" if _chat(client, q).choices[0].message.content == oracle[q] else "wrong"
        except openai.APIStatusError as exc:
            return f"HTTP {exc.status_code}"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, q) for q in QUESTIONS]
        time.sleep(1.0)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        seen = [f.result(timeout=600) for f in futures]
    print("clients saw during the kill:", seen)
    assert "wrong" not in seen
    assert all(s == "ok" or s.startswith("HTTP 5") for s in seen), seen
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        now = _engine_replica_actors()
        if len(now) == 2 and replicas[0] not in now and _running_replicas() == 2:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"the killed replica was not replaced: {_engine_replica_actors()}")
    after = [one(q) for q in QUESTIONS[:4]]
    assert after == ["ok"] * 4


def _engine_replica_actors() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and "RadixEngine" in a["name"])


def _running_replicas() -> int:
    deployment = serve.status().applications[APP_NAME].deployments["RadixEngine"]
    return deployment.replica_states.get("RUNNING", 0)


def test_a_stream_whose_replica_dies_ends_with_an_in_band_503(client):
    """Both replicas are killed under a running stream (the test cannot tell which one serves it):
    the client gets the tokens sent so far, then an error event naming the failure; once Ray has
    replaced the replicas, requests are answered again."""
    before = _engine_replica_actors()
    stream = client.chat.completions.create(model=client.served_model, messages=_messages("Tell me a long story."),
                                            max_tokens=400, temperature=0, stream=True)
    received = 0
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received += 1
            if received == 2:
                for name in before:
                    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    print(f"the stream sent {received} chunks, then: {err.value}")
    assert received >= 2
    assert "replica serving this stream died" in str(err.value)
    deadline = time.monotonic() + 600
    while not (_running_replicas() == 2 and not set(before) & set(_engine_replica_actors())):
        assert time.monotonic() < deadline, "the killed replicas were not replaced"
        time.sleep(1)
    assert _chat(client, QUESTIONS[0]).choices[0].message.content
