"""One whole request through the relay over in-memory transports (bench/relay_inmemory.py):
the client's request parsed, routed, balanced, gated, rewritten and written to a pooled
upstream, its response parsed, rewritten and written back; no syscall."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from relay_inmemory import InMemoryRelay

Bench = Callable[..., object]


@pytest.fixture(params=["httptools", "h11"])
def relay(request: pytest.FixtureRequest) -> Iterator[InMemoryRelay]:
    relay = InMemoryRelay(str(request.param))
    yield relay
    relay.close()


@pytest.mark.benchmark(group="relay: one request in memory")
def test_one_request(benchmark: Bench, relay: InMemoryRelay) -> None:
    benchmark(relay.one_request)
    assert relay.client_transport.writes > 0
    assert not relay.client_transport.closed
