"""Hold many idle keep-alive client connections open on lbproxy and report its memory.

Run: python bench/idle_connections.py [--connections 10000] [--hold 5]   (needs nginx on PATH)

One nginx backend (127.0.0.1:18281) behind `python -m lbproxy run` with one worker
(127.0.0.1:18290, keepalive_timeout 600 s). The script opens --connections client connections
(256 connecting at a time), sends one GET on each and reads its answer, so every connection is
an idle keep-alive one as a browser or a client pool leaves it, then holds them all for --hold
seconds. It reports lbproxy's RSS (its process tree, from /proc) before the first connection and
with all of them held, and checks that a sample of the held connections is still answered.
The target is <= 150 MB (1 MB = 10^6 bytes) for 10,000 connections.

File descriptors: the script raises its own RLIMIT_NOFILE soft limit (and the hard one where
allowed) to --connections + 1024 before starting lbproxy, which inherits it; if the hard limit
cannot be raised it says so and exits 1. All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchkit import (
    BenchError,
    Children,
    is_accepting,
    raise_nofile,
    run_lab,
    tree_rss_bytes,
    wait_until_accepting,
)
from labconfig import LOOPBACK, backend_server_block, lbproxy_config, nginx_conf

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND_PORT = 18281
LBPROXY_PORT = 18290
LB = ("127.0.0.20", 18291)
CONNECTING_AT_ONCE = 256
SAMPLE = 100
FD_MARGIN = 1024
TARGET_MB = 150
TARGET_CONNECTIONS = 10_000
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
MB = 1e6


async def read_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """One whole answer (the backend's 12-byte body, so a few reads at most)."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"hello world\n"):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=10)
        if not chunk:
            raise ConnectionError("closed before the answer ended")
        data += chunk
    return data


async def open_idle(loop: asyncio.AbstractEventLoop, gate: asyncio.Semaphore) -> socket.socket:
    async with gate:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (LOOPBACK, LBPROXY_PORT)), timeout=10)
            await loop.sock_sendall(sock, REQUEST)
            answer = await read_answer(loop, sock)
        except BaseException:
            sock.close()
            raise
        if not answer.startswith(b"HTTP/1.1 200 "):
            sock.close()
            raise ConnectionError(f"answered {answer[:40]!r}")
        return sock


async def still_answered(loop: asyncio.AbstractEventLoop, socks: list[socket.socket]) -> int:
    async def one(sock: socket.socket) -> bool:
        try:
            await loop.sock_sendall(sock, REQUEST)
            return (await read_answer(loop, sock)).startswith(b"HTTP/1.1 200 ")
        except (TimeoutError, OSError):
            return False

    return sum(await asyncio.gather(*(one(s) for s in socks)))


async def measure(children: Children, workdir: Path, connections: int, hold: float) -> None:
    for host, port in ((LOOPBACK, BACKEND_PORT), (LOOPBACK, LBPROXY_PORT), LB):
        if is_accepting(host, port):
            raise BenchError(f"{host}:{port} is already in use (stop whatever listens there)")
    soft, hard = raise_nofile(connections + FD_MARGIN)
    print(f"RLIMIT_NOFILE: soft {soft}, hard {hard} (this script and lbproxy)")
    prefix = workdir / "backend"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, backend_server_block(BACKEND_PORT), 64))
    argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    backend = children.start("backend", [*argv, "-g", "daemon off;"], None)
    wait_until_accepting(backend, LOOPBACK, BACKEND_PORT)
    config = workdir / "lbproxy.toml"
    config.write_text(
        lbproxy_config(
            LBPROXY_PORT,
            (BACKEND_PORT,),
            lb_ip=LB[0],
            lb_port=LB[1],
            # max_client_connections (10,000 by default) with room for the readiness probe
            # and the sampled requests: the cap is not what this measures.
            gateway_extra=(
                f"keepalive_timeout = 600.0\nmax_client_connections = {connections + 1024}\n"
            ),
        )
    )
    proxy = children.start(
        "lbproxy", [sys.executable, "-m", "lbproxy", "run", "-c", str(config)], None
    )
    wait_until_accepting(proxy, LOOPBACK, LBPROXY_PORT)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    # One exchange first, so the pool's upstream connection and lazy imports are in "before".
    warm = await open_idle(loop, gate)
    await asyncio.sleep(1.0)
    before = tree_rss_bytes(proxy.process.pid)
    began = time.monotonic()
    results = await asyncio.gather(
        *(open_idle(loop, gate) for _ in range(connections)), return_exceptions=True
    )
    opened = [r for r in results if isinstance(r, socket.socket)]
    failed = [r for r in results if not isinstance(r, socket.socket)]
    took = time.monotonic() - began
    try:
        await asyncio.sleep(hold)
        if not proxy.is_running():
            raise BenchError(f"lbproxy died holding the connections\n{proxy.output_tail()}")
        held = tree_rss_bytes(proxy.process.pid)
        sample = opened[:: max(1, len(opened) // SAMPLE)][:SAMPLE]
        answered = await still_answered(loop, sample)
    finally:
        for sock in [warm, *opened]:
            sock.close()
    report(Held(connections, len(opened), failed, took, hold, before, held, answered, len(sample)))


@dataclass(frozen=True, slots=True)
class Held:
    """What one run saw."""

    wanted: int
    opened: int
    failed: list[BaseException]
    seconds_to_open: float
    hold: float
    rss_before: int
    rss_held: int
    answered: int
    sampled: int


def report(run: Held) -> None:
    reasons = sorted({f"{type(e).__name__}: {e}" for e in run.failed})[:3]
    print(
        f"idle keep-alive connections: {run.opened} of {run.wanted} opened in "
        f"{run.seconds_to_open:.1f} s, {len(run.failed)} failed {reasons}"
    )
    growth = run.rss_held - run.rss_before
    per = growth / run.opened if run.opened else 0.0
    print(f"lbproxy RSS before: {run.rss_before / MB:.1f} MB")
    print(
        f"lbproxy RSS with {run.opened} idle connections held {run.hold:g} s: "
        f"{run.rss_held / MB:.1f} MB (+{growth / MB:.1f} MB, {per / 1024:.1f} KiB per connection)"
    )
    at_target = (
        run.rss_held
        if run.opened >= TARGET_CONNECTIONS
        else (run.rss_before + per * TARGET_CONNECTIONS)
    )
    how = "measured" if run.opened >= TARGET_CONNECTIONS else "extrapolated"
    verdict = "met" if at_target <= TARGET_MB * MB else "NOT met"
    print(
        f"target <= {TARGET_MB} MB with {TARGET_CONNECTIONS} connections: "
        f"{at_target / MB:.1f} MB {how}, {verdict}"
    )
    print(f"still answered after {run.hold:g} s idle: {run.answered}/{run.sampled} sampled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold them idle")
    args = parser.parse_args()
    if args.connections < 1 or args.hold < 0:
        parser.error("--connections must be at least 1 and --hold 0 or more")
    with contextlib.suppress(KeyboardInterrupt):
        return run_lab(
            "lbproxy-idle-",
            REPO_ROOT,
            lambda children, workdir: measure(children, workdir, args.connections, args.hold),
        )
    return 130


if __name__ == "__main__":
    sys.exit(main())
