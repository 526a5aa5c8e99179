from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.harness import (
    Backend,
    Gateway,
    Handler,
    LoopThread,
    config_from,
    echo,
    free_port,
    gateway_toml,
)

ENGINES = ["httptools", "h11"]


@pytest.fixture(scope="session")
def lt() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backends(lt: LoopThread) -> Iterator[list[Backend]]:
    """Three echo backends (a, b, c) on 127.0.0.1."""
    started = [Backend(name) for name in ("a", "b", "c")]
    for b in started:
        lt.run(b.start())
    yield started
    for b in started:
        lt.run(b.stop())


GatewayFor = Callable[..., tuple[Gateway, Backend]]


@pytest.fixture
def gateway_for(lt: LoopThread, engine: str) -> Iterator[GatewayFor]:
    """A factory: a backend with ``handler`` behind a gateway (the harness config), both stopped
    at teardown."""
    started: list[tuple[Gateway, Backend]] = []

    def start(
        handler: Handler = echo,
        timeout: float = 5.0,
        extra_api: str = "",
        gateway_extra: str = "",
        keep_body: bool = True,
    ) -> tuple[Gateway, Backend]:
        backend = Backend("a", handler=handler, keep_body=keep_body)
        lt.run(backend.start())
        text = gateway_toml(
            [backend],
            free_port(),
            engine,
            timeout=timeout,
            extra_api=extra_api,
            gateway_extra=gateway_extra,
        )
        gateway = Gateway(lt, config_from(text))
        started.append((gateway, backend))
        return gateway, backend

    yield start
    for gateway, backend in started:
        gateway.stop()
        lt.run(backend.stop())
