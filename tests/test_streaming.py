"""200 MB bodies streamed through a real ``lbproxy run`` process, each way, with the far side
stalling for a second midway: flow control must keep the proxy's memory bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Backend, LoopThread, Seen, free_port, gateway_toml

SIZE = 200 * 1024 * 1024
CHUNK = 256 * 1024
RSS_GROWTH_LIMIT = 48 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss(pid)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join(2)
        return self.peak


def start_lbproxy(tmp_path: Path, text: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = tmp_path / "lbproxy.toml"
    config.write_text(text.replace('listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]'))
    log = tmp_path / "lbproxy.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbproxy", "--log-level", "warning", "run", "-c", str(config)],
            stderr=err,
        )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(log.read_text()) from None
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("lbproxy did not start listening")


@pytest.fixture
def lbproxy_over(
    lt: LoopThread, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[int, int, Backend]]:
    backend: Backend = request.param
    lt.run(backend.start())
    proc, port = start_lbproxy(tmp_path, gateway_toml([backend], free_port(), timeout=30))
    try:
        yield proc.pid, port, backend
    finally:
        proc.terminate()
        proc.wait(10)
        lt.run(backend.stop())


async def counted(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    body = str(seen.body_size).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    return True


async def download(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
    block = b"x" * CHUNK
    for _ in range(SIZE // CHUNK):
        writer.write(block)
        await writer.drain()
    return True


@pytest.mark.parametrize(
    "lbproxy_over",
    [Backend("up", handler=counted, keep_body=False, stall_at=32 * 1024 * 1024)],
    indirect=True,
)
def test_200mb_upload_streams_with_bounded_memory(lbproxy_over: tuple[int, int, Backend]) -> None:
    pid, port, backend = lbproxy_over
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sampler = RssSampler(pid)
    baseline = sampler.peak
    sampler.start()
    sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % SIZE)
    block = os.urandom(CHUNK)
    for _ in range(SIZE // CHUNK):
        sock.sendall(block)
    response = b""
    while not response.endswith(str(SIZE).encode()):
        chunk = sock.recv(65536)
        assert chunk, response
        response += chunk
    peak = sampler.stop()
    sock.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert backend.received >= SIZE
    assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - baseline) >> 20} MiB"


@pytest.mark.parametrize("lbproxy_over", [Backend("down", handler=download)], indirect=True)
def test_200mb_download_streams_with_bounded_memory(
    lbproxy_over: tuple[int, int, Backend],
) -> None:
    pid, port, _ = lbproxy_over
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sampler = RssSampler(pid)
    baseline = sampler.peak
    sampler.start()
    sock.sendall(b"GET /api/download HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    head, _, first = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % SIZE in head
    received = len(first)
    stalled = False
    while received < SIZE:
        if not stalled and received > 32 * 1024 * 1024:
            stalled = True
            time.sleep(1.0)  # a slow client: the proxy must stop reading the upstream
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {received} bytes"
        received += len(chunk)
    peak = sampler.stop()
    sock.close()
    assert received == SIZE
    assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - baseline) >> 20} MiB"
