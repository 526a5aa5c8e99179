"""Active health checks of one load balancer listener's servers: the asyncio side of ``health``.

Theory of operation. One task per server sleeps until its next check, probes the server and
hands the ``CheckResult`` to the ``HealthBoard``, which does all the counting (rise, fall, an
ejection ended early) and flips the host table's flags; this module only does I/O and logs the
transitions the board returns. A probe is, in order:

1. the authorization gate (``pool.check_gate``): a server the listener's reachability entry does
   not permit is never connected to, and counts as a failed check;
2. a connection (TLS when an ``ssl_context`` is given), then for HTTP checks one
   ``GET path`` with ``Connection: close`` and the status line of the answer, judged by
   ``health.judge_status``. ``check.timeout`` bounds all of it.

Checks are not the hot path, so asyncio streams serve, and a probe reads no more than the
status line. Each server's first check falls somewhere in the first interval and later ones
every interval ± jitter (``health.first_check_at``, ``health.next_check_at``), counted from
the end of the previous check as Envoy does, so a slow server is not probed again while still
being probed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl

from lbproxy.authz import Endpoint, Reach
from lbproxy.config import HealthCheck
from lbproxy.errors import UpstreamNotAuthorized
from lbproxy.health import (
    CheckResult,
    Event,
    HealthBoard,
    Transition,
    describe_error,
    first_check_at,
    judge_status,
    next_check_at,
)
from lbproxy.metrics import GroupStats
from lbproxy.pool import check_gate

log = logging.getLogger("lbproxy.health")

# A status line longer than this is not HTTP; StreamReader.readline fails past its limit.
MAX_STATUS_LINE = 4096
USER_AGENT = "lbproxy-health-check"
_BAD_NEWS = frozenset({Event.DOWN, Event.EJECTED})


def note_transitions(
    name: str, transitions: tuple[Transition, ...], stats: GroupStats | None
) -> None:
    """Log the health transitions of group ``name`` (bad news as warnings) and count them:
    the one place for those found by checks and those found by requests (routes.py)."""
    for transition in transitions:
        level = logging.WARNING if transition.event in _BAD_NEWS else logging.INFO
        log.log(level, "%s: %s", name, transition)
        if stats is not None:
            stats.transition(transition)


def build_request(check: HealthCheck, host: str) -> bytes:
    """The bytes of one HTTP check."""
    return (
        f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


def judge_status_line(check: HealthCheck, line: bytes) -> CheckResult:
    """The verdict on the first line a server answered an HTTP check with."""
    if not line:
        return CheckResult(False, "connection closed without a response")
    if not line.endswith(b"\n"):
        return CheckResult(False, f"connection closed inside the status line {line[:64]!r}")
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    version, status = parts[0], parts[1] if len(parts) > 1 else b""
    if not version.startswith(b"HTTP/1.") or len(status) != 3 or not status.isdigit():
        return CheckResult(False, f"bad status line {line[:64]!r}")
    return judge_status(check, int(status))


def describe_probe_error(exc: BaseException) -> str:
    """``health.describe_error``, plus what TLS verification said (its errno is meaningless)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    return describe_error(exc)


class HealthChecker:
    """Active checks of one load balancer listener's servers.

    ``endpoints[i]`` is host ``i`` of ``board.table``. ``host_header`` is the Host of HTTP
    checks (the authorization's), and the TLS server name; without it, the server's address.
    """

    def __init__(
        self,
        name: str,
        endpoints: tuple[Endpoint, ...],
        reach: Reach,
        board: HealthBoard,
        check: HealthCheck,
        *,
        host_header: str | None,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random | None = None,
        ssl_context: ssl.SSLContext | None = None,
        stats: GroupStats | None = None,
        source: str | None = None,
    ) -> None:
        """``stats``: where results and transitions are counted; ``source``: the local address
        checks connect from (``egress_source``, like the requests)."""
        if len(endpoints) != len(board.table.hosts):
            raise ValueError(
                f"{name}: {len(endpoints)} endpoint(s) for {len(board.table.hosts)} host(s)"
            )
        self.name = name
        self.endpoints = endpoints
        self.reach = reach
        self.board = board
        self.check = check
        self._host_header = host_header
        self._loop = loop
        self._rng = rng if rng is not None else random.Random()
        self._ssl = ssl_context
        self._stats = stats
        self._local = None if source is None else (source, 0)
        self._tasks: list[asyncio.Task[None]] = []
        # Refusals are logged once per server: the gate and the endpoints come from one
        # config, so a refusal lasts until a reload builds a new checker.
        self._refused: set[int] = set()

    def is_running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        """Start one task per server; call on the loop's thread."""
        if self._tasks:
            raise RuntimeError(f"{self!r} is already running")
        now = self._loop.time()
        interval = self.check.interval
        for index, endpoint in enumerate(self.endpoints):
            # Drawn here, in server order, so that a seeded rng gives a known schedule.
            first = first_check_at(now, interval, self._rng)
            task = self._loop.create_task(
                self._run(index, first), name=f"health-check {self.name} {endpoint}"
            )
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Cancel every check; a probe in progress closes its connection as it unwinds."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, index: int, first: float) -> None:
        loop = self._loop
        at = first
        while True:
            await asyncio.sleep(max(0.0, at - loop.time()))
            result = await self.probe(index)
            now = loop.time()
            log.debug("%s: %s check: %s", self.name, self.endpoints[index], result.reason)
            # The board's poll logs ejections that ended on their own; any tick will do.
            self._log(self.board.poll(now))
            self._log(self.board.record_check(index, result, now))
            if self._stats is not None:
                self._stats.check(index, result.ok)
            at = next_check_at(now, self.check.interval, self._rng)

    async def probe(self, index: int) -> CheckResult:
        """Check server ``index`` once, without recording the result."""
        endpoint = self.endpoints[index]
        try:
            check_gate(self.reach, endpoint)
        except UpstreamNotAuthorized as exc:
            if index not in self._refused:
                self._refused.add(index)
                log.error("%s: not checking %s: %s", self.name, endpoint, exc.detail)
            return CheckResult(False, f"refused by the authorization gate: {exc.detail}")
        try:
            async with asyncio.timeout(self.check.timeout):
                return await self._connect_and_ask(endpoint)
        except (OSError, TimeoutError) as exc:
            return CheckResult(False, describe_probe_error(exc))

    async def _connect_and_ask(self, endpoint: Endpoint) -> CheckResult:
        reader, writer = await asyncio.open_connection(
            endpoint.ip,
            endpoint.port,
            ssl=self._ssl,
            # asyncio refuses a server name without TLS; with TLS, None means the address.
            server_hostname=self._host_header if self._ssl is not None else None,
            limit=MAX_STATUS_LINE,
            local_addr=self._local,
        )
        try:
            if self.check.type == "tcp":
                return CheckResult(True, "connected")
            writer.write(build_request(self.check, self._host_header or str(endpoint)))
            try:
                line = await reader.readline()
            except ValueError:  # what readline raises past its limit
                return CheckResult(False, f"status line longer than {MAX_STATUS_LINE} bytes")
            return judge_status_line(self.check, line)
        finally:
            # Not waiting for the close: a server that ignores TLS close_notify would hold
            # the check past its timeout, and the transport finishes closing by itself.
            writer.close()

    def _log(self, transitions: tuple[Transition, ...]) -> None:
        note_transitions(self.name, transitions, self._stats)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        # Expected failures are check results; anything else is a bug that stopped the
        # checks of a server, which must not go unnoticed.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: %s stopped", self.name, task.get_name(), exc_info=task.exception())

    def __repr__(self) -> str:
        now = self._loop.time()
        phases = ", ".join(
            f"{self.board.table.hosts[i].name} {self.board.phase(i, now)}"
            for i in range(len(self.endpoints))
        )
        state = "running" if self._tasks else "stopped"
        check = self.check
        what = f"{check.type} {check.path}" if check.type == "http" else check.type
        return f"<HealthChecker {self.name} {what} every {check.interval:g}s {state} [{phases}]>"
