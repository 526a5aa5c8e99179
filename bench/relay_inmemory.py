"""One whole request through the relay over in-memory transports: the Python cost of the hot
path without any syscall. Run: python bench/relay_inmemory.py [--engine h11] [-n 200000].

``InMemoryRelay`` is also what ``bench/micro/test_relay.py`` times with pytest-benchmark."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import tomllib
from pathlib import Path
from typing import Any

import uvloop

import lbproxy
from lbproxy.configload import parse_config
from lbproxy.pool import PoolSet
from lbproxy.relay import ClientConnection
from lbproxy.routes import RelayContext, build_routes
from lbproxy.upstream import UpstreamConnection

REQUEST = b"GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 15:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
    b"hello world\n"
)


class FakeTransport(asyncio.Transport):
    """Swallows writes; counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


class InMemoryRelay:
    """The demo configuration's relay, its client and its pooled upstreams on fake transports.
    The loop never runs: timers are only scheduled, and ``close`` closes it."""

    def __init__(self, engine: str) -> None:
        text = (Path(__file__).parent.parent / "lbproxy" / "demo.toml").read_text()
        text = text.replace('http_parser = "httptools"', f'http_parser = "{engine}"')
        config = parse_config(tomllib.loads(text), "demo.toml")
        routes = build_routes(config)
        self.loop = uvloop.new_event_loop()
        pools = PoolSet(64, 60.0)
        # One client connection carries all n requests: no max_requests_per_connection close.
        gateway = dataclasses.replace(config.gateway, max_requests_per_connection=2**31)
        ctx = RelayContext(self.loop, gateway, engine, pools, routes.api_router.match)
        self.client = ClientConnection(ctx)
        self.client_transport = FakeTransport()
        self.client.connection_made(self.client_transport)
        # One pooled upstream per server, so every pick finds an idle connection.
        for endpoint in routes.groups["lb-web:8081"].endpoints:
            pool = pools.pool(endpoint)
            up = UpstreamConnection(pool, engine, self.loop)
            up.connection_made(FakeTransport())
            pool.opened()
            pool.put(up, self.loop.time())

    def one_request(self) -> None:
        """A request in from the client, its response in from the upstream the relay picked."""
        self.client.data_received(REQUEST)
        upstream = self.client._upstream
        assert upstream is not None
        upstream.data_received(RESPONSE)

    def close(self) -> None:
        self.loop.close()


def run(engine: str, n: int) -> float:
    """Microseconds per proxied request over ``n`` requests."""
    relay = InMemoryRelay(engine)
    try:
        start = time.perf_counter()
        for _ in range(n):
            relay.one_request()
        elapsed = time.perf_counter() - start
        assert relay.client_transport.writes == n, relay.client_transport.writes
    finally:
        relay.close()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="httptools", choices=["httptools", "h11"])
    parser.add_argument("-n", type=int, default=100_000)
    args = parser.parse_args()
    run(args.engine, 2000)
    best = min(run(args.engine, args.n) for _ in range(3))
    print(
        f"{args.engine} ({lbproxy.BUILD}): {best:.2f} us per proxied request "
        f"(best of 3, n={args.n})"
    )


if __name__ == "__main__":
    main()
