"""One whole request through the relay over in-memory transports: the Python cost of the hot
path without any syscall. Run: python bench/relay_inmemory.py [--engine h11] [-n 200000]."""

from __future__ import annotations

import argparse
import asyncio
import time
import tomllib
from pathlib import Path
from typing import Any

import uvloop

from lbproxy.configload import parse_config
from lbproxy.pool import PoolSet
from lbproxy.relay import ClientConnection
from lbproxy.routes import RelayContext, build_routes
from lbproxy.upstream import UpstreamConnection

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"
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


def build(engine: str) -> tuple[ClientConnection, UpstreamConnection, FakeTransport]:
    text = (Path(__file__).parent.parent / "lbproxy" / "demo.toml").read_text()
    text = text.replace('http_parser = "httptools"', f'http_parser = "{engine}"')
    config = parse_config(tomllib.loads(text), "demo.toml")
    routes = build_routes(config)
    loop = uvloop.new_event_loop()
    pools = PoolSet(64, 60.0)
    ctx = RelayContext(loop, config.gateway, engine, pools, routes.api_router.match)
    client = ClientConnection(ctx)
    client_transport = FakeTransport()
    client.connection_made(client_transport)
    # One pooled upstream per server, so every pick finds an idle connection.
    upstreams = []
    for endpoint in routes.groups["lb-web:8081"].endpoints:
        pool = pools.pool(endpoint)
        up = UpstreamConnection(pool, engine, loop)
        up.connection_made(FakeTransport())
        pool.opened()
        pool.put(up, loop.time())
        upstreams.append(up)
    return client, upstreams[0], client_transport


def run(engine: str, n: int) -> float:
    client, _, client_transport = build(engine)
    request = REQUEST.replace(b"GET / ", b"GET /items/1 ")
    start = time.perf_counter()
    for _ in range(n):
        client.data_received(request)
        upstream = client._upstream
        assert upstream is not None
        upstream.data_received(RESPONSE)
    elapsed = time.perf_counter() - start
    assert client_transport.writes == n, client_transport.writes
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="httptools", choices=["httptools", "h11"])
    parser.add_argument("-n", type=int, default=100_000)
    args = parser.parse_args()
    run(args.engine, 2000)
    best = min(run(args.engine, args.n) for _ in range(3))
    print(f"{args.engine}: {best:.2f} us of Python per proxied request (best of 3, n={args.n})")


if __name__ == "__main__":
    main()
