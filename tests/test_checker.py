"""The active health checker over real sockets on loopback addresses: verdicts and the reasons
logged with each transition, the authorization gate before any connect, jittered schedules,
TLS, and a stop that leaves no task or connection behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import trustme

from lbproxy.authz import Endpoint, Reach
from lbproxy.checker import HealthChecker, build_request, judge_status_line
from lbproxy.config import HealthCheck, Passive
from lbproxy.health import CheckResult, HealthBoard
from lbproxy.hosts import Host, HostTable
from tests.harness import Backend, Handler, LoopThread, Seen, free_port

LISTENER = "lb-t:80"
FAST = HealthCheck(path="/healthz", interval=0.05, timeout=0.3, rise=2, fall=3)
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def status_handler(status: list[int]) -> Handler:
    """A Backend handler answering ``status[0]``, which the test may change meanwhile."""

    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        del seen
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status[0])
        return False

    return handler


async def never_answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    del seen, writer
    await asyncio.sleep(3600)
    return False


@dataclass
class Target:
    """A raw server: answers each request head with ``answer`` (None: never answers, reads until
    the end), and records when connections arrived and how many it saw end."""

    host: str
    answer: bytes | None = OK_RESPONSE
    tls: ssl.SSLContext | None = None
    port: int = 0
    accepted: list[float] = field(default_factory=list)
    ended: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(asyncio.get_running_loop().time())
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if self.answer is None:
                while await reader.read(4096):
                    pass
            else:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(self.answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.ended += 1
            self.tasks.discard(task)
            writer.close()


def endpoint(ip: str, port: int) -> Endpoint:
    return Endpoint(ip, port, 1, f"i-{ip.rsplit('.', 1)[1]}")


def reach_of(*endpoints: Endpoint) -> Reach:
    allowed = frozenset((e.ip, e.port) for e in endpoints)
    return Reach(f"listener {LISTENER}", f"load balancer {LISTENER}", None, endpoints, allowed)


class Rig:
    """Servers and checkers on the test's loop, all stopped at teardown."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.servers: list[Backend | Target] = []
        self.checkers: list[HealthChecker] = []

    def backend(self, host: str, handler: Handler) -> tuple[Backend, Endpoint]:
        backend = Backend(host, handler=handler, host=host)
        self.lt.run(backend.start())
        self.servers.append(backend)
        return backend, endpoint(host, backend.port)

    def target(
        self, host: str, answer: bytes | None = OK_RESPONSE, tls: ssl.SSLContext | None = None
    ) -> tuple[Target, Endpoint]:
        target = Target(host, answer, tls)
        self.lt.run(target.start())
        self.servers.append(target)
        return target, endpoint(host, target.port)

    def checker(
        self,
        endpoints: tuple[Endpoint, ...],
        check: HealthCheck = FAST,
        *,
        reach: Reach | None = None,
        host_header: str | None = "svc.internal",
        seed: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> HealthChecker:
        """A checker over ``endpoints``, all permitted unless ``reach`` says otherwise."""
        hosts = [Host(f"{e.name}:{e.port}", 1) for e in endpoints]
        board = HealthBoard(HostTable(hosts), Passive(), check)
        checker = HealthChecker(
            LISTENER,
            endpoints,
            reach or reach_of(*endpoints),
            board,
            check,
            host_header=host_header,
            loop=self.lt.loop,
            rng=random.Random(seed),
            ssl_context=ssl_context,
        )
        self.checkers.append(checker)
        return checker

    def phase(self, checker: HealthChecker, index: int) -> str:
        return self.lt.call(lambda: checker.board.phase(index, self.lt.loop.time()))

    def is_available(self, checker: HealthChecker, index: int) -> bool:
        host = checker.board.table.hosts[index]
        return self.lt.call(lambda: host.is_available(self.lt.loop.time()))

    def stop(self) -> None:
        for checker in self.checkers:
            self.lt.run(checker.stop())
        for server in self.servers:
            self.lt.run(server.stop())


@pytest.fixture
def rig(lt: LoopThread) -> Iterator[Rig]:
    made = Rig(lt)
    yield made
    made.stop()


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "lbproxy.health" and r.levelno == level
    ]


# --- the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "ok", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\n", True, "status 200"),
        (b"HTTP/1.0 302 Found\n", True, "status 302"),
        (b"HTTP/1.1 204\r\n", True, "status 204"),  # the reason phrase may be missing
        (b"HTTP/1.1 500 Internal Server Error\r\n", False, "status 500"),
        (b"HTTP/1.1 404 Not Found\r\n", False, "status 404"),
        (b"", False, "connection closed without a response"),
        (b"HTTP/1.1 20", False, "connection closed inside the status line b'HTTP/1.1 20'"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", False, "bad status line b'SSH-2.0-OpenSSH_9.6\\r\\n'"),
        (b"HTTP/1.1 2OO OK\r\n", False, "bad status line b'HTTP/1.1 2OO OK\\r\\n'"),
        (b"HTTP/2 200\r\n", False, "bad status line b'HTTP/2 200\\r\\n'"),
        (b"HTTP/1.1 2000 OK\r\n", False, "bad status line b'HTTP/1.1 2000 OK\\r\\n'"),
    ],
)
def test_judge_status_line(line: bytes, ok: bool, reason: str) -> None:
    assert judge_status_line(FAST, line) == CheckResult(ok, reason)


def test_judge_status_line_uses_the_expected_statuses() -> None:
    check = HealthCheck(expect=((200, 200),))
    assert not judge_status_line(check, b"HTTP/1.1 301 Moved\r\n").ok
    assert judge_status_line(check, b"HTTP/1.1 200 OK\r\n").ok


def test_build_request() -> None:
    assert build_request(FAST, "svc.internal") == (
        b"GET /healthz HTTP/1.1\r\nHost: svc.internal\r\nUser-Agent: lbproxy-health-check\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_endpoints_must_match_the_host_table(lt: LoopThread) -> None:
    ep = endpoint("127.0.0.11", 80)
    board = HealthBoard(HostTable([Host("a", 1), Host("b", 1)]), Passive(), FAST)
    with pytest.raises(ValueError, match="1 endpoint"):
        HealthChecker(LISTENER, (ep,), reach_of(ep), board, FAST, host_header=None, loop=lt.loop)


# --- verdicts over sockets ----------------------------------------------------------------------


@pytest.mark.parametrize("host_header", ["svc.internal", None])
def test_a_server_answering_200_stays_up(
    rig: Rig, caplog: pytest.LogCaptureFixture, host_header: str | None
) -> None:
    caplog.set_level(logging.DEBUG, logger="lbproxy.health")
    backend, ep = rig.backend("127.0.0.11", status_handler([200]))
    checker = rig.checker((ep,), host_header=host_header)
    rig.lt.call(checker.start)
    wait_until(lambda: len(backend.seen) >= 4)
    assert rig.phase(checker, 0) == "up"
    assert messages(caplog, logging.WARNING) == []
    seen = backend.seen[0]
    assert (seen.method, seen.target, seen.body) == ("GET", "/healthz", b"")
    assert seen.header("host") == (host_header or f"127.0.0.11:{ep.port}")
    assert seen.header("user-agent") == "lbproxy-health-check"
    assert seen.header("connection") == "close"


SERVER_KINDS: dict[str, Callable[[Rig], Endpoint]] = {
    "status 500": lambda rig: rig.backend("127.0.0.12", status_handler([500]))[1],
    "refused": lambda rig: endpoint("127.0.0.12", free_port("127.0.0.12")),
    "silent": lambda rig: rig.backend("127.0.0.12", never_answer)[1],
    "garbage": lambda rig: rig.target("127.0.0.12", b"SSH-2.0-OpenSSH_9.6\r\n")[1],
    "endless line": lambda rig: rig.target("127.0.0.12", b"HTTP/1.1 200 " + b"x" * 5000)[1],
}


@pytest.mark.parametrize(
    ("kind", "check_type", "reason"),
    [
        ("status 500", "http", "status 500"),
        ("refused", "http", "connection refused"),
        ("silent", "http", "timeout"),
        ("garbage", "http", "bad status line b'SSH-2.0-OpenSSH_9.6\\r\\n'"),
        ("endless line", "http", "status line longer than 4096 bytes"),
        ("refused", "tcp", "connection refused"),
    ],
)
def test_a_failing_server_goes_down_after_fall_checks_with_its_reason(
    rig: Rig, caplog: pytest.LogCaptureFixture, kind: str, check_type: str, reason: str
) -> None:
    caplog.set_level(logging.INFO, logger="lbproxy.health")
    _, good = rig.backend("127.0.0.11", status_handler([200]))
    bad = SERVER_KINDS[kind](rig)
    checker = rig.checker((good, bad), HealthCheck(type=check_type, interval=0.05, timeout=0.2))
    rig.lt.call(checker.start)
    wait_until(lambda: rig.phase(checker, 1) == "down")
    assert messages(caplog, logging.WARNING) == [
        f"{LISTENER}: i-12:{bad.port} down: 3 check(s) failed in a row; last: {reason}"
    ]
    assert not rig.is_available(checker, 1)
    assert rig.phase(checker, 0) == "up"


def test_recovery_after_rise_passing_checks(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbproxy.health")
    status = [500]
    backend, ep = rig.backend("127.0.0.11", status_handler(status))
    checker = rig.checker((ep,), HealthCheck(interval=0.05, timeout=0.3, rise=2, fall=2))
    rig.lt.call(checker.start)
    wait_until(lambda: rig.phase(checker, 0) == "down")
    assert not rig.is_available(checker, 0)
    status[0] = 200
    wait_until(lambda: rig.phase(checker, 0) == "up")
    assert rig.is_available(checker, 0)
    assert messages(caplog, logging.INFO) == [
        f"{LISTENER}: i-11:{ep.port} up: 2 check(s) passed in a row; last: status 200"
    ]
    assert len(backend.seen) >= 4  # two failed, two passed


def test_a_tcp_check_passes_on_connect_and_sends_nothing(rig: Rig) -> None:
    target, ep = rig.target("127.0.0.11", answer=None)
    checker = rig.checker((ep,), HealthCheck(type="tcp", interval=0.05, timeout=0.2, fall=1))
    rig.lt.call(checker.start)
    # The target reads until the end of each connection: the check closed it without a word.
    wait_until(lambda: target.ended >= 3)
    assert rig.phase(checker, 0) == "up"


def test_the_gate_refuses_before_any_connect(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbproxy.health")
    permitted, good = rig.backend("127.0.0.11", status_handler([200]))
    outside, bad = rig.backend("127.0.0.12", status_handler([200]))
    checker = rig.checker((good, bad), reach=reach_of(good))
    rig.lt.call(checker.start)
    wait_until(lambda: rig.phase(checker, 1) == "down" and len(permitted.seen) >= 3)
    assert outside.connections == 0
    assert rig.phase(checker, 0) == "up"
    gate = f"{bad} is not reachable through listener {LISTENER}"
    assert messages(caplog, logging.WARNING) == [
        f"{LISTENER}: i-12:{bad.port} down: 3 check(s) failed in a row; "
        f"last: refused by the authorization gate: {gate}"
    ]
    assert messages(caplog, logging.ERROR) == [f"{LISTENER}: not checking {bad}: {gate}"]


# --- schedule, TLS, state and stop --------------------------------------------------------------


def test_checkers_with_different_seeds_do_not_check_in_lockstep(rig: Rig) -> None:
    interval = 0.2
    check = HealthCheck(type="tcp", interval=interval, timeout=0.1)
    # The first check falls at uniform(0, interval): about 0.027 s with seed 1, 0.191 with 2.
    first = [random.Random(seed).uniform(0, interval) for seed in (1, 2)]
    assert first[1] - first[0] > interval / 2
    (one, ep_one), (two, ep_two) = rig.target("127.0.0.11"), rig.target("127.0.0.12")
    checkers = [rig.checker((ep_one,), check, seed=1), rig.checker((ep_two,), check, seed=2)]

    def start_both() -> float:
        for checker in checkers:
            checker.start()
        return rig.lt.loop.time()

    started = rig.lt.call(start_both)
    wait_until(lambda: len(one.accepted) >= 2 and len(two.accepted) >= 2)
    offsets = [one.accepted[0] - started, two.accepted[0] - started]
    assert offsets[1] - offsets[0] > interval / 4


def test_tls_checks_verify_the_server(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbproxy.health")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("svc.internal").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    _, good = rig.target("127.0.0.11", tls=server_context)
    _, bad = rig.target("127.0.0.12", tls=server_context)
    trusted = rig.checker((good,), ssl_context=trusting)
    untrusted = rig.checker((bad,), ssl_context=ssl.create_default_context())
    rig.lt.call(trusted.start)
    rig.lt.call(untrusted.start)
    wait_until(lambda: rig.phase(untrusted, 0) == "down")
    assert rig.lt.run(trusted.probe(0)) == CheckResult(True, "status 200")
    [line] = messages(caplog, logging.WARNING)
    assert line.startswith(f"{LISTENER}: i-12:{bad.port} down: 3 check(s) failed in a row; last: ")
    assert "TLS certificate not trusted: " in line
    assert rig.phase(trusted, 0) == "up"


def test_repr_shows_each_server_phase(rig: Rig) -> None:
    _, good = rig.backend("127.0.0.11", status_handler([200]))
    bad = endpoint("127.0.0.12", free_port("127.0.0.12"))
    checker = rig.checker((good, bad), HealthCheck(path="/ok", interval=0.05, timeout=0.2, fall=1))
    hosts = f"i-11:{good.port} up, i-12:{bad.port}"
    assert repr(checker) == f"<HealthChecker {LISTENER} http /ok every 0.05s stopped [{hosts} up]>"
    rig.lt.call(checker.start)
    wait_until(lambda: rig.phase(checker, 1) == "down")
    assert (
        repr(checker) == f"<HealthChecker {LISTENER} http /ok every 0.05s running [{hosts} down]>"
    )


def test_stop_leaves_no_task_or_connection_behind(rig: Rig) -> None:
    target, ep = rig.target("127.0.0.11", answer=None)
    # A long timeout: stop() finds a check waiting for its answer, with its connection open.
    checker = rig.checker((ep,), HealthCheck(interval=0.05, timeout=30.0))
    rig.lt.call(checker.start)
    assert checker.is_running()
    with pytest.raises(RuntimeError, match="already running"):
        rig.lt.call(checker.start)
    wait_until(lambda: len(target.accepted) == 1)
    assert target.ended == 0
    rig.lt.run(checker.stop())
    wait_until(lambda: target.ended == 1)  # the server saw the connection end
    names = rig.lt.call(lambda: [t.get_name() for t in asyncio.all_tasks(rig.lt.loop)])
    assert not [name for name in names if name.startswith("health-check")]
    assert not checker.is_running()
    assert "stopped" in repr(checker)
    rig.lt.run(checker.stop())  # idempotent
    gc.collect()  # an unclosed transport would warn here, and warnings are errors
    assert len(target.accepted) == 1
