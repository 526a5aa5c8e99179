"""The demo: ECS-like backends in-process, each answering with its instance id, behind the
built-in demo configuration (the same file as ``examples/demo.toml``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from importlib.resources import files

import h11

from lbproxy.config import Config

DEMO_CONFIG_NAME = "demo.toml"


def demo_config_text() -> str:
    return files("lbproxy").joinpath(DEMO_CONFIG_NAME).read_text()


class DemoBackend(asyncio.Protocol):
    """A tiny keep-alive HTTP/1.1 server that says which instance answered, and what it saw."""

    def __init__(self, instance: str, port: int) -> None:
        self._instance = instance
        self._port = port
        self._conn = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._conn.receive_data(data)
        while self._transport is not None:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                self._transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._body_size = event, 0
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._respond()
            elif isinstance(event, h11.ConnectionClosed):
                self._transport.close()

    def _respond(self) -> None:
        request = self._request
        assert request is not None and self._transport is not None
        headers = {k.decode(): v.decode("latin-1") for k, v in request.headers}
        answer = {
            "instance": self._instance,
            "port": self._port,
            "method": request.method.decode(),
            "path": request.target.decode("latin-1"),
            "body_bytes": self._body_size,
            "host": headers.get("host"),
            "x-forwarded-for": headers.get("x-forwarded-for"),
            "x-request-id": headers.get("x-request-id"),
        }
        body = (json.dumps(answer) + "\n").encode()
        response = h11.Response(
            status_code=200,
            headers=[
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("x-instance", self._instance),
            ],
        )
        out = self._conn.send(response) or b""
        if request.method != b"HEAD":
            out += self._conn.send(h11.Data(data=body)) or b""
        out += self._conn.send(h11.EndOfMessage()) or b""
        self._transport.write(out)
        if self._conn.our_state is h11.MUST_CLOSE:
            self._transport.close()
        else:
            self._conn.start_next_cycle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def start_demo_backends(config: Config) -> list[asyncio.Server]:
    """A demo backend on every address the configuration reaches: each load balancer server,
    and each instance or IP an authorization names directly."""
    loop = asyncio.get_running_loop()
    servers = []
    for (ip, port), name in sorted(_demo_addresses(config).items()):
        servers.append(
            await loop.create_server(_backend_factory(name, port), ip, port, reuse_address=True)
        )
    return servers


def _demo_addresses(config: Config) -> dict[tuple[str, int], str]:
    addresses = {}
    for lb in config.load_balancers:
        for listener in lb.listeners:
            for ref in listener.servers:
                inst = config.instance(ref.instance)
                if inst is not None:
                    addresses[(str(inst.ip), ref.port)] = inst.id
    for auth in config.authorizations:
        inst = config.instance(auth.target)
        if inst is not None:
            addresses[(str(inst.ip), auth.port)] = inst.id
    return addresses


def _backend_factory(instance: str, port: int) -> Callable[[], DemoBackend]:
    return lambda: DemoBackend(instance, port)
