"""Responses the gateway writes itself: small JSON errors naming a reason."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

from lbproxy.errors import HTTPError, MethodNotAllowed, ServiceUnavailable
from lbproxy.framing import status_line


class _DateCache:
    """The Date header value, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


date_header = _DateCache()


def error_body(error: HTTPError) -> bytes:
    body: dict[str, object] = {"status": error.status, "error": error.reason}
    if error.detail:
        body["message"] = error.detail
    return json.dumps(body).encode() + b"\n"


def error_response(error: HTTPError, request_id: bytes | None, keep_alive: bool) -> bytes:
    body = error_body(error)
    lines = [
        status_line(error.status),
        b"Date: %b\r\n" % date_header.get(),
        b"Content-Type: application/json\r\n",
        b"Content-Length: %d\r\n" % len(body),
    ]
    if isinstance(error, ServiceUnavailable):
        lines.append(b"Retry-After: 1\r\n")
    if isinstance(error, MethodNotAllowed):
        lines.append(b"Allow: %b\r\n" % ", ".join(error.allowed).encode())
    lines.extend(b"%b: %b\r\n" % header for header in error.headers)
    if request_id:
        lines.append(b"X-Request-Id: %b\r\n" % request_id)
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)
