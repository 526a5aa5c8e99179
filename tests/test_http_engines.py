"""Both parser engines against one table of vectors (``tests/vectors.py``): they must agree
with the table, so with each other, and with themselves however the bytes are cut into reads.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from lbproxy.config import MAX_HEADER_COUNT, MAX_REQUEST_LINE
from lbproxy.errors import (
    BadRequest,
    HeadersTooLarge,
    NotImplementedByGateway,
    UpstreamClosed,
    UpstreamProtocolError,
)
from lbproxy.framing import RequestHead, ResponseHead
from lbproxy.http import request_parser, response_parser
from tests.vectors import (
    END,
    LIMIT,
    REQUESTS,
    RESPONSES,
    Event,
    ReqHead,
    RequestVector,
    RespHead,
    ResponseVector,
    Step,
    feed,
    get_with,
)

ENGINES = ("httptools", "h11")


class RequestRecorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_request_head(self, head: RequestHead) -> None:
        headers = tuple((n.lower(), v) for n, v in head.headers)
        self.events.append(
            (
                "head",
                ReqHead(
                    head.method,
                    head.target,
                    head.http11,
                    head.content_length,
                    head.chunked,
                    head.keep_alive,
                    head.host,
                    head.expect_continue,
                    headers,
                ),
            )
        )

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_end(self) -> None:
        self.events.append(END)


class Outcome(NamedTuple):
    events: tuple[Event, ...]
    error: type[Exception] | None


def joined(events: list[Event]) -> tuple[Event, ...]:
    """Events with consecutive body chunks joined: the reads decide where a body is cut."""
    out: list[Event] = []
    for event in events:
        if event[0] == "body" and out and out[-1][0] == "body":
            out[-1] = ("body", bytes(out[-1][1]) + bytes(event[1]))
        else:
            out.append(event)
    return tuple(out)


def assert_no_empty_body(events: list[Event]) -> None:
    # An empty chunk re-framed with encode_chunk would end a chunked body early.
    assert all(e[1] for e in events if e[0] == "body"), events


def run_request(
    engine: str,
    reads: list[bytes],
    limit: int = LIMIT,
    line_limit: int = MAX_REQUEST_LINE,
    count_limit: int = MAX_HEADER_COUNT,
) -> Outcome:
    sink = RequestRecorder()
    parser = request_parser(engine, sink, limit, line_limit, count_limit)
    error: type[Exception] | None = None
    try:
        for data in reads:
            parser.feed(data)
    except Exception as exc:
        error = type(exc)
    assert_no_empty_body(sink.events)
    return Outcome(joined(sink.events), error)


def run_vector(engine: str, vector: RequestVector, reads: list[bytes] | None = None) -> Outcome:
    reads = [vector.raw] if reads is None else reads
    return run_request(engine, reads, vector.limit, vector.line_limit, vector.count_limit)


def assert_same_outcome(split: Outcome, whole: Outcome, where: str = "") -> None:
    """Reads cut elsewhere give the same outcome, except that the failing request's head (and
    body) may come out when a read ended before its framing failed: never its end."""
    if whole.error is None:
        assert split == whole, where
        return
    extra = split.events[len(whole.events) :]
    assert split.error is whole.error, where
    assert split.events[: len(whole.events)] == whole.events, where
    assert END not in extra and all(e[0] == "head" for e in extra[:1]), where


@pytest.mark.parametrize("vector", REQUESTS, ids=[v.id for v in REQUESTS])
@pytest.mark.parametrize("engine", ENGINES)
def test_request_vector(engine: str, vector: RequestVector) -> None:
    assert run_vector(engine, vector) == (vector.events, vector.error)


@pytest.mark.parametrize("vector", REQUESTS, ids=[v.id for v in REQUESTS])
def test_engines_agree_on_request(vector: RequestVector) -> None:
    # Apart from the table: a failure here is a disagreement, not two engines equally wrong.
    httptools, h11 = (run_vector(engine, vector) for engine in ENGINES)
    assert httptools == h11


@pytest.mark.parametrize("vector", REQUESTS, ids=[v.id for v in REQUESTS])
@pytest.mark.parametrize("engine", ENGINES)
def test_request_vector_split_anywhere(engine: str, vector: RequestVector) -> None:
    whole = run_vector(engine, vector)
    raw = vector.raw
    for cut in range(1, len(raw)):
        split = run_vector(engine, vector, [raw[:cut], raw[cut:]])
        assert_same_outcome(split, whole, f"split at {cut}: {raw[:cut]!r} | {raw[cut:]!r}")


@pytest.mark.parametrize("vector", REQUESTS, ids=[v.id for v in REQUESTS])
@pytest.mark.parametrize("engine", ENGINES)
def test_request_vector_byte_at_a_time(engine: str, vector: RequestVector) -> None:
    raw = vector.raw
    reads = [raw[i : i + 1] for i in range(len(raw))]
    assert_same_outcome(run_vector(engine, vector, reads), run_vector(engine, vector))


@pytest.mark.parametrize("vector", REQUESTS, ids=[v.id for v in REQUESTS])
def test_engines_agree_on_request_split_anywhere(vector: RequestVector) -> None:
    # Not only the verdict: the events emitted before it, however the reads are cut.
    raw = vector.raw
    for cut in range(1, len(raw)):
        reads = [raw[:cut], raw[cut:]]
        httptools, h11 = (run_vector(engine, vector, reads) for engine in ENGINES)
        assert httptools == h11, f"split at {cut}: {raw[:cut]!r} | {raw[cut:]!r}"


_HEAD_UNDER_LIMIT = get_with("Host: a", "Cookie: " + "c" * 2500)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("read_size", [1, 7, 512, 1000, len(_HEAD_UNDER_LIMIT)])
def test_head_under_limit_accepted_however_it_arrives(engine: str, read_size: int) -> None:
    # A 2.5 KiB head against a 4 KiB limit: every byte counts once, whatever the reads.
    raw = _HEAD_UNDER_LIMIT
    reads = [raw[i : i + read_size] for i in range(0, len(raw), read_size)]
    outcome = run_request(engine, reads, 4096)
    assert outcome.error is None
    assert [e[0] for e in outcome.events] == ["head", "end"]


_HEAD_OVER_LIMIT = get_with("Host: a", "Cookie: " + "c" * 8000)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("read_size", [1, 1000, len(_HEAD_OVER_LIMIT)])
def test_head_over_limit_refused_however_it_arrives(engine: str, read_size: int) -> None:
    raw = _HEAD_OVER_LIMIT
    reads = [raw[i : i + read_size] for i in range(0, len(raw), read_size)]
    assert run_request(engine, reads, 4096) == ((), HeadersTooLarge)


def test_error_status_hints() -> None:
    assert (BadRequest.status, HeadersTooLarge.status, NotImplementedByGateway.status) == (
        400,
        431,
        501,
    )
    assert (UpstreamProtocolError.status, UpstreamClosed.status) == (502, 502)


class ResponseRecorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_response_head(self, head: ResponseHead) -> None:
        kept = tuple((n.lower(), v) for n, v in head.kept)
        self.events.append(
            (
                "head",
                RespHead(
                    head.status,
                    head.http11,
                    head.content_length,
                    head.chunked,
                    head.keep_alive,
                    kept,
                ),
            )
        )

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self) -> None:
        self.events.append(END)


def run_response(engine: str, steps: tuple[Step, ...]) -> Outcome:
    sink = ResponseRecorder()
    parser = response_parser(engine, sink)
    error: type[Exception] | None = None
    try:
        for kind, data in steps:
            if kind == "expect":
                parser.expect(data, sink)
            elif kind == "feed":
                parser.feed(data)
            else:
                parser.feed_eof()
    except Exception as exc:
        error = type(exc)
    assert_no_empty_body(sink.events)
    return Outcome(joined(sink.events), error)


def splits(steps: tuple[Step, ...]) -> list[tuple[Step, ...]]:
    """Every way of cutting one read of ``steps`` in two."""
    out = []
    for i, (kind, data) in enumerate(steps):
        if kind == "feed":
            for cut in range(1, len(data)):
                out.append((*steps[:i], feed(data[:cut]), feed(data[cut:]), *steps[i + 1 :]))
    return out


@pytest.mark.parametrize("vector", RESPONSES, ids=[v.id for v in RESPONSES])
@pytest.mark.parametrize("engine", ENGINES)
def test_response_vector(engine: str, vector: ResponseVector) -> None:
    assert run_response(engine, vector.steps) == (vector.events, vector.error)


@pytest.mark.parametrize("vector", RESPONSES, ids=[v.id for v in RESPONSES])
def test_engines_agree_on_response(vector: ResponseVector) -> None:
    httptools, h11 = (run_response(engine, vector.steps) for engine in ENGINES)
    assert httptools == h11


@pytest.mark.parametrize("vector", RESPONSES, ids=[v.id for v in RESPONSES])
@pytest.mark.parametrize("engine", ENGINES)
def test_response_vector_split_anywhere(engine: str, vector: ResponseVector) -> None:
    whole = run_response(engine, vector.steps)
    for steps in splits(vector.steps):
        assert run_response(engine, steps) == whole, steps


@pytest.mark.parametrize("vector", RESPONSES, ids=[v.id for v in RESPONSES])
def test_engines_agree_on_response_split_anywhere(vector: ResponseVector) -> None:
    for steps in splits(vector.steps):
        httptools, h11 = (run_response(engine, steps) for engine in ENGINES)
        assert httptools == h11, steps
