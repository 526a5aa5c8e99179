"""The balancer's pick over a listener's host table: the settled fast path (a precomputed smooth
WRR cycle), the general path (slow start ramping a host back), least connections, and a retry
that leaves out the host already tried."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lbproxy.balancer import LeastConnections, WeightedRoundRobin
from lbproxy.hosts import Host, HostTable

Bench = Callable[..., object]
NOW = 1000.0


def table(size: int, slow_start: float = 0.0) -> HostTable:
    """``size`` hosts with weights 1, 2, 3, 1, 2, 3, ..."""
    return HostTable([Host(f"i-{i}:80", i % 3 + 1) for i in range(size)], slow_start)


def picks(pick: Callable[..., int | None], tried: int = 0) -> Callable[[], int | None]:
    return lambda: pick(NOW, tried)


@pytest.mark.benchmark(group="balancer pick")
@pytest.mark.parametrize("size", [3, 16])
def test_wrr_settled(benchmark: Bench, size: int) -> None:
    assert benchmark(picks(WeightedRoundRobin(table(size)).pick)) is not None


@pytest.mark.benchmark(group="balancer pick")
@pytest.mark.parametrize("size", [3, 16])
def test_wrr_slow_start(benchmark: Bench, size: int) -> None:
    """A host back from being held down ramps up: every pick weighs every host."""
    hosts = table(size, slow_start=60.0)
    hosts.set_checked_down(0, True, NOW - 1)
    hosts.set_checked_down(0, False, NOW - 1)
    assert not hosts.is_settled(NOW)
    assert benchmark(picks(WeightedRoundRobin(hosts).pick)) is not None


@pytest.mark.benchmark(group="balancer pick")
@pytest.mark.parametrize("size", [3, 16])
def test_wrr_retry(benchmark: Bench, size: int) -> None:
    """A retry's pick: the first host was tried already."""
    assert benchmark(picks(WeightedRoundRobin(table(size)).pick, tried=1)) not in (None, 0)


@pytest.mark.benchmark(group="balancer pick")
@pytest.mark.parametrize("size", [3, 16])
def test_least_connections(benchmark: Bench, size: int) -> None:
    hosts = table(size)
    for i, host in enumerate(hosts.hosts):
        host.in_flight = i % 4
    assert benchmark(picks(LeastConnections(hosts).pick)) is not None
