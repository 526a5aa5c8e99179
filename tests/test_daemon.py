"""`lbproxy run` as a real process: reload under load, a refused reload, graceful drain, worker
replacement, the pid file and systemd notifications."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.harness import Backend, Client, LoopThread, Seen, gateway_toml, header

ROOT = Path(__file__).resolve().parent.parent


class Daemon:
    def __init__(
        self,
        config: Path,
        *args: str,
        env: dict[str, str] | None = None,
        new_group: bool = False,
    ) -> None:
        self.config = config
        self.stderr = config.with_suffix(".stderr")
        with self.stderr.open("wb") as err:  # the child holds its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lbproxy", "run", "-c", str(config), *args],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, **(env or {})},
                process_group=0 if new_group else None,
            )

    def log(self) -> str:
        return self.stderr.read_text()

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_for_log(self, text: str, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log():
            assert self.process.poll() is None or text in self.log(), self.log()
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def get(port: int, path: str = "/api/x") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = Client(sock)
        client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return client.response()[0].status_code


def wait_until_serving(port: int, daemon: Daemon) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            get(port)
            return
        except OSError:
            assert daemon.process.poll() is None, daemon.log()
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this module. A port is only free until
    someone binds it: LB_PORT, drawn at import, was handed out again to a later test's front
    listener, and that daemon could not bind its load balancer."""
    while (port := harness.free_port()) in _handed_out:
        pass
    _handed_out.add(port)
    return port


LB_PORT = free_port()


def config_text(backends: list[Backend], port: int, extra: str = "") -> str:
    text = gateway_toml(backends, LB_PORT, extra_api=extra)
    return text.replace('listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]')


def start(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> tuple[int, Path, Daemon]:
    """A daemon serving ``backends`` on a port of its own, once it answers."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(backends, port))
    daemon = Daemon(config)
    daemons.append(daemon)
    wait_until_serving(port, daemon)
    return port, config, daemon


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


V2 = """
[[api]]
name = "v2"
methods = ["GET"]
path = "/v2/*"
backend = { type = "vpc", authorization = "to-lb" }
"""


@pytest.mark.parametrize("rebind", [False, True], ids=["in-place", "new-runtime"])
def test_reload_under_load_fails_no_request(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon], rebind: bool
) -> None:
    """Reloads in place (same addresses), or each starting a new runtime beside the old one
    (every other configuration listens on one more address) that inherits the listening
    socket while the old one drains: no request fails either way."""
    port, config, daemon = start(backends, tmp_path, daemons)
    one = f'listen = ["127.0.0.1:{port}"]'
    two = f'listen = ["127.0.0.1:{port}", "127.0.0.1:{free_port()}"]'
    statuses: Counter[int] = Counter()
    errors: list[BaseException] = []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    client = Client(sock)
                    for _ in range(20):  # keep-alive connections, renewed now and then
                        client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
                        response = client.response()[0]
                        statuses[response.status_code] += 1
                        if header(response, "connection") == "close":  # a draining runtime
                            break
            except (OSError, AssertionError) as exc:
                errors.append(exc)

    runners = [threading.Thread(target=load) for _ in range(4)]
    for runner in runners:
        runner.start()
    for round_ in range(3):
        time.sleep(0.4)
        extra = V2 if round_ % 2 == 0 else ""
        text = config_text(backends, port, extra=extra)
        config.write_text(text.replace(one, two) if rebind and round_ % 2 == 0 else text)
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while daemon.log().count("reloaded") <= round_:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.02)
    time.sleep(0.4)
    done.set()
    for runner in runners:
        runner.join(20)
    assert errors == [] and set(statuses) == {200}, (errors[:3], statuses)
    assert sum(statuses.values()) > 200
    assert get(port, "/v2/x") == 200  # the last reload's configuration serves


def test_a_reload_that_moves_the_listener_serves_the_new_address(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> None:
    port, moved = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(backends, port))
    daemon = Daemon(config)
    daemons.append(daemon)
    wait_until_serving(port, daemon)
    config.write_text(config_text(backends, moved))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    wait_until_serving(moved, daemon)
    deadline = time.monotonic() + 10
    while True:  # the old runtime drains, then its address is free
        try:
            get(port)
        except OSError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_bad_config_on_sighup_keeps_the_old_one(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> None:
    port, config, daemon = start(backends, tmp_path, daemons)
    config.write_text(
        config_text(backends, port).replace('region = "test-region"', "region = 7", 1)
    )
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reload refused: the running configuration stays")
    assert "gateway.region: expected a string" in daemon.log()
    assert get(port) == 200


def test_sigterm_lets_a_slow_request_finish(lt: LoopThread, tmp_path: Path) -> None:
    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        return True

    backend = Backend("a", handler=slow)
    lt.run(backend.start())
    try:
        port = free_port()
        config = tmp_path / "gateway.toml"
        config.write_text(
            config_text([backend], port).replace(
                "[gateway]\n", "[gateway]\nshutdown_timeout = 10\n"
            )
        )
        daemon = Daemon(config)
        deadline = time.monotonic() + 15
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, daemon.log()
                time.sleep(0.05)
        client = Client(sock)
        client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # in flight at the backend
        daemon.signal(signal.SIGTERM)
        response, body = client.response()
        assert (response.status_code, body) == (200, b"slow")
        sock.close()
        assert daemon.process.wait(15) == 0
        assert "finishing in-flight requests" in daemon.log()
    finally:
        lt.run(backend.stop())


def test_a_killed_worker_is_replaced(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        config_text(backends, port).replace("[gateway]\n", "[gateway]\nworkers = 2\n")
    )
    pid_file = tmp_path / "lbproxy.pid"
    daemon = Daemon(config, "--pid-file", str(pid_file))
    daemons.append(daemon)
    wait_until_serving(port, daemon)
    assert int(pid_file.read_text()) == daemon.process.pid
    daemon.wait_for_log("supervisor")
    workers = _children(daemon.process.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    daemon.wait_for_log(f"worker {workers[0]} exited (killed by SIGKILL); starting another")
    deadline = time.monotonic() + 10
    while len(_children(daemon.process.pid)) != 2:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert {get(port) for _ in range(20)} == {200}
    assert daemon.stop() == 0
    assert not pid_file.exists()


def _children(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``, from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry))
    return kids


@contextlib.contextmanager
def notified_daemon(config: Path) -> Iterator[tuple[Daemon, socket.socket]]:
    """A daemon told to notify a datagram socket of ours (as systemd's NOTIFY_SOCKET), and
    that socket; the daemon must exit 0 when stopped."""
    notify_path = str(config.parent / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(notify_path)
        sink.settimeout(15)
        daemon = Daemon(config, env={"NOTIFY_SOCKET": notify_path})
        try:
            yield daemon, sink
        finally:
            assert daemon.stop() == 0


def test_systemd_notifications(backends: list[Backend], tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(backends, port))
    with notified_daemon(config) as (daemon, sink):
        assert sink.recv(4096) == b"READY=1"
        assert get(port) == 200
        daemon.signal(signal.SIGHUP)
        assert sink.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert sink.recv(4096) == b"READY=1"
        daemon.signal(signal.SIGTERM)
        assert sink.recv(4096) == b"STOPPING=1"


def test_a_supervisor_is_ready_once_every_worker_serves(
    backends: list[Backend], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        config_text(backends, port).replace("[gateway]\n", "[gateway]\nworkers = 2\n")
    )
    with notified_daemon(config) as (daemon, sink):
        assert sink.recv(4096) == b"READY=1"
        # Said after both workers serve, so every connection from now on is served.
        assert daemon.log().count(" serving ") == 2, daemon.log()
        assert {get(port) for _ in range(10)} == {200}


def test_workers_reload_reopen_and_ctrl_c(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With a supervisor: SIGUSR1 and SIGHUP reach every worker and kill none; Ctrl-C (SIGINT
    to the whole process group) drains once rather than counting as a second interrupt."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    two = "[gateway]\nworkers = 2\n"
    config.write_text(config_text(backends, port).replace("[gateway]\n", two))
    daemon = Daemon(config, new_group=True)
    daemons.append(daemon)
    wait_until_serving(port, daemon)
    deadline = time.monotonic() + 15
    while daemon.log().count(" serving ") < 2:  # both workers (a SIGHUP would wait anyway)
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    workers = sorted(_children(daemon.process.pid))
    daemon.signal(signal.SIGUSR1)
    config.write_text(config_text(backends, port, extra=V2).replace("[gateway]\n", two))
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while daemon.log().count("reloaded") < 2:  # one line per worker
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert sorted(_children(daemon.process.pid)) == workers  # SIGUSR1 killed none
    assert {get(port, "/v2/x") for _ in range(20)} == {200}  # whichever worker answers
    os.killpg(daemon.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert daemon.process.wait(15) == 0
    assert "second interrupt" not in daemon.log()
    assert daemon.log().count("finishing in-flight requests") == 2


def test_a_reload_in_place_changes_the_servers_of_a_load_balancer_listener(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The load balancer's own listener (not only the APIs) takes the new server list."""
    port, config, daemon = start(backends, tmp_path, daemons)
    first = backends[0]
    config.write_text(config_text([first], port))  # same addresses: reloaded in place
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reloaded")
    served = len(first.seen)
    assert {get(LB_PORT, "/x") for _ in range(12)} == {200}
    assert len(first.seen) - served == 12  # all of them: the others left the listener


def admin_post(port: int, path: str, token: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = Client(sock)
        client.send(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        return client.response("POST")[0].status_code


def test_a_drain_through_one_worker_reaches_every_worker_and_is_saved(
    backends: list[Backend], tmp_path: Path, daemons: list[Daemon]
) -> None:
    port, admin = free_port(), free_port()
    extra = (
        f'[gateway]\nworkers = 2\nadmin_listen = "127.0.0.1:{admin}"\n'
        'admin_token = "tok"\nstate_file = "state.json"\n'
    )
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(backends, port).replace("[gateway]\n", extra))
    daemon = Daemon(config)
    daemons.append(daemon)
    wait_until_serving(port, daemon)
    daemon.wait_for_log("supervisor")
    drained = backends[1]
    server = f"i-{drained.name}:{drained.port}"
    assert admin_post(admin, f"/admin/servers/lb-t:{LB_PORT}/{server}/drain", "tok") == 200
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved == {"servers": {f"lb-t:{LB_PORT}": {server: 0}}}
    deadline = time.monotonic() + 10
    while daemon.log().count("reloaded") < 2:  # every worker read it
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    before = len(drained.seen)
    assert {get(port) for _ in range(30)} == {200}  # a connection each: both workers serve
    assert len(drained.seen) == before
    assert admin_post(admin, f"/admin/servers/lb-t:{LB_PORT}/{server}/enable", "tok") == 200
    assert json.loads((tmp_path / "state.json").read_text()) == {"servers": {}}
    while daemon.log().count("reloaded") < 4:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert {get(port) for _ in range(30)} == {200}
    assert len(drained.seen) > before
