"""The pool's bookkeeping, pure: what it keeps, hands out, expires and says of itself."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from lbproxy.authz import Endpoint, Reach
from lbproxy.errors import UpstreamNotAuthorized
from lbproxy.pool import PoolSet, ServerPool

EP = Endpoint("127.0.0.1", 9001, 1, "i-1")


@dataclass(eq=False)
class FakeConn:
    usable: bool = True
    closed: bool = False
    idle_since: float = 0.0

    def is_usable(self) -> bool:
        return self.usable and not self.closed

    def close(self) -> None:
        self.closed = True


def test_reuses_the_most_recent_idle_connection_first() -> None:
    pool = ServerPool(EP, max_idle=4, idle_timeout=60)
    a, b = FakeConn(), FakeConn()
    pool.opened()
    pool.opened()
    assert repr(pool) == "<ServerPool 127.0.0.1:9001 [2 active, 0 idle]>"
    assert pool.put(a, now=1.0) and pool.put(b, now=2.0)
    assert repr(pool) == "<ServerPool 127.0.0.1:9001 [0 active, 2 idle]>"
    assert pool.take() is b
    assert repr(pool) == "<ServerPool 127.0.0.1:9001 [1 active, 1 idle]>"


def test_unusable_idle_connections_are_skipped_and_closed() -> None:
    pool = ServerPool(EP, max_idle=4, idle_timeout=60)
    good, gone = FakeConn(), FakeConn()
    pool.opened()
    pool.opened()
    pool.put(good, now=0.0)
    pool.put(gone, now=0.0)
    gone.usable = False  # the server closed it while idle
    assert pool.take() is good
    assert gone.closed
    assert pool.take() is None


def test_max_idle_refuses_the_surplus() -> None:
    pool = ServerPool(EP, max_idle=1, idle_timeout=60)
    pool.opened()
    pool.opened()
    assert pool.put(FakeConn(), now=0.0)
    assert not pool.put(FakeConn(), now=0.0)  # the caller closes it
    assert repr(pool) == "<ServerPool 127.0.0.1:9001 [0 active, 1 idle]>"


def test_expired_returns_what_to_close() -> None:
    pool = ServerPool(EP, max_idle=4, idle_timeout=10)
    old, new = FakeConn(), FakeConn()
    for conn, when in ((old, 0.0), (new, 8.0)):
        pool.opened()
        pool.put(conn, now=when)
    assert pool.expired(now=12.0) == [old]
    assert pool.take() is new


def test_take_idle_asks_the_gate_first() -> None:
    pools = PoolSet(max_idle=4, idle_timeout=60)
    reach = Reach("authorization a", "instance i-1", None, (EP,), frozenset({("127.0.0.1", 9001)}))
    assert pools.take_idle(reach, EP) is None  # allowed, nothing idle yet
    other = Endpoint("127.0.0.1", 9002, 1, "i-1")
    with pytest.raises(UpstreamNotAuthorized, match=re.escape("127.0.0.1:9002")):
        pools.take_idle(reach, other)


def test_max_connections_queues_then_hands_over_or_frees_a_slot() -> None:
    pool = ServerPool(EP, max_idle=4, idle_timeout=60, max_connections=2)
    assert pool.reserve() and pool.reserve()  # two connections opening
    assert not pool.reserve() and pool.is_full()
    pool.opened(reserved=True)
    pool.opened(reserved=True)
    first, second = object(), object()
    pool.waiters.extend([first, second])
    assert repr(pool) == "<ServerPool 127.0.0.1:9001 [2 active, 0 idle, 2 waiting, max 2]>"
    assert pool.next_waiter() is first  # a released connection goes to the first waiter
    assert pool.wake_for_slot() is None  # still full: nobody may open
    pool.discard(FakeConn())  # a connection closed
    assert pool.wake_for_slot() is second  # ... so the next waiter opens one, counted
    assert repr(pool) == "<ServerPool 127.0.0.1:9001 [1 active, 0 idle, 1 opening, max 2]>"
    pool.unreserve()  # its connect failed
    assert pool.reserve()  # room again, nobody waiting


def test_waiters_come_before_new_opens() -> None:
    pool = ServerPool(EP, max_idle=4, idle_timeout=60, max_connections=3)
    pool.waiters.append(object())
    assert not pool.reserve()  # not full, but a request queued earlier goes first
