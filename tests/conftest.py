from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Backend, LoopThread

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
