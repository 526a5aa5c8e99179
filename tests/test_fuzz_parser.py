"""Hypothesis properties over the parser layer, both engines.

- Valid input, cut into reads anywhere, gives the same events as read whole, and the requests
  (or responses) that were written.
- Mutated input never crashes an engine (only ``HTTPError``), both engines reach the same
  outcome, and neither emits a request that a strict reference reading (``reference_requests``,
  written here apart from lbproxy's code) would not read, nor reads it differently.

The examples are derandomized so the suite is repeatable; LBPROXY_FUZZ_EXAMPLES=20000 (and
LBPROXY_FUZZ_RANDOM=1) runs a deeper, random search.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import NamedTuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.errors import HTTPError
from tests.test_http_engines import (
    ENGINES,
    Outcome,
    run_request,
    run_response,
)
from tests.vectors import END, Step, expect, feed

EXAMPLES = int(os.environ.get("LBPROXY_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("LBPROXY_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- valid messages ----------------------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=8)
values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=12
).map(lambda v: v.encode())
paths = st.text("abcxyz0123456789-._~%!$&'()*+,;=:@/", max_size=12).map(lambda p: b"/" + p.encode())
queries = st.one_of(st.just(b""), st.text("abc=&123", max_size=8).map(lambda q: b"?" + q.encode()))
# Names lbproxy reads itself, or that pass for them with "_" read as "-", are left out here.
SPECIAL = re.compile(
    r"(?i)^(host|content.length|transfer.encoding|connection|expect|upgrade|te|trailer|"
    r"keep.alive|proxy.connection|proxy.authenticate|proxy.authorization|x.forwarded.for|"
    r"x.forwarded.proto|x.forwarded.host|via|x.request.id)$"
)
names = tokens.filter(lambda n: not SPECIAL.match(n)).map(lambda n: n.encode())
bodies = st.binary(max_size=40)


class Request(NamedTuple):
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunked: bool
    wire: bytes


@st.composite
def chunked_body(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` in chunks of drawn sizes, with extensions, and a trailer section."""
    out = []
    rest = data
    ext = st.sampled_from([b"", b";a", b";a=b", b';q="x y"', b";n=1;m"])
    while rest:
        size = draw(st.integers(1, len(rest)))
        digits = b"%x" % size if draw(st.booleans()) else b"%X" % size
        out.append(digits + draw(ext) + b"\r\n" + rest[:size] + b"\r\n")
        rest = rest[size:]
    trailers = draw(st.lists(st.tuples(names, values), max_size=2))
    fields = b"".join(b"%b: %b\r\n" % t for t in trailers)
    return b"".join(out) + b"0" + draw(ext) + b"\r\n" + fields + b"\r\n"


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    target = draw(paths) + draw(queries)
    headers = [(b"Host", b"a.example")]
    headers += draw(st.lists(st.tuples(names, values), max_size=4))
    body = draw(bodies) if method in (b"POST", b"PUT", b"PATCH") else b""
    chunked = bool(body) and draw(st.booleans())
    ows = draw(st.sampled_from([b" ", b"", b"  ", b"\t"]))
    lines = [b"%b:%b%b" % (n, ows, v) for n, v in headers]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked_body(body))
    else:
        if body or draw(st.booleans()):
            lines.append(b"Content-Length: %d" % len(body))
        payload = body
    wire = b"%b %b HTTP/1.1\r\n%b\r\n\r\n%b" % (method, target, b"\r\n".join(lines), payload)
    return Request(method, target, tuple(headers), body, chunked, wire)


pipelines = st.lists(requests(), min_size=1, max_size=3)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (positions in 0..len), in order."""
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def requests_of(outcome: Outcome) -> list[tuple[bytes, bytes, bytes]]:
    """(method, target, body) of each request an outcome emitted."""
    out: list[tuple[bytes, bytes, bytes]] = []
    for event in outcome.events:
        if event[0] == "head":
            head = event[1]
            out.append((head.method, head.target, b""))  # type: ignore[attr-defined]
        elif event[0] == "body":
            method, target, body = out[-1]
            out[-1] = (method, target, body + bytes(event[1]))  # type: ignore[arg-type]
    return out


@FUZZ
@given(pipelines, st.lists(st.integers(0, 10_000), max_size=6))
def test_valid_requests_read_the_same_however_cut(
    pipeline: list[Request], points: list[int]
) -> None:
    wire = b"".join(r.wire for r in pipeline)
    expected = [(r.method, r.target, r.body) for r in pipeline]
    for engine in ENGINES:
        whole = run_request(engine, [wire])
        assert whole.error is None, (engine, whole.error, wire)
        assert requests_of(whole) == expected, engine
        assert sum(1 for e in whole.events if e == END) == len(pipeline)
        assert run_request(engine, cut(wire, points)) == whole, engine


# -- a strict reference reading ----------------------------------------------------------------

_REF_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) +([\x21-\x7e]+) +(?:HTTP|RTSP|ICE)/1\.([01])\r\n"
)
_REF_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_REF_FIELD = re.compile(
    rb"([!#$%%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:%b|[ \t]+(?=%b))*)[ \t]*\r\n"
    % (_REF_VCHAR, _REF_VCHAR)
)
_REF_CHUNK = re.compile(
    rb"([0-9A-Fa-f]+)(?:;[!#$%&\'*+\-.^_`|~0-9A-Za-z]*(?:=(?:[!#$%&\'*+\-.^_`|~0-9A-Za-z]*"
    rb'(?:"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*")?))?)*\r\n'
)


def reference_requests(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The requests RFC 9112 reads in ``data``, up to the first fault: method, target and
    body. A request whose head is complete counts even if its body is not. With llhttp's
    leniencies, which decide nothing about framing: CR and LF before a request line are
    skipped, runs of spaces in the request line read as one (RFC 9112 3 allows it). Target
    forms are not judged here: the router serves origin-form only (test_hardening_framing)."""
    out: list[tuple[bytes, bytes, bytes]] = []
    pos = 0
    while True:
        while data[pos : pos + 1] in (b"\r", b"\n"):
            pos += 1
        line = _REF_LINE.match(data, pos)
        if line is None:
            return out
        method, target, minor = line[1], line[2], line[3]
        pos = line.end()
        fields = []
        while (field := _REF_FIELD.match(data, pos)) is not None:
            fields.append((field[1].lower(), field[2]))
            pos = field.end()
        if data[pos : pos + 2] != b"\r\n":
            return out
        pos += 2
        lengths = [v for n, v in fields if n == b"content-length"]
        codings = [v for n, v in fields if n == b"transfer-encoding"]
        if len(lengths) > 1 or (lengths and codings) or (lengths and not lengths[0].isdigit()):
            return out
        if codings and (len(codings) > 1 or codings[0].lower() != b"chunked" or minor == b"0"):
            return out
        out.append((method, target, b""))
        if codings:
            body, pos = _reference_chunks(data, pos)
            if pos < 0:
                out[-1] = (method, target, body)
                return out
        else:
            size = int(lengths[0]) if lengths else 0
            body = data[pos : pos + size]
            pos += size
            if len(body) < size:
                out[-1] = (method, target, body)
                return out
        out[-1] = (method, target, body)


def _reference_chunks(data: bytes, pos: int) -> tuple[bytes, int]:
    body = b""
    while True:
        chunk = _REF_CHUNK.match(data, pos)
        if chunk is None:
            return body, -1
        size = int(chunk[1], 16)
        pos = chunk.end()
        if size == 0:
            break
        body += data[pos : pos + size]
        if data[pos + size : pos + size + 2] != b"\r\n":
            return body + data[pos : pos + size], -1
        pos += size + 2
    while (field := _REF_FIELD.match(data, pos)) is not None:
        pos = field.end()
    if data[pos : pos + 2] != b"\r\n":
        return body, -1
    return body, pos + 2


def test_the_reference_reads_what_it_should() -> None:
    # Guards the reference itself: a reading that found nothing would pass everything below.
    wire = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nhi\r\n0\r\n\r\n"
        b"PUT /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /d HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"
    )
    assert reference_requests(wire) == [
        (b"GET", b"/a", b""),
        (b"POST", b"/b", b"hi"),
        (b"PUT", b"/c", b"abc"),
    ]


# -- mutated messages --------------------------------------------------------------------------

INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b'"',
    b"=",
    b"0",
    b"f",
    b"x",
    b"-",
    b"+",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"#",
    b"\r\n\r\n",
    b" \r\n",
    b"\r\n ",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Host: b\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"GET / HTTP/1.1\r\n",
    b"Connection: close\r\n",
]


@st.composite
def mutated(draw: st.DrawFn, wire: bytes) -> bytes:
    data = bytearray(wire)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "duplicate"]))
        if kind == "replace" and at < len(data):
            data[at : at + 1] = draw(st.sampled_from(INTERESTING))[:1] or b"x"
        elif kind == "insert":
            data[at:at] = draw(st.one_of(st.sampled_from(INTERESTING), st.binary(max_size=3)))
        elif kind == "delete":
            data[at : at + draw(st.integers(1, 4))] = b""
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


mutated_pipelines = pipelines.flatmap(lambda p: mutated(b"".join(r.wire for r in p)))


def run_safely(engine: str, reads: list[bytes]) -> Outcome:
    """``run_request``, but any exception that is not an ``HTTPError`` fails the test."""
    outcome = run_request(engine, reads)
    assert outcome.error is None or issubclass(outcome.error, HTTPError), outcome.error
    return outcome


@FUZZ
@given(mutated_pipelines, st.lists(st.integers(0, 10_000), max_size=4))
def test_mutated_requests_never_read_more_than_the_reference(
    wire: bytes, points: list[int]
) -> None:
    reference = reference_requests(wire)
    outcomes = {engine: run_safely(engine, [wire]) for engine in ENGINES}
    assert outcomes["httptools"] == outcomes["h11"], wire
    read = requests_of(outcomes["httptools"])
    assert len(read) <= len(reference), (wire, read, reference)
    for (method, target, body), (ref_method, ref_target, ref_body) in zip(
        read, reference, strict=False
    ):
        assert (method, target) == (ref_method, ref_target), wire
        assert ref_body.startswith(body), wire
    # However the reads are cut, the engines agree with each other (the events emitted before
    # a failure may differ from the whole read's, never the verdict).
    reads = cut(wire, points)
    split = {engine: run_safely(engine, reads) for engine in ENGINES}
    assert split["httptools"] == split["h11"], (wire, reads)
    assert split["httptools"].error is outcomes["httptools"].error, (wire, reads)


# -- responses ---------------------------------------------------------------------------------


class Response(NamedTuple):
    status: int
    body: bytes
    wire: bytes


@st.composite
def responses(draw: st.DrawFn) -> Response:
    status = draw(st.sampled_from([200, 201, 404, 500, 299]))
    headers = draw(st.lists(st.tuples(names, values), max_size=4))
    body = draw(bodies)
    lines = [b"%b: %b" % h for h in headers]
    mode = draw(st.sampled_from(["length", "chunked"]))
    if mode == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked_body(body))
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    head = b"HTTP/1.1 %d %b\r\n" % (status, draw(st.sampled_from([b"OK", b"", b"Fine Thanks"])))
    return Response(
        status, body, head + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + payload
    )


def exchange_steps(responses: list[Response], reads: list[list[bytes]]) -> tuple[Step, ...]:
    steps: list[Step] = []
    for pieces in reads:
        steps.append(expect())
        steps.extend(feed(p) for p in pieces)
    return tuple(steps)


@FUZZ
@given(st.lists(responses(), min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=4))
def test_valid_responses_read_the_same_however_cut(
    answers: list[Response], points: list[int]
) -> None:
    whole = exchange_steps(answers, [[r.wire] for r in answers])
    split = exchange_steps(answers, [cut(r.wire, points) for r in answers])
    for engine in ENGINES:
        outcome = run_response(engine, whole)
        assert outcome.error is None, (engine, outcome)
        statuses = [e[1].status for e in outcome.events if e[0] == "head"]  # type: ignore[attr-defined]
        assert statuses == [r.status for r in answers]
        assert run_response(engine, split) == outcome, engine


@FUZZ
@given(responses().flatmap(lambda r: mutated(r.wire)), st.lists(st.integers(0, 10_000), max_size=4))
def test_mutated_responses_never_crash_and_engines_agree(wire: bytes, points: list[int]) -> None:
    for reads in ([wire], cut(wire, points)):
        steps = (expect(), *(feed(r) for r in reads))
        outcomes = [run_response(engine, steps) for engine in ENGINES]
        for outcome in outcomes:
            assert outcome.error is None or issubclass(outcome.error, HTTPError), outcome
        assert outcomes[0] == outcomes[1], (wire, reads)
