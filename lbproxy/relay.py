"""The client side of the relay: one protocol per client connection.

Theory of operation. The parser engine calls ``on_request_head/body/end``. A head is routed to a
``Route`` (an API's authorization, or a load balancer listener), the balancer picks a server,
and the request is handed to the tries (``UpstreamTries``, tries.py, a mixin of this class):
written to a pooled ``UpstreamConnection`` (or a new one, once connected), and tried again on
another server where a failure allows it. Bodies stream both ways; a full write buffer on either
side pauses reading on the other. Requests pipelined behind the active one are queued as parser
events, with reading paused, and replayed when the active response ends, so answers go out in
order and memory stays bounded. A client connection serves one exchange at a time; per-request
state lives in its slots (and the tries' slots), cleared by ``_reset`` when an exchange ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, cast

from lbproxy import framing
from lbproxy.deadline import Deadline
from lbproxy.errors import (
    BadRequest,
    BodyTimeout,
    HTTPError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    ShuttingDown,
    TooManyConnections,
    UpstreamNotAuthorized,
)
from lbproxy.framing import BODY_CHUNKED, BODY_NONE, BODY_UNTIL_CLOSE, RequestHead, ResponseHead
from lbproxy.http import request_parser
from lbproxy.recording import CLIENT_CLOSED, Recording
from lbproxy.responses import error_response
from lbproxy.router import request_path
from lbproxy.tries import PAUSE_CONNECTING

if TYPE_CHECKING:
    from collections.abc import Callable

    from lbproxy.metrics import Stats
    from lbproxy.routes import RelayContext, Route

log = logging.getLogger("lbproxy.relay")

# Reasons reading from the client is paused; reading resumes when none is left.
# Final: mypyc compiles a Final constant into the code, instead of a look-up per use.
_PAUSE_PIPELINE: Final = 1
_PAUSE_UPSTREAM_FULL: Final = 2
_PAUSE_CONNECTING: Final = PAUSE_CONNECTING  # 4: a connect holds the request's bytes (tries.py)
# Paused for the upstream's sake: a request body not arriving then is not the client's fault.
_PAUSE_FOR_UPSTREAM: Final = _PAUSE_UPSTREAM_FULL | _PAUSE_CONNECTING
_CONNECT_BUFFER_LIMIT: Final = 256 * 1024
# Request bytes held to send again if a try fails (Envoy's per-request buffer limit is 64 KiB
# too); a larger request is sent once, whatever its method.
_RESEND_LIMIT: Final = 64 * 1024
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_VIA: Final = b"1.1 lbproxy"
_ADDED_HEADERS: Final = (
    b"X-Forwarded-Proto: %b\r\nVia: %b\r\nX-Forwarded-For: %b\r\nX-Forwarded-Host: %b\r\n"
    b"X-Request-Id: %b\r\n"
)
# Where the next request head is: none of it yet, begun, begun in an earlier read (timed).
_HEAD_NONE: Final = 0
_HEAD_BEGUN: Final = 1
_HEAD_TIMED: Final = 2
# Kinds of queued parser events (requests pipelined behind the exchange in flight).
_HEAD: Final = 0
_BODY: Final = 1
_END: Final = 2
_ERROR: Final = 3


# A request id is a per-process random prefix and a counter, in hex (%012x). Formatting the
# number costs more than the rest of the id: the counter's low 12 bits come from a table and
# its high digits change once per 4096 requests.
_REQUEST_ID_PREFIX = os.urandom(6).hex().encode()
_request_numbers = itertools.count(1)
_ID_LOW: Final = tuple(b"%03x" % low for low in range(4096))
_id_high = [_REQUEST_ID_PREFIX + b"%09x" % 0]  # the prefix and the counter's high digits


def _new_request_ids() -> None:
    """A forked worker must not repeat its supervisor's (and siblings') request ids."""
    global _REQUEST_ID_PREFIX, _request_numbers  # noqa: PLW0603
    _REQUEST_ID_PREFIX = os.urandom(6).hex().encode()
    _request_numbers = itertools.count(1)
    _id_high[0] = _REQUEST_ID_PREFIX + b"%09x" % 0


os.register_at_fork(after_in_child=_new_request_ids)


def _new_request_id() -> bytes:
    """Unique, not secret: a per-process random prefix and a counter cost no syscall."""
    number = next(_request_numbers)
    low = number & 0xFFF
    if not low:
        _id_high[0] = _REQUEST_ID_PREFIX + b"%09x" % (number >> 12)
    return _id_high[0] + _ID_LOW[low]


class ClientConnection(Recording):
    __slots__ = (
        "_body_limit",
        "_body_seen",
        "_client_ip",
        "_closing",
        "_ctx",
        "_deadline",
        "_head",
        "_head_state",
        "_input_broken",
        "_keep_alive",
        "_parser",
        "_paused",
        "_pending",
        "_replaying",
        "_request_done",
        "_requests_left",
        "_resp_mode",
        "_response_started",
        "_route",
        "_upstream_keep_alive",
        "_write_paused",
        "transport",
        "wbuf",
    )

    def __init__(self, ctx: RelayContext) -> None:
        self._ctx = ctx
        gateway = ctx.gateway
        self._parser = request_parser(
            ctx.engine,
            self,
            gateway.max_header_size,
            gateway.max_request_line,
            gateway.max_header_count,
        )
        self.transport: asyncio.Transport | None = None
        # One deadline, whose meaning follows the state: while an exchange is in flight it is
        # the upstream's (response or progress timeout), otherwise the client's (header
        # timeout from a request's first byte, or keep-alive idle timeout).
        self._deadline = Deadline(ctx.loop, self._on_timeout)
        self._pending: deque[tuple[int, Any]] = deque()
        self._paused = 0
        self._closing = False
        self._client_ip = b""
        self._replaying = False
        self._head_state = _HEAD_NONE
        self._input_broken = False
        self._write_paused = False
        # Exchanges this connection may still begin; the last is answered with close.
        self._requests_left = gateway.max_requests_per_connection
        # Response bytes of one upstream read, written to the client in one send.
        self.wbuf: list[bytes] = []
        self._connect_task = None
        self._bytes_in = 0
        self._started = 0.0  # the exchange's record (recording.py says what each slot is)
        self._status = 0
        self._server = -1
        self._connect_time = -1.0
        self._reset()

    def _reset(self) -> None:
        self._head: RequestHead | None = None
        self._route: Route | None = None
        self._upstream = None
        self._send_buffer = None
        self._request_done = False
        self._response_started = False
        self._resp_mode = BODY_NONE
        self._upstream_keep_alive = True
        self._keep_alive = True
        self._body_seen = 0
        self._body_limit = 0
        # The tries' accounting (tries.py says what each is).
        self._group = None
        self._host = -1
        self._failover = None
        self._resend = None
        self._resend_size = 0
        # The record's (recording.py): _status, _server and _connect_time are set before
        # they are read, by the answer and the tries.
        self._error = None
        self._bytes_out = 0
        self._tries = 0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        client_ip = (peer[0] if peer else "unknown").removeprefix("::ffff:")
        self._client_ip = client_ip.encode()
        ctx = self._ctx
        stats = ctx.stats
        stats.connections += 1
        if stats.open >= ctx.gateway.max_client_connections:
            self._refuse(stats)
            return
        stats.open += 1
        ctx.connections.add(self)
        self._deadline.set_in(ctx.gateway.client_header_timeout)

    def _refuse(self, stats: Stats) -> None:
        """Past the cap: answered 503 at once, and closed. The answer goes out with a
        half-close and the request is read and dropped until the client closes (or a second
        passes), so the client reads the 503 rather than a reset."""
        stats.reject("limits")
        limit = self._ctx.gateway.max_client_connections
        error = TooManyConnections(f"{limit} client connections are open; retry")
        self._closing = True
        transport = self.transport
        assert transport is not None
        transport.write(error_response(error, None, keep_alive=False))
        if transport.can_write_eof():
            transport.write_eof()
            self._deadline.set_in(1.0)
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        connections = self._ctx.connections
        if self in connections:  # not a connection refused past the cap
            connections.discard(self)
            self._ctx.stats.open -= 1
        self._closing = True
        self.transport = None
        if self._started:  # the client left before its answer ended
            if not self._response_started:
                self._status = CLIENT_CLOSED
            self._error = "client_closed"
            self._record()
        self._settle()
        self._deadline.cancel()
        if self._connect_task is not None:
            self._connect_task.cancel()
        upstream = self._upstream
        if upstream is not None:
            # Mid-exchange: the upstream connection's state is unknown, never reuse it.
            self._upstream = None
            upstream.abandon()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._input_broken:
            return
        self._bytes_in += len(data)
        if self._head_state == _HEAD_NONE and self._head is None and not self._pending:
            self._head_state = _HEAD_BEGUN
        try:
            self._parser.feed(data)
        except HTTPError as exc:
            if self._head is not None and not self._request_done and not self._pending:
                # In the body of the request in flight: that exchange ends here, the
                # upstream's half-sent request abandoned.
                self._fail_request(exc, close=True)
            elif self._head is not None or self._pending:
                # Behind an exchange in flight: answered in its turn, never in that one's place.
                self._input_broken = True
                self._pending.append((_ERROR, exc))
                self._pause(_PAUSE_PIPELINE)
            else:
                self._started = perf_counter()  # recorded with "-" for what it lacks
                self._fail_request(exc, close=True)
            return
        if self._head_state == _HEAD_BEGUN and not self._closing:
            # A head begun and not ended by this read. The header timeout runs from a request's
            # first byte (this read: the loop's clock has not moved); later bytes do not extend
            # it, so a client trickling bytes cannot hold the connection. A head that ends in
            # the read that began it, the usual case, never arms it.
            self._head_state = _HEAD_TIMED
            self._deadline.set_in(self._ctx.gateway.client_header_timeout)

    def eof_received(self) -> bool | None:
        # A half-close after a complete request still gets its answer (RFC 9112 9.6).
        if self._head is None and not self._pending:
            return None
        if self._head is not None and not self._request_done:
            return None  # its body can never end: the upstream request is abandoned
        self._keep_alive = False
        return True

    def pause_writing(self) -> None:
        # Remembered: an upstream attached later (next exchange) must start paused too.
        self._write_paused = True
        if self._head is not None and not self._awaiting_body():
            self._deadline.clear()  # a slow client is not a slow upstream
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._head is not None:
            self._rearm()
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- read pausing (flow control) --------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def pause_client_reading(self) -> None:
        self._pause(_PAUSE_UPSTREAM_FULL)
        self._rearm()  # the upstream's turn

    def resume_client_reading(self) -> None:
        self._resume(_PAUSE_UPSTREAM_FULL)
        if not self._write_paused:
            self._rearm()

    # -- RequestSink --------------------------------------------------------------------------

    def on_request_head(self, head: RequestHead) -> None:
        if self._closing:
            return
        if self._head is not None or self._pending:
            self._pending.append((_HEAD, head))
            self._pause(_PAUSE_PIPELINE)
            return
        self._start(head)

    def on_request_body(self, data: bytes) -> None:
        if self._pending:
            self._pending.append((_BODY, data))
        elif not self._closing:
            self._forward_body(data)

    def on_request_end(self) -> None:
        if self._pending:
            self._pending.append((_END, None))
        elif not self._closing:
            head = self._head
            if head is not None and not head.chunked and not head.content_length:
                self._request_done = True  # _end_request(), inline for the usual case
            else:
                self._end_request()

    # -- request side ---------------------------------------------------------------------------

    def _start(self, head: RequestHead) -> None:
        ctx = self._ctx
        self._started = self._try_at = perf_counter()
        self._target = head.target
        request_id = head.request_id or _new_request_id()
        self._request_id = request_id
        self._head = head
        self._head_state = _HEAD_NONE
        self._keep_alive = head.keep_alive
        self._requests_left -= 1
        if not self._requests_left:
            self._keep_alive = False  # max_requests_per_connection: this one is the last
        try:
            if ctx.draining:
                if self._replaying:  # queued behind the exchange that was in flight
                    raise ShuttingDown("the gateway is shutting down; retry")
                # Accepted as the listener closed (a reload): served, then closed.
                self._keep_alive = False
            guard = ctx.guard
            # Source lists first: a denied client learns nothing, not even which paths exist.
            client = guard.admit(self._client_ip.decode(), head) if guard is not None else None
            route = ctx.resolve(head.method, request_path(head.target))
            self._route = route  # refusals from here on are counted under the API
            if route.guard is not None:
                client = client or self._client_ip.decode()
                route.guard.admit(client, head, ctx.loop.time())
            limit = route.max_body
            if head.content_length > limit:
                raise PayloadTooLarge(f"body of {head.content_length} bytes exceeds {limit}")
            group = route.group
            now = ctx.loop.time()
            host = group.pick(now)
            if host is None:  # every server drained through the admin API
                raise ServiceUnavailable(f"no server of {group.name} takes requests")
        except HTTPError as exc:
            # The body (if any) was not read: the connection cannot carry another request.
            self._fail_request(exc, close=head.has_body())
            return
        self._body_limit = limit
        xff = (
            self._client_ip
            if head.forwarded_for is None
            else (head.forwarded_for + b", " + self._client_ip)
        )
        via = _VIA if head.via is None else head.via + b", " + _VIA
        added = _ADDED_HEADERS % (ctx.forwarded_proto, via, xff, head.host or b"", request_id)
        if route.base_path:
            head.target = route.base_path + head.target
        data = framing.request_head_bytes(head, route.host, added)
        group.budget.requests += 1
        self._group = group
        self._resend = [data]
        self._resend_size = len(data)
        self._try(host, data, False, now)
        if (head.content_length or head.chunked) and self._head is head:  # has_body(), inline
            self._rearm()  # the body is the client's to send: client_body_timeout until it is in
            if head.expect_continue and self.transport is not None:
                self.transport.write(_CONTINUE)

    def _forward_body(self, data: bytes) -> None:
        self._body_seen += len(data)
        if self._body_seen > self._body_limit:
            self._fail_request(PayloadTooLarge(f"body exceeds {self._body_limit} bytes"), True)
            return
        head = self._head
        if head is None:
            return
        if head.chunked:
            data = framing.encode_chunk(data)
        self._write_upstream(data)

    def _write_upstream(self, data: bytes) -> None:
        resend = self._resend
        if resend is not None:
            self._resend_size += len(data)
            if self._resend_size <= _RESEND_LIMIT:
                resend.append(data)
            else:
                self._resend = None  # too large to hold: a failure after sending is final
        if self._upstream is not None:
            self._upstream.write(data)
        elif self._send_buffer is not None:
            self._send_buffer.append(data)
            if sum(map(len, self._send_buffer)) > _CONNECT_BUFFER_LIMIT:
                self._pause(_PAUSE_CONNECTING)
        else:
            return
        self._rearm()

    def _rearm(self) -> None:
        """Progress: the exchange's deadline restarts (each timeout is an idle timeout), with
        the length the state gives it. The client's body timeout runs even while the client
        reads no response; the upstream's does not (a slow client is not a slow upstream)."""
        route = self._route
        if route is None:
            return
        if self._awaiting_body():
            self._deadline.set_in(self._ctx.gateway.client_body_timeout)
        elif not self._write_paused:
            self._deadline.set_in(route.try_timeout)

    def _awaiting_body(self) -> bool:
        """Whether the request body is the client's to send now (nothing holds it back)."""
        return not (
            self._request_done or self._response_started or self._paused & _PAUSE_FOR_UPSTREAM
        )

    def _end_request(self) -> None:
        head = self._head
        if head is None:
            return
        self._request_done = True
        if head.chunked:
            self._write_upstream(framing.LAST_CHUNK)
        else:
            self._rearm()  # the body is in: from now on the upstream's timeout

    # -- response side (called by UpstreamConnection) ---------------------------------------

    def on_response_head(self, head: ResponseHead) -> None:
        transport = self.transport
        request = self._head
        if transport is None or request is None:
            return
        status = head.status
        if status < 200:
            if status != 100 and request.http11:
                self.wbuf.append(framing.interim_head_bytes(head))
            return
        group = self._group
        if group is not None and (group.board.troubled or group.board.fail_statuses):
            self._report_status(group, status)
        self._upstream_keep_alive = head.keep_alive
        self._status = status
        keep_alive = self._keep_alive and not self._closing
        if self._ctx.draining and not self._pending:
            keep_alive = False
        data, mode = framing.response_head_bytes(head, request.http11, keep_alive)
        self._resp_mode = mode
        if mode == BODY_UNTIL_CLOSE:
            keep_alive = False
        self._keep_alive = keep_alive
        self._response_started = True
        self.wbuf.append(data)

    def on_upstream_progress(self) -> None:
        """Response bytes arrived and the response goes on: the upstream timeout restarts."""
        if self._route is not None and not self._write_paused:
            self._deadline.set_in(self._route.try_timeout)

    def on_response_body(self, data: bytes) -> None:
        if self._resp_mode == BODY_CHUNKED:
            self.wbuf.append(framing.encode_chunk(data))
        else:
            self.wbuf.append(data)

    def flush(self) -> None:
        """Write what the last upstream read produced, in one send."""
        wbuf = self.wbuf
        if not wbuf:
            return
        data = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
        wbuf.clear()
        self._bytes_out += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def on_response_end(self) -> None:
        wbuf = self.wbuf
        if self._resp_mode == BODY_CHUNKED:
            wbuf.append(framing.LAST_CHUNK)
        if wbuf and self.transport is not None:  # flush(), inline on the hot path
            data = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
            self._bytes_out += len(data)
            self.transport.write(data)
        wbuf.clear()
        self._record()
        upstream = self._upstream
        self._upstream = None
        if upstream is not None:
            upstream.release(self._request_done and self._upstream_keep_alive)
        if not self._request_done:
            # Answered before the request body ended: the rest of it cannot be told apart
            # from a next request, so this connection ends here.
            self._close()
            return
        self._finish_exchange()

    def _upstream_error(self, error: HTTPError) -> None:
        self.flush()
        if self._response_started:
            # Part of a response is out: a client must see a truncated message, never a spliced
            # one, so the connection ends here.
            self._error = error.reason
            self._record()
            self._close()
            return
        self._fail_request(error, close=not self._request_done)

    def _on_timeout(self) -> None:
        if self._head is not None:
            if self._route is not None and self._awaiting_body():
                timeout = self._ctx.gateway.client_body_timeout
                error = BodyTimeout(f"no request body bytes for {timeout:g}s")
                self._fail_request(error, close=True)
            else:
                self._on_upstream_timeout()
        elif not self._pending:
            self._on_client_timeout()

    def _on_client_timeout(self) -> None:
        if self._head_state != _HEAD_NONE and self.transport is not None:
            self._ctx.stats.reject("limits")
            timeout = self._ctx.gateway.client_header_timeout
            error = RequestTimeout(f"request head not received in {timeout:g}s")
            self.transport.write(error_response(error, None, keep_alive=False))
        self._close()

    # -- ending an exchange ---------------------------------------------------------------------

    def _fail_request(self, error: HTTPError, close: bool) -> None:
        """Answer with the gateway's own error; close when the stream cannot be trusted."""
        if isinstance(error, UpstreamNotAuthorized):
            log.warning("authorization gate refused an upstream connect: %s", error.detail)
        upstream = self._upstream
        self._upstream = None
        if upstream is not None:
            upstream.abandon()
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        self._send_buffer = None
        head = self._head
        if isinstance(error, BadRequest | ShuttingDown) or head is None:
            close = True
        keep = self._keep_alive and not close
        if error.rejection is not None:
            self._ctx.stats.reject(error.rejection)
        transport = self.transport
        if transport is not None and not self._response_started:
            request_id = head.request_id if head is not None else None
            data = error_response(error, request_id, keep)
            self._bytes_out += len(data)
            transport.write(data)
            self._status = error.status
        self._error = error.reason
        self._record()
        if not keep:
            self._close()
            return
        self._request_done = True
        self._finish_exchange()

    def _finish_exchange(self) -> None:
        if not self._request_done:
            self._deadline.clear()
            return
        if self._paused:
            # Pauses that belonged to this exchange's upstream end with it.
            self._resume(_PAUSE_UPSTREAM_FULL | _PAUSE_CONNECTING)
        if not self._keep_alive or self.transport is None:
            self._close()
            return
        if self._ctx.draining and not self._pending:
            self._close()
            return
        self._settle()
        self._reset()
        self._deadline.set_in(self._ctx.gateway.keepalive_timeout)
        if self._pending:
            self._replay()

    def _replay(self) -> None:
        """Serve requests that arrived pipelined behind the one just answered."""
        if self._replaying:
            return  # an exchange ended inside the loop below, which goes on by itself
        pending = self._pending
        self._replaying = True
        try:
            while pending and not self._closing:
                kind, payload = pending[0]
                if kind in (_HEAD, _ERROR) and self._head is not None:
                    break
                pending.popleft()
                if kind == _HEAD:
                    self._start(payload)
                elif kind == _BODY:
                    self._forward_body(payload)
                elif kind == _END:
                    self._end_request()
                else:
                    self._started = perf_counter()  # recorded, with "-" for what it lacks
                    self._fail_request(payload, close=True)
        finally:
            self._replaying = False
        if not pending:
            self._resume(_PAUSE_PIPELINE)

    def _close(self) -> None:
        self._closing = True
        self._settle()
        self._pending.clear()
        self._deadline.cancel()
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Close now if idle between requests; otherwise after the current exchange (with
        ``ctx.draining`` set, requests queued behind it are answered 503)."""
        if self._head is None and not self._pending:
            self._close()


def client_protocol(ctx: RelayContext) -> Callable[[], asyncio.Protocol]:
    """The protocol factory of a listener. asyncio and uvloop call a protocol's methods by name,
    so ``ClientConnection`` does not inherit ``asyncio.Protocol``: that keeps it a native class
    when mypyc compiles this module (its slots a C struct; see setup.py)."""
    return cast("Callable[[], asyncio.Protocol]", lambda: ClientConnection(ctx))
