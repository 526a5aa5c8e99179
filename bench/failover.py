"""Kill one of three nginx servers behind lbproxy under load, then bring it back, and report what
clients saw: failed requests, how long the dead server kept being tried, how long until it was
back, and its share of the traffic second by second while it ramps up (slow start).

Run: python bench/failover.py [--seconds 12] [--connections 20]   (needs nginx on PATH)

Three nginx servers listen on 127.0.0.11-13:18111, each answering its own name; lbproxy (started
as `python -m lbproxy run`) balances over them with active HTTP checks (interval 0.5 s, fall 2,
rise 2), passive health (max_fails 1), retries and slow_start 3 s. A bounded asyncio client keeps
`--connections` keep-alive connections busy for `--seconds` seconds. At a third of the run the
server on .12 is killed (SIGKILL: connections reset, the port refuses); at two thirds it is
started again. All traffic stays on loopback.
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

from benchkit import Child, Children, run_lab, wait_until_accepting
from labconfig import nginx_conf

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVERS = {"a": "127.0.0.11", "b": "127.0.0.12", "c": "127.0.0.13"}
SERVER_PORT = 18111
LBPROXY = ("127.0.0.1", 18190)
VICTIM = "b"

CONFIG = """
[gateway]
region = "bench"
listen = ["{front}:{front_port}"]

[[vpc]]
id = "vpc-bench"
region = "bench"
cidrs = ["127.0.0.0/8"]
{instances}
[[load_balancer]]
id = "lb-bench"
vpc = "vpc-bench"
ip = "127.0.0.20"
[[load_balancer.listener]]
port = 18191
servers = [{servers}]
slow_start = 3.0
health_check = {{ path = "/health", interval = 0.5, timeout = 0.5, rise = 2, fall = 2 }}
passive = {{ max_fails = 1, fail_timeout = 5.0 }}
retry = {{ tries = 2, try_timeout = 2.0 }}

[[authorization]]
name = "bench-lb"
vpc = "vpc-bench"
target = "lb-bench"
port = 18191

[[api]]
name = "bench"
methods = ["GET"]
path = "/*"
backend = {{ type = "vpc", authorization = "bench-lb", timeout = 5.0 }}
"""


def lbproxy_config() -> str:
    instances = "".join(
        f'\n[[instance]]\nid = "i-{name}"\nvpc = "vpc-bench"\nip = "{ip}"\n'
        for name, ip in SERVERS.items()
    )
    servers = ", ".join(f'{{ instance = "i-{n}", port = {SERVER_PORT} }}' for n in SERVERS)
    return CONFIG.format(
        front=LBPROXY[0], front_port=LBPROXY[1], instances=instances, servers=servers
    )


def server_block(name: str, ip: str) -> str:
    return f"""\
    server {{
        listen {ip}:{SERVER_PORT};
        default_type text/plain;
        location / {{ return 200 "{name}"; }}
    }}
"""


class Load:
    """Keep-alive GETs on ``connections`` connections until ``stop``; every answer is recorded
    with the second it came in."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.answers: list[tuple[float, int, str]] = []  # (time, status, server name)
        self.errors = 0
        self.started = time.monotonic()

    async def run(self, seconds: float) -> None:
        stop = self.started + seconds
        await asyncio.gather(*(self._client(stop) for _ in range(self.connections)))

    async def _client(self, stop: float) -> None:
        # As wrk and browsers do: a connection the gateway ends (Connection: close, e.g. at
        # max_requests_per_connection) is followed by a new one.
        while time.monotonic() < stop:
            reader, writer = await asyncio.open_connection(*LBPROXY)
            try:
                await self._requests(reader, writer, stop)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.errors += 1
                return
            finally:
                writer.close()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: float
    ) -> None:
        while time.monotonic() < stop:
            writer.write(b"GET /x HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            body = await reader.readexactly(int(match.group(1))) if match else b""
            self.answers.append((time.monotonic() - self.started, status, body.decode()))
            if re.search(rb"\r\nconnection: *close", head, re.IGNORECASE):
                return


def report(load: Load, log: str, kill_at: float, back_at: float) -> None:
    statuses = Counter(status for _, status, _ in load.answers)
    failed = sum(n for status, n in statuses.items() if status != 200)
    print(
        f"requests: {len(load.answers)}, failed: {failed} {dict(statuses)}, "
        f"client connection errors: {load.errors}"
    )
    victim = [t for t, status, name in load.answers if name == VICTIM and status == 200]
    after_kill = [t for t in victim if kill_at <= t < back_at]
    print(f"answers from the killed server after the kill: {len(after_kill)}")
    back = [t for t in victim if t >= back_at]
    if back:
        print(f"back in rotation {back[0] - back_at:.2f} s after its restart")
    print("share of the restarted server, second by second after the restart:")
    for second in range(int(back_at) + 1, int(max(t for t, _, _ in load.answers)) + 1):
        window = [name for t, _, name in load.answers if second - 1 <= t < second]
        if window:
            share = window.count(VICTIM) / len(window)
            print(f"  t={second:3d}s  {share:6.1%} of {len(window)} requests")
    transitions = [line for line in log.splitlines() if "lbproxy.health" in line]
    print("health transitions logged by lbproxy:")
    for line in transitions:
        print("  " + line)


async def measure(children: Children, workdir: Path, seconds: float, connections: int) -> None:
    nginx: dict[str, Child] = {}

    def start_server(name: str) -> None:
        prefix = workdir / f"server-{name}"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, server_block(name, SERVERS[name]), connections))
        argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        child = children.start(f"server-{name}", [*argv, "-g", "daemon off;"], None)
        wait_until_accepting(child, SERVERS[name], SERVER_PORT)
        nginx[name] = child

    for name in SERVERS:
        start_server(name)
    config = workdir / "lbproxy.toml"
    config.write_text(lbproxy_config())
    proxy = children.start(
        "lbproxy", [sys.executable, "-m", "lbproxy", "run", "-c", str(config)], None
    )
    wait_until_accepting(proxy, *LBPROXY)
    load = Load(connections)
    running = asyncio.create_task(load.run(seconds))
    await asyncio.sleep(seconds / 3)
    kill_at = time.monotonic() - load.started
    victim: Child = nginx[VICTIM]
    os.killpg(victim.process.pid, signal.SIGKILL)  # a crash: no goodbye, connections reset
    victim.process.wait()
    print(f"killed server {VICTIM} at {_clock()}")
    await asyncio.sleep(seconds / 3)
    back_at = time.monotonic() - load.started
    print(f"restarting server {VICTIM} at {_clock()}")
    start_server(VICTIM)
    await running
    report(load, proxy.stderr.read_text(), kill_at, back_at)


def _clock() -> str:
    """Wall-clock time as lbproxy's log lines show it, to read the transitions against."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    return run_lab(
        "lbproxy-failover-",
        REPO_ROOT,
        lambda children, workdir: measure(children, workdir, args.seconds, args.connections),
    )


if __name__ == "__main__":
    sys.exit(main())
