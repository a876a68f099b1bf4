"""radixserve on a simulated two-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this
machine, one CPU each): the two engine replicas (one CPU each) must land on different nodes, and
the application answers the openai SDK as one engine would. The model is a tiny random Llama
(dummy:tiny-llama, the same seeded weights in every process): placement is the subject, not the model."""
from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from engine_fixtures import make_engine  # noqa: E402
from port_fixtures import free_port_block  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from radixserve import SamplingParams  # noqa: E402
from radixserve.deploy.ray_serve import APP_NAME, RayDeployment, build_application  # noqa: E402

pytestmark = pytest.mark.slow
ENGINE = dict(model="dummy:tiny-llama", device="cpu", dtype="float32", max_total_tokens=4096)
PROMPTS = ["The capital of France is", "List of European capitals: Paris, Berlin, Madrid,", "1, 2, 3, 4, 5,",
           "Q: What is the largest planet in our solar system?\nA:"]


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def base_url(cluster):
    port = free_port_block()
    # NOTE: one HTTP proxy (on the head): the two raylets share this machine's address and ports
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    app = build_application(ENGINE, RayDeployment(replicas=2, num_cpus=1, stats_period_s=0.5))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 600
    while getattr(serve.status().applications.get(APP_NAME), "status", None) != "RUNNING":
        assert time.monotonic() < deadline, "the application did not start"
        time.sleep(1)
    return f"http://127.0.0.1:{port}"


def test_replicas_run_on_different_nodes(base_url):
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and "RadixEngine" in a["name"]]
    assert len(names) == 2
    nodes = {ray.get(ray.get_actor(n, namespace="serve").__ray_call__.remote(
        lambda self: ray.get_runtime_context().get_node_id()), timeout=120) for n in names}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2


def test_two_node_fleet_answers_as_one_engine(base_url):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", timeout=300, max_retries=0)
    model = client.models.list().data[0].id
    got = [client.completions.create(model=model, prompt=p, max_tokens=10, temperature=0).choices[0].text
           for p in PROMPTS]
    engine = make_engine(**ENGINE)
    try:
        want = [o.text for o in engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, temperature=0.0))]
    finally:
        engine.shutdown()
    assert got == want
