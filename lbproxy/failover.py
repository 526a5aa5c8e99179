"""What a failed try means for the request: the error -> ``Failure`` mapping, the retry decision
through ``retry.RetryState``, passive health, and the error a client gets when nothing is left
to try. The relay calls ``Failover.next_try`` on its (rare) failure path only.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

from lbproxy.errors import (
    GatewayTimeout,
    HTTPError,
    ServiceUnavailable,
    UpstreamClosed,
    UpstreamConnectFailed,
    UpstreamProtocolError,
)
from lbproxy.retry import Action, Failure, RetryState

if TYPE_CHECKING:
    from lbproxy.framing import RequestHead
    from lbproxy.routes import ServerGroup

log = logging.getLogger("lbproxy.retry")

_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


def connect_failure(error: HTTPError) -> Failure | None:
    """The failure of a connect attempt; None when it must not move on (the gate refused)."""
    if isinstance(error, GatewayTimeout):
        return Failure.CONNECT_TIMEOUT
    if isinstance(error, UpstreamConnectFailed):
        if error.errno in _UNREACHABLE:
            return Failure.CONNECT_UNREACHABLE
        return Failure.CONNECT_REFUSED
    return None


def exchange_failure(error: HTTPError, stale: bool) -> Failure | None:
    """The failure of a try after its request was sent (or began to be). ``stale``: the
    connection came from the pool and not a byte of response arrived on it."""
    if isinstance(error, GatewayTimeout):
        return Failure.TIMEOUT
    if isinstance(error, UpstreamClosed):
        return Failure.STALE_CONNECTION if stale else Failure.RESET
    if isinstance(error, UpstreamProtocolError):
        return Failure.RESET
    return None


class Failover:
    """The tries of one request, from its first failure on."""

    __slots__ = ("_group", "_method", "_state")

    def __init__(self, group: ServerGroup, head: RequestHead) -> None:
        self._group = group
        self._method = head.method.decode("latin-1")
        has_key = any(name.lower() == b"idempotency-key" for name, _ in head.kept)
        self._state = RetryState(
            group.listener.retry, group.budget, self._method, has_key, counted=True
        )

    def next_try(
        self, host: int, failure: Failure, response_started: bool, replayable: bool, now: float
    ) -> tuple[int, bool] | None:
        """After the try on ``host`` failed: the host of the next try and whether it needs a
        fresh connection, or None to give up. ``replayable``: the request bytes sent so far
        are still held, so they can be sent again."""
        group = self._group
        if failure is not Failure.STALE_CONNECTION:  # the pool's staleness, not the server's
            group.report_failure(host, failure.value, now)
        decision = self._state.decide(host, failure, response_started)
        name = group.table.hosts[host].name
        if not decision.retries:
            log.warning("%s on %s: %s", self._method, name, decision)
            return None
        if not replayable:
            log.warning(
                "%s on %s: %s; not done: the request is too large to send again",
                self._method,
                name,
                decision,
            )
            return None
        if decision.action is Action.SAME_SERVER:
            log.info("%s on %s: %s", self._method, name, decision)
            return host, True
        following = group.pick(now, self._state.tried)
        if following is None:
            log.warning("%s on %s: %s, but every server was tried", self._method, name, decision)
            return None
        log.info(
            "%s on %s: %s -> %s", self._method, name, decision, group.table.hosts[following].name
        )
        return following, False

    def final_error(self, error: HTTPError, now: float) -> HTTPError:
        """What the client gets once nothing is left to try: 503 (with Retry-After) when
        every server is down, else the last try's error."""
        if self._group.is_failing_open(now):
            return ServiceUnavailable(
                f"every server of {self._group.name} is down and none answered ({error.detail})"
            )
        return error

    def finish(self) -> None:
        self._state.finish()
