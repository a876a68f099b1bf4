"""`radixserve serve --ray [ADDRESS] --replicas N`: the flags reach serve_on_ray as a validated
RayDeployment, ServerConfig and engine options (no cluster is started here)."""
from __future__ import annotations

import pytest

pytest.importorskip("ray")

from radixserve import cli  # noqa: E402
from radixserve.deploy import ray_serve  # noqa: E402


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(ray_serve, "serve_on_ray", lambda *a: seen.append(a) or 0)
    return seen


def test_ray_flag_without_address_starts_a_local_cluster(calls):
    assert cli.main(["serve", "--ray", "--replicas", "3", "--port", "9001", "--device", "cpu"]) == 0
    address, deployment, config, engine = calls[0]
    assert address is None
    assert (deployment.replicas, deployment.policy) == (3, "cache-aware")
    assert deployment.router_kwargs["balance_abs_threshold"] == 16
    assert config.port == 9001
    assert engine["device"] == "cpu"


def test_ray_address_and_policy_pass_through(calls):
    assert cli.main(["serve", "--ray", "auto", "--policy", "round-robin", "--replica-cpus", "2"]) == 0
    address, deployment, _, _ = calls[0]
    assert (address, deployment.policy, deployment.num_cpus) == ("auto", "round-robin", 2.0)


@pytest.mark.parametrize("argv, message", [(["--replicas", "0"], "replicas must be >= 1"),
                                           (["--dp", "2"], "--ray replaces --dp")])
def test_bad_values_are_refused_naming_the_flag(calls, capsys, argv, message):
    assert cli.main(["serve", "--ray", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not calls
