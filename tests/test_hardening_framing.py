"""Issue 7, rules 1 to 3 over real sockets, for both engines: every vector of the shared table
(tests/vectors.py) sent as raw bytes to a gateway, with the backend recording every byte it
receives. Nothing of a refused request reaches the backend, what is forwarded is canonical,
and an invalid upstream response is never relayed raw."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import h11
import pytest

from lbproxy.config import HTTP_METHODS
from lbproxy.errors import (
    BadRequest,
    HeadersTooLarge,
    NotImplementedByGateway,
    RequestLineTooLong,
    UpstreamClosed,
    UpstreamProtocolError,
)
from lbproxy.framing import HOP_BY_HOP
from tests.conftest import GatewayFor
from tests.harness import Backend, Handler, Seen, echo
from tests.vectors import (
    END,
    LIMIT,
    REQUESTS,
    RESPONSES,
    ReqHead,
    RequestVector,
    ResponseVector,
)

STATUS = {BadRequest: 400, HeadersTooLarge: 431, RequestLineTooLong: 414}
STATUS[NotImplementedByGateway] = 501


def routed(raw: bytes) -> bytes:
    """``raw`` with every origin-form request target moved under /direct/ (an API of any
    method straight to the backend), so a request the gateway accepted would reach it."""
    return re.sub(rb"([A-Z_-]+ +)/(\S* +(?:HTTP|RTSP|ICE)/)", rb"\1/direct/\2", raw)


def routed_target(target: bytes) -> bytes:
    return b"/direct/" + target[1:] if target.startswith(b"/") else target


def recv_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Every byte until the gateway closes, and whether it did (within ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def recv_responses(sock: socket.socket, methods: list[bytes]) -> tuple[bytes, bool]:
    """Bytes until the responses to ``methods`` have all come, or the gateway closed."""
    sock.settimeout(5.0)
    data = b""
    while len(read_responses(data, methods)) < len(methods):
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data, False
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_responses(data: bytes, methods: list[bytes]) -> list[tuple[int, bytes]]:
    """The responses in ``data`` (status, body), read strictly, one per method given; the
    list ends early where the bytes do."""
    out: list[tuple[int, bytes]] = []
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        conn.receive_data(b"")
        status, body = 0, b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return out
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return out
        out.append((status, body))
        data = conn.trailing_data[0]
    return out


_LINE = re.compile(rb"([A-Z_-]+) (/\S*) HTTP/1\.1")


def canonical_requests(raw: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The requests a backend received, read from its raw bytes, asserting they are canonical:
    "METHOD target HTTP/1.1" with single spaces, one Host, at most one of Content-Length and
    Transfer-Encoding (then exactly "chunked"), no hop-by-hop field, framing that ends exactly
    where the next request begins, and nothing left over."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"a head without its end: {head[:80]!r}"
        line, *fields = head.split(b"\r\n")
        match = _LINE.fullmatch(line)
        assert match, f"not a canonical request line: {line!r}"
        names = [f.split(b":", 1)[0].lower() for f in fields]
        assert all(re.fullmatch(rb"[^:\s]+: \S(.*\S)?|[^:\s]+: ", f) for f in fields), fields
        assert names.count(b"host") == 1, names
        framing = [n for n in names if n in (b"content-length", b"transfer-encoding")]
        assert len(framing) <= 1, names
        assert not set(names) & (HOP_BY_HOP - {b"content-length", b"transfer-encoding"})
        values = dict(f.split(b": ", 1) for f in fields if b": " in f)
        values = {k.lower(): v for k, v in values.items()}
        if b"transfer-encoding" in names:
            assert values[b"transfer-encoding"] == b"chunked"
            body, raw = _dechunk(raw)
        else:
            length = int(values.get(b"content-length", b"0"))
            body, raw = raw[:length], raw[length:]
            assert len(body) == length, "a body cut short"
        out.append((match[1], match[2], body))
    return out


def _dechunk(raw: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        size_line, sep, raw = raw.partition(b"\r\n")
        assert sep and re.fullmatch(rb"[0-9a-f]+", size_line), f"not canonical: {size_line!r}"
        size = int(size_line, 16)
        if size == 0:
            assert raw.startswith(b"\r\n"), "trailer fields forwarded"
            return body, raw[2:]
        body += raw[:size]
        assert raw[size : size + 2] == b"\r\n"
        raw = raw[size + 2 :]


def heads_of(vector: RequestVector) -> list[ReqHead]:
    return [e[1] for e in vector.events if e[0] == "head"]  # type: ignore[misc]


def bodies_of(vector: RequestVector) -> list[bytes]:
    bodies: list[bytes] = []
    for event in vector.events:
        if event[0] == "head":
            bodies.append(b"")
        elif event[0] == "body":
            bodies[-1] += bytes(event[1])  # type: ignore[arg-type]
    return bodies


DEFAULT_LIMITS = [
    v for v in REQUESTS if v.limit == LIMIT and v.line_limit == 8192 and v.count_limit == 100
]
REFUSED = [v for v in DEFAULT_LIMITS if v.error is not None]
ACCEPTED = [v for v in DEFAULT_LIMITS if v.error is None and v.id != "target-fragment"]


@pytest.mark.parametrize("vector", REFUSED, ids=[v.id for v in REFUSED])
def test_refused_request_is_answered_closed_and_never_forwarded(
    gateway_for: GatewayFor, vector: RequestVector
) -> None:
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    sock.sendall(routed(vector.raw))
    data, closed = recv_all(sock)
    sock.close()
    assert closed, "the connection must end after a refused request"
    served = heads_of(vector)  # requests before the refused one, served in turn
    methods = [h.method for h in served] + [b"GET"]
    responses = read_responses(data, methods)
    assert [status for status, _ in responses[: len(served)]] == [200] * len(served)
    if not served or served[-1].keep_alive:
        assert len(responses) == len(served) + 1, data
        assert responses[-1][0] == STATUS[vector.error]  # type: ignore[index]
    else:
        assert len(responses) == len(served)  # the connection ended with that request
    # The backend got the served requests, canonical, and not one byte more.
    forwarded = canonical_requests(bytes(backend.raw))
    assert [(m, t) for m, t, _ in forwarded] == [
        (h.method, routed_target(h.target)) for h in served
    ]


def test_refused_request_connection_is_closed(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    started = time.monotonic()
    sock.sendall(
        b"POST /direct/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    data, closed = recv_all(sock, timeout=3.0)
    sock.close()
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data
    assert closed and time.monotonic() - started < 2.0, "closed by the gateway, at once"
    assert not backend.raw


@pytest.mark.parametrize("vector", ACCEPTED, ids=[v.id for v in ACCEPTED])
def test_what_is_forwarded_is_canonical(gateway_for: GatewayFor, vector: RequestVector) -> None:
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    sock.sendall(routed(vector.raw))
    heads = heads_of(vector)
    expected = []  # what must reach the backend, in order
    statuses = []
    for head, body in zip(heads, bodies_of(vector), strict=True):
        target = routed_target(head.target)
        if not target.startswith(b"/direct/"):
            statuses.append(400)  # the router serves origin-form targets only, then closes
            break
        if head.method.decode() not in HTTP_METHODS:
            statuses.append(405)  # parsed, but no API takes it
            continue
        expected.append((head.method, target, body))
        statuses.append(200)
        if not head.keep_alive:
            break
    methods = [h.method for h in heads[: len(statuses)]]
    data, _ = recv_responses(sock, methods)
    sock.close()
    responses = read_responses(data, methods)
    assert [s for s, _ in responses] == statuses, data
    assert canonical_requests(bytes(backend.raw)) == expected


def test_client_framing_bytes_never_reach_the_backend(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    sock.sendall(
        b"POST /direct/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n"
        b'3;ext=1\r\nabc\r\n002;q="x"\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n'
        b"PUT  /direct/b  HTTP/1.1\r\nHost: a\r\nContent-Length: 003\r\n"
        b"Connection: close\r\n\r\nxyz"
    )
    data, _ = recv_responses(sock, [b"POST", b"PUT"])
    sock.close()
    assert [s for s, _ in read_responses(data, [b"POST", b"PUT"])] == [200, 200]
    raw = bytes(backend.raw)
    assert canonical_requests(raw) == [
        (b"POST", b"/direct/a", b"abcde"),
        (b"PUT", b"/direct/b", b"xyz"),
    ]
    for client_bytes in (b"Chunked", b"ext=1", b"002;", b"X-Trailer", b": 003", b"  "):
        assert client_bytes not in raw


# -- the response side (rule 3) ----------------------------------------------------------------


def single_exchange(vector: ResponseVector) -> bool:
    kinds = [kind for kind, _ in vector.steps]
    return kinds[:1] == ["expect"] and "expect" not in kinds[1:]


INVALID = [v for v in RESPONSES if v.error is not None and single_exchange(v)]


def replying(reply: bytes, close: bool) -> Handler:
    """A backend handler writing scripted reply bytes; it keeps the connection (the harness
    then waits for the next request) unless ``close``."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        return not close

    return handler


def final_status(vector: ResponseVector) -> int | None:
    """The status of the final response head a vector relays before its fault, if any."""
    for event in vector.events:
        if event[0] == "head" and event[1].status >= 200:  # type: ignore[attr-defined]
            return int(event[1].status)  # type: ignore[attr-defined]
    return None


@pytest.mark.parametrize("vector", INVALID, ids=[v.id for v in INVALID])
def test_invalid_upstream_response_is_502_and_never_relayed_raw(
    gateway_for: GatewayFor, vector: ResponseVector
) -> None:
    method = vector.steps[0][1]
    reply = b"".join(data for kind, data in vector.steps if kind == "feed")
    ends_by_eof = any(kind == "eof" for kind, _ in vector.steps)
    gateway, backend = gateway_for(replying(reply, close=ends_by_eof))
    sock = gateway.connect()
    sock.sendall(b"%b /direct/x HTTP/1.1\r\nHost: a\r\n\r\n" % method)
    data, _ = recv_responses(sock, [method])
    sock.close()
    status = final_status(vector)
    responses = read_responses(data, [method])
    if status is None:
        assert responses and responses[0][0] == 502, data
        assert vector.error in (UpstreamProtocolError, UpstreamClosed)
    elif END in vector.events:
        assert responses and responses[0][0] == status  # complete before the fault
    else:
        # The head went out before the fault: the client sees the message cut, never more.
        assert data.startswith(b"HTTP/1.1 %d " % status)
        assert responses == [], "a truncated response must not read as complete"
    head = data.partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"content-length:") + head.count(b"transfer-encoding:") <= 1
    # The gateway closed its connection to the backend: the backend's reader saw the end.
    deadline = time.monotonic() + 3.0
    while backend.tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not backend.tasks, "the upstream connection was kept"


def test_backend_records_every_byte(gateway_for: GatewayFor) -> None:
    # Guards the tests above: the backend's raw record is what the gateway sent.
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    sock.sendall(b"GET /direct/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert recv_all(sock)[1]
    sock.close()
    assert canonical_requests(bytes(backend.raw)) == [(b"GET", b"/direct/a", b"")]
    assert isinstance(backend, Backend)
