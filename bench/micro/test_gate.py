"""The authorization gate: the reachability check before every upstream connect or reuse
(``pool.check_gate``, ``Reach.permits``, ``PoolSet.take_idle``), permitted and refused."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from lbproxy.authz import Endpoint, Reach, build_reachability
from lbproxy.configload import parse_config
from lbproxy.errors import UpstreamNotAuthorized
from lbproxy.pool import PoolSet, check_gate

Bench = Callable[..., object]
DEMO = Path(__file__).resolve().parents[2] / "lbproxy" / "demo.toml"


@pytest.fixture(scope="module")
def reach() -> Reach:
    config = parse_config(tomllib.loads(DEMO.read_text()), "demo.toml")
    return build_reachability(config).by_authorization["web-lb-8081"]


@pytest.fixture(scope="module")
def outsider() -> Endpoint:
    return Endpoint("127.0.0.99", 9001, 1, "i-elsewhere")


@pytest.mark.benchmark(group="authorization gate")
def test_check_gate_permits(benchmark: Bench, reach: Reach) -> None:
    endpoint = reach.endpoints[-1]
    benchmark(check_gate, reach, endpoint)


@pytest.mark.benchmark(group="authorization gate")
def test_check_gate_refuses(benchmark: Bench, reach: Reach, outsider: Endpoint) -> None:
    def refused() -> bool:
        try:
            check_gate(reach, outsider)
        except UpstreamNotAuthorized:
            return True
        return False

    assert benchmark(refused)


@pytest.mark.benchmark(group="authorization gate")
def test_reach_permits(benchmark: Bench, reach: Reach) -> None:
    endpoint = reach.endpoints[-1]
    assert benchmark(reach.permits, endpoint.ip, endpoint.port)


@pytest.mark.benchmark(group="authorization gate")
def test_take_idle_gate_and_empty_pool(benchmark: Bench, reach: Reach) -> None:
    """The relay's path to a pooled connection: the gate, then the pool lookup (empty here)."""
    pools = PoolSet(64, 60.0)
    endpoint = reach.endpoints[0]
    pools.pool(endpoint)
    assert benchmark(pools.take_idle, reach, endpoint) is None
