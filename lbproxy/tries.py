"""The tries of a request: getting an upstream for it, trying again, and its accounting.

Theory of operation. ``ClientConnection`` (relay.py) inherits ``UpstreamTries``; a mixin rather
than an object of its own, so the hot path pays no extra call or attribute hop. A routed request
is sent to the server the balancer picked (``_try``): on an idle pooled connection at once, or
buffered while a new one connects (``_connect``), with reading from the client paused when the
buffer grows too large. A try fails by a connect error, an upstream error or the upstream
timeout; ``_try_failed`` asks the request's ``Failover`` whether another try is safe (nothing
of the response sent, the request's bytes still held, the retry budget left) and sends every
byte of the request again to the server it names, else the client is answered the error. While
a try is in flight its server counts it (``in_flight``, what least_conn weighs) and the group's
retry budget counts the request; ``_settle`` ends both once the request is over, whichever way.
Passive health hears of each answer's status (``_report_status``) only while it has something
to learn. The slots here are the state of the current request's tries; ``_reset`` in relay.py
clears them with the rest of the exchange.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Final

from lbproxy.errors import GatewayTimeout, HTTPError
from lbproxy.failover import Failover, connect_failure, exchange_failure
from lbproxy.retry import Failure
from lbproxy.upstream import UpstreamConnection, open_connection

if TYPE_CHECKING:
    import asyncio

    from lbproxy.authz import Endpoint
    from lbproxy.deadline import Deadline
    from lbproxy.framing import RequestHead
    from lbproxy.routes import RelayContext, Route, ServerGroup

# The reason a connect in progress pauses reading from the client: one bit of relay.py's
# read-pause reasons, defined here because the connect that ends it lives here.
PAUSE_CONNECTING: Final = 4


class UpstreamTries:
    __slots__ = (
        "_connect_task",
        "_connect_time",
        "_failover",
        "_group",
        "_host",
        "_resend",
        "_resend_size",
        "_send_buffer",
        "_server",
        "_tries",
        "_try_at",
        "_upstream",
    )

    # The tries' own state, set by ClientConnection.__init__ and _reset: the upstream
    # connection of the try in flight, the connect in progress and the request bytes waiting
    # for it, the request's server group, the host of the try in flight (-1: none), the
    # failover once a try failed, and the request bytes kept to send again.
    _upstream: UpstreamConnection | None
    _connect_task: asyncio.Task[None] | None
    _send_buffer: list[bytes] | None
    _group: ServerGroup | None
    _host: int
    _failover: Failover | None
    _resend: list[bytes] | None
    _resend_size: int
    # For the exchange's record (recording.py): the last server tried, the number of tries,
    # when the last one began (perf_counter) and its connect time (-1.0: a pooled connection).
    _server: int
    _tries: int
    _try_at: float
    _connect_time: float

    # ClientConnection's state and methods, which the tries read and call. Declared here, not
    # only under TYPE_CHECKING, so that mypyc compiles one native class layout for the chain
    # UpstreamTries -> Recording -> ClientConnection; relay.py sets them and overrides these.
    _ctx: RelayContext
    _route: Route | None
    _head: RequestHead | None
    _deadline: Deadline
    _closing: bool
    _request_done: bool
    _response_started: bool
    _write_paused: bool

    def _resume(self, reason: int) -> None:
        raise NotImplementedError

    def _rearm(self) -> None:
        raise NotImplementedError

    def _fail_request(self, error: HTTPError, close: bool) -> None:
        raise NotImplementedError

    def _upstream_error(self, error: HTTPError) -> None:
        raise NotImplementedError

    def _try(self, host: int, data: bytes, fresh: bool, now: float) -> None:
        """Send the request (``data``: every byte of it so far) to the group's server ``host``,
        on a pooled connection unless ``fresh``; ``now``: the loop's time."""
        ctx = self._ctx
        route = self._route
        group = self._group
        head = self._head
        assert route is not None and group is not None and head is not None
        self._host = self._server = host
        self._tries += 1
        group.table.hosts[host].in_flight += 1  # what least_conn weighs
        endpoint = group.endpoints[host]
        try:
            # The pool holds only UpstreamConnections; it is typed by the protocol it needs.
            upstream: UpstreamConnection | None = (
                None if fresh else ctx.pools.take_idle(route.reach, endpoint, route.tls)  # type: ignore[assignment]
            )
        except HTTPError as exc:  # the authorization gate refused: no other server will do
            self._fail_request(exc, close=not self._request_done)
            return
        self._deadline.set_at(now + route.try_timeout)
        if upstream is not None:
            group.stats.reused[host] += 1
            self._connect_time = -1.0
            self._upstream = upstream
            # A client that cannot take more response bytes now holds the response back. Self
            # is the ClientConnection, an UpstreamClient; cast() would cost a call per request.
            upstream.send(self, head.method, data, self._write_paused)  # type: ignore[arg-type]
            if self._tries > 1:
                # A retry: bytes a failed connect held are sent, so reading from the client
                # resumes, and the deadline takes the meaning the request's state gives it.
                self._resume(PAUSE_CONNECTING)
                self._rearm()
        else:
            self._connect_time = -1.0  # until connected
            self._send_buffer = [data]
            self._connect_task = ctx.loop.create_task(self._connect(endpoint, head.method))
            if self._tries > 1:
                self._rearm()  # a retry: the body may be the client's to send meanwhile

    async def _connect(self, endpoint: Endpoint, method: bytes) -> None:
        ctx = self._ctx
        route = self._route
        assert route is not None
        began = perf_counter()
        try:
            upstream = await open_connection(
                ctx.pools,
                route.reach,
                endpoint,
                ctx.engine,
                ctx.gateway.connect_timeout,
                tls=route.tls,
                limits=route.group.listener.pool,
                public_only=route.public_only,
                source=route.source,
            )
        except HTTPError as exc:
            self._connect_task = None
            self._try_failed(exc, connect_failure(exc))
            return
        self._connect_task = None
        self._connect_time = took = perf_counter() - began
        group, host = self._group, self._host
        if group is not None and host >= 0:
            group.stats.created[host] += 1
            group.stats.connect_time[host].observe(took)
        buffered = self._send_buffer
        if self._closing or buffered is None:
            upstream.release(reusable=True)
            return
        self._send_buffer = None
        self._upstream = upstream
        upstream.send(self, method, b"".join(buffered), self._write_paused)  # type: ignore[arg-type]
        self._resume(PAUSE_CONNECTING)
        self._rearm()  # connected: progress, and the body may be the client's to send again

    def _try_failed(self, error: HTTPError, failure: Failure | None) -> None:
        """A try failed with ``error``: try again where that is safe, else answer it."""
        group = self._group
        host = self._host
        head = self._head
        if group is not None and host >= 0:
            group.stats.error(host, error.reason if failure is None else failure.value)
        if group is None or head is None or failure is None or host < 0:
            self._upstream_error(error)
            return
        self._host = -1
        group.table.hosts[host].in_flight -= 1
        if self._failover is None:
            self._failover = Failover(group, head)
        now = self._ctx.loop.time()
        resend = self._resend
        if resend is None and failure.is_connect:
            resend = self._send_buffer  # nothing was sent: what waited for the connect
        following = self._failover.next_try(
            host, failure, self._response_started, resend is not None, now
        )
        if following is None or resend is None:
            self._upstream_error(self._failover.final_error(error, now))
            return
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        self._send_buffer = None
        group.stats.retry(failure.value)
        self._try_at = perf_counter()
        self._try(following[0], b"".join(resend), following[1], now)

    def on_upstream_error(self, error: HTTPError) -> None:
        upstream = self._upstream
        self._upstream = None
        stale = upstream is not None and upstream.exchanges > 1 and not upstream.answered
        self._try_failed(error, exchange_failure(error, stale))

    def _on_upstream_timeout(self) -> None:
        upstream = self._upstream
        self._upstream = None
        if upstream is not None:
            upstream.abandon()
        timeout = self._route.try_timeout if self._route else 0.0
        task = self._connect_task
        connecting = task is not None
        if task is not None:
            task.cancel()
            self._connect_task = None
        error = GatewayTimeout(f"no response within {timeout:g}s")
        self._try_failed(error, Failure.CONNECT_TIMEOUT if connecting else Failure.TIMEOUT)

    def _report_status(self, group: ServerGroup, status: int) -> None:
        """Passive health hears of the answer (only while it has something to learn)."""
        if self._host < 0:
            return
        now = self._ctx.loop.time()
        if group.board.is_failure_status(status):
            group.report_failure(self._host, f"status {status}", now)
        else:
            group.report_success(self._host, now)

    def _settle(self) -> None:
        """The request is over (answered, failed or abandoned): its counts end."""
        group = self._group
        if group is None:
            return
        self._group = None
        if self._host >= 0:
            group.table.hosts[self._host].in_flight -= 1
            self._host = -1
        group.budget.requests -= 1
        if self._failover is not None:
            self._failover.finish()
            self._failover = None
