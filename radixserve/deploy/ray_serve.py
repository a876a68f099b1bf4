"""A Ray Serve application serving radixserve: an engine deployment (N replicas, one Engine each,
routed by RadixRequestRouter) behind an ingress deployment that serves build_app's routes
(OpenAI, native, TGI, Ollama) over a RayEngine.

    app = build_application(dict(model=None), replicas=2)
    serve.run(app, name="radixserve", route_prefix="/")

`radixserve serve --ray [ADDRESS] --replicas N` does this on a cluster (`serve_on_ray`).
"""
from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from radixserve.deploy.ray_engine import EngineReplica, RayEngine
from radixserve.server.app import ServerConfig, build_app

logger = logging.getLogger(__name__)
APP_NAME = "radixserve"


@dataclass(frozen=True)
class RayDeployment:
    """How the engine deployment is placed and routed."""

    replicas: int = 1
    num_cpus: float = 1.0  # per replica (the ingress takes none: it waits on replicas)
    policy: str = "cache-aware"  # or "round-robin"; "ray-default" leaves Ray's power-of-two router
    router_kwargs: dict[str, Any] = field(default_factory=dict)  # balance thresholds (RadixRequestRouter)
    stats_period_s: float = 1.0  # how often each replica reports its tree to the router
    max_ongoing_requests: int = 64  # per replica
    health_check_period_s: float = 2.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.policy not in ("cache-aware", "round-robin", "ray-default"):
            raise ValueError(f"policy must be cache-aware, round-robin or ray-default, got {self.policy!r}")
        if self.stats_period_s <= 0:
            raise ValueError(f"stats_period_s must be > 0, got {self.stats_period_s}")


def _num_gpus(engine_options: dict[str, Any]) -> int:
    """A replica's GPUs: its tensor-parallel size when it runs on GPU (none on CPU)."""
    device = engine_options.get("device", "auto")
    if device == "cpu":
        return 0
    if device == "auto":
        try:
            import torch
            if not torch.cuda.is_available():
                return 0
        except ImportError:
            return 0
    return int(engine_options.get("tp", 1))


@serve.ingress()
class Ingress:
    """The HTTP face: build_app over a RayEngine (requests prepared here, once)."""

    def __init__(self, engines: Any, server_config: ServerConfig) -> None:
        self.engines = engines  # DeploymentHandle to the EngineReplica deployment
        self.server_config = server_config

    async def __serve_build_asgi_app__(self):
        self.engine = await RayEngine.connect(self.engines)
        return build_app(self.engine, self.server_config)


def build_application(engine_options: dict[str, Any], deployment: RayDeployment | None = None,
                      server_config: ServerConfig | None = None):
    """The bound Ray Serve application (give it to serve.run)."""
    deployment = deployment or RayDeployment()
    gpus = _num_gpus(engine_options)
    if gpus > 1:
        # NOTE: a TP replica's ranks would be Ray workers in one placement group; not built yet
        raise ValueError("tensor parallelism inside a Ray replica (--tp > 1) is not supported yet")
    options: dict[str, Any] = dict(
        num_replicas=deployment.replicas, max_ongoing_requests=deployment.max_ongoing_requests,
        ray_actor_options={"num_cpus": deployment.num_cpus, "num_gpus": gpus},
        health_check_period_s=deployment.health_check_period_s)
    if deployment.policy != "ray-default":
        options["request_router_config"] = RequestRouterConfig(
            request_router_class="radixserve.deploy.ray_router:RadixRequestRouter",
            request_router_kwargs={"policy": deployment.policy, **deployment.router_kwargs},
            request_routing_stats_period_s=deployment.stats_period_s,
            request_routing_stats_timeout_s=max(30.0, deployment.stats_period_s))
    engines = serve.deployment(EngineReplica, name="RadixEngine").options(**options).bind(engine_options)
    ingress = serve.deployment(Ingress, name="RadixIngress").options(
        num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
    return ingress.bind(engines, server_config or ServerConfig())


def serve_on_ray(address: str | None, deployment: RayDeployment, server_config: ServerConfig,
                 engine_options: dict[str, Any]) -> int:
    """Connect to (or start) a Ray cluster, serve the application on server_config's host and port
    until SIGINT/SIGTERM, then delete it. `address`: a cluster ("auto", "ray://..."), None starts one."""
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": server_config.host, "port": server_config.port})
    serve.run(build_application(engine_options, deployment, server_config), name=APP_NAME, route_prefix="/")
    logger.info("serving on Ray: http://%s:%d (%d replicas)", server_config.host, server_config.port,
                deployment.replicas)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):  # NOTE: a timed wait, so the signal handler runs promptly
        pass
    serve.delete(APP_NAME)
    serve.shutdown()
    return 0
