"""Reload lbproxy again and again under load and report what clients saw: requests answered,
requests failed (an error status, a reset, a connection refused), reloads done.

Run: python bench/reload.py [--seconds 10] [--connections 20] [--every 0.5] [--workers 2]

Three nginx servers listen on 127.0.0.11-13:18111 (as in failover.py); lbproxy (`python -m
lbproxy run`, `--workers` processes) balances over them. A bounded asyncio client keeps
`--connections` keep-alive connections busy for `--seconds` seconds, opening a new connection
whenever the gateway closes one (as HTTP clients do). Every `--every` seconds the configuration
file is rewritten, alternately dropping the third server from the load balancer and bringing
it back, and lbproxy gets SIGHUP. All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from benchkit import Children, run_lab, wait_until_accepting
from failover import LBPROXY, SERVER_PORT, SERVERS, lbproxy_config, server_block
from labconfig import nginx_conf

REPO_ROOT = Path(__file__).resolve().parent.parent


class Load:
    """Keep-alive GETs on ``connections`` connections until the time is up; what each got."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.connects = 0

    async def run(self, seconds: float) -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(self._client(stop) for _ in range(self.connections)))

    async def _client(self, stop: float) -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection(*LBPROXY)
            except OSError as exc:
                self.failures[f"connect: {exc.strerror or exc}"] += 1
                await asyncio.sleep(0.01)
                continue
            self.connects += 1
            try:
                await self._requests(reader, writer, stop)
            finally:
                writer.close()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: float
    ) -> None:
        while time.monotonic() < stop:
            writer.write(b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n")
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:  # closed between requests: a client opens another
                    return
                self.failures["closed mid-response"] += 1
                return
            except ConnectionError as exc:
                self.failures[f"{type(exc).__name__}"] += 1
                return
            status = int(head[9:12])
            match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            await reader.readexactly(int(match.group(1)) if match else 0)
            self.statuses[status] += 1
            if status != 200:
                self.failures[f"status {status}"] += 1
            if re.search(rb"\r\nconnection: *close", head, re.IGNORECASE):
                return


async def measure(children: Children, workdir: Path, args: argparse.Namespace) -> None:
    seconds, connections, every, workers = args.seconds, args.connections, args.every, args.workers
    for name, ip in SERVERS.items():
        prefix = workdir / f"server-{name}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, server_block(name, ip), connections))
        argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        wait_until_accepting(
            children.start(f"server-{name}", [*argv, "-g", "daemon off;"], None), ip, SERVER_PORT
        )
    full = lbproxy_config().replace("[gateway]\n", f"[gateway]\nworkers = {workers}\n")
    third = f', {{ instance = "i-c", port = {SERVER_PORT} }}'
    front = f'listen = ["{LBPROXY[0]}:{LBPROXY[1]}"]'
    assert third in full and front in full
    # --rebind: the other configuration also listens on a second address, so each reload
    # starts a new runtime beside the old one and drains the old (not a reload in place).
    other = full.replace(third, "")
    if args.rebind:
        other = other.replace(front, front[:-1] + f', "{LBPROXY[0]}:{LBPROXY[1] + 10}"]')
    config = workdir / "lbproxy.toml"
    config.write_text(full)
    proxy = children.start(
        "lbproxy", [sys.executable, "-m", "lbproxy", "run", "-c", str(config)], None
    )
    wait_until_accepting(proxy, *LBPROXY)
    await asyncio.sleep(1.0)  # every worker up
    load = Load(connections)
    running = asyncio.create_task(load.run(seconds))
    sent = 0
    began = time.monotonic()
    while not running.done():
        await asyncio.sleep(every)
        if time.monotonic() - began > seconds - every:
            break
        config.write_text(other if sent % 2 == 0 else full)
        os.kill(proxy.process.pid, signal.SIGHUP)
        sent += 1
    await running
    log = proxy.stderr.read_text()
    answered = sum(load.statuses.values())
    failed = sum(load.failures.values())
    kind = "a new runtime each (rebind)" if args.rebind else "in place"
    print(f"{seconds:g} s, {connections} connections, lbproxy workers = {workers}, reloads {kind}")
    print(
        f"reloads: {sent} SIGHUPs sent, {log.count('reloaded')} worker reloads logged,"
        f" {log.count('reload refused')} refused"
    )
    rate = answered / seconds
    print(f"requests answered: {answered} ({rate:.0f}/s), by status: {dict(load.statuses)}")
    print(f"connections opened: {load.connects}")
    print(f"failed requests: {failed} {dict(load.failures)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between reloads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rebind", action="store_true", help="reloads that bind new addresses")
    args = parser.parse_args()
    return run_lab(
        "lbproxy-reload-", REPO_ROOT, lambda children, workdir: measure(children, workdir, args)
    )


if __name__ == "__main__":
    sys.exit(main())
