"""What an exchange leaves behind once it is over: its counts and its access log record.

Theory of operation. ``ClientConnection`` (relay.py) inherits ``Recording``, which inherits
the tries (``UpstreamTries``, tries.py) whose state it reads: a line of classes, because only
one base of a class may have slots of its own. ``_record`` is called once per exchange, when
the answer is out (or the exchange failed, or the client left) and before the exchange's state
is cleared; ``_started`` is zero once recorded, so an exchange is recorded once whichever way
it ends. It costs a request a few increments and a bisect on plain numbers (metrics.py); the
access log, when on, queues one tuple (accesslog.py).
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter
from typing import Final

from lbproxy.metrics import DURATION_BUCKETS
from lbproxy.tries import UpstreamTries

# The status nginx logs for a client that left before its answer.
CLIENT_CLOSED: Final = 499


class Recording(UpstreamTries):
    __slots__ = (
        "_bytes_in",
        "_bytes_out",
        "_error",
        "_request_id",
        "_started",
        "_status",
        "_target",
    )

    # The exchange's record: when it began (perf_counter; 0.0 once recorded), the status
    # answered, the reason the gateway gave when it failed, bytes read and written, the
    # client's target and the request id; the tries (tries.py) keep the rest.
    _started: float
    _status: int
    _error: str | None
    _bytes_in: int
    _bytes_out: int
    _target: bytes
    _request_id: bytes

    _client_ip: bytes  # set by ClientConnection

    def _record(self) -> None:
        started = self._started
        if not started:
            return
        self._started = 0.0
        now = perf_counter()
        head = self._head
        # No head: a request the parser refused (400, 431); logged like nginx does, with "-".
        method = head.method if head is not None else b"-"
        route = self._route
        status = self._status
        api = route.stats if route is not None else self._ctx.stats.unrouted
        by_status = api.requests.get(method)
        if by_status is None:
            by_status = api.requests[method] = {}
        by_status[status] = by_status.get(status, 0) + 1
        duration = now - started
        histogram = api.duration
        bucket = bisect_left(DURATION_BUCKETS, duration)
        histogram.counts[bucket] += 1
        histogram.sum += duration
        server = self._server if self._tries else -1
        group = self._group
        response_time = None
        if server >= 0 and group is not None and self._response_started:
            stats = group.stats
            stats.responses[server][status // 100] += 1
            histogram = stats.response_time[server]
            if self._tries == 1:  # the try began with the exchange: the same time
                response_time = duration
            else:
                response_time = now - self._try_at
                bucket = bisect_left(DURATION_BUCKETS, response_time)
            histogram.counts[bucket] += 1
            histogram.sum += response_time
        ctx = self._ctx
        log = ctx.access_log
        if log is not None:
            upstream = None
            if server >= 0 and group is not None:
                upstream = group.table.hosts[server].name
            log.log(
                self._client_ip,
                method,
                self._target if head is not None else b"-",
                status,
                self._bytes_in,
                self._bytes_out,
                started,
                now,
                route.name if route is not None else None,
                upstream,
                status if self._response_started else None,
                self._connect_time if self._tries and self._connect_time >= 0 else None,
                response_time,
                max(0, self._tries - 1),
                self._request_id if head is not None else b"-",
                self._error,
            )
        self._bytes_in = 0
