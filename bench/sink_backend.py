"""A tiny HTTP/1.1 upload sink for bench/streaming.py: it reads each request's body as it comes
(Content-Length framing, which lbproxy keeps for a request that has it), keeps none of it, and
answers ``received <n>`` with keep-alive. nginx cannot be used here: it either buffers a large
body to a temporary file or, with ``return``, answers before the body is read and discards the
rest, so the bytes that reached it could not be counted.

Run: python bench/sink_backend.py --port 18382   (listens on 127.0.0.1 only)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re

HEAD_LIMIT = 64 * 1024
_LENGTH_RE = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE)


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._remaining: int | None = None  # body bytes still to come; None: reading a head
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        while data and self._transport is not None:
            if self._remaining is None:
                data = self._read_head(data)
            else:
                taken = min(len(data), self._remaining)
                self._remaining -= taken
                self._received += taken
                data = data[taken:]
                if self._remaining == 0:
                    self._answer(f"received {self._received}\n".encode())

    def _read_head(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > HEAD_LIMIT:
                self._answer(b"head too large\n", status=b"431 Request Header Fields Too Large")
            return b""
        head, rest = self._head[: end + 2], self._head[end + 4 :]
        self._head = b""
        match = _LENGTH_RE.search(head)
        self._remaining = int(match.group(1)) if match else 0
        self._received = 0
        if self._remaining == 0:
            self._answer(b"received 0\n")
        return rest

    def _answer(self, body: bytes, status: bytes = b"200 OK") -> None:
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 %b\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b"
            % (status, len(body), body)
        )
        self._remaining = None
        if not status.startswith(b"200"):
            self._transport.close()
            self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.port))


if __name__ == "__main__":
    main()
