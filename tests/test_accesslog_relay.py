"""The access log as the relay writes it: one JSON object per request over real sockets, the
gateway's own answers and retries included, and reopened on SIGUSR1 by the daemon."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from lbproxy.server import Runtime
from tests.harness import Backend, Client, LoopThread, config_from, free_port, gateway_toml
from tests.test_daemon import Daemon, config_text, wait_until_serving


def records(path: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` records, once written (the writer thread batches them)."""
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)


def test_every_request_gets_a_record(
    lt: LoopThread, backends: list[Backend], tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    lb_port = free_port()
    text = gateway_toml(backends, lb_port, gateway_extra=f'access_log = "{log}"')
    runtime = Runtime(config_from(text))
    lt.run(runtime.start())
    dead = backends[0]
    lt.run(dead.stop())
    try:
        with socket.create_connection(runtime.addresses[0], timeout=10) as sock:
            client = Client(sock)
            client.send(
                b"POST /api/items?id=7 HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-1\r\n"
                b"Content-Length: 5\r\n\r\nhello"
            )
            assert client.response("POST")[0].status_code == 200
            for _ in range(3):
                client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
                assert client.response()[0].status_code == 200
            client.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.response()[0].status_code == 404
        written = records(log, 5)
    finally:
        lt.run(runtime.stop(timeout=2.0))

    post = written[0]
    assert set(post) == {
        "time", "client", "method", "target", "status", "bytes_in", "bytes_out", "duration",
        "api", "upstream", "upstream_status", "upstream_connect_time",
        "upstream_response_time", "retries", "request_id", "error",
    }  # fmt: skip
    assert (post["client"], post["method"], post["target"]) == (
        "127.0.0.1",
        "POST",
        "/api/items?id=7",
    )
    assert (post["status"], post["upstream_status"], post["api"]) == (200, 200, "api")
    assert post["request_id"] == "req-1" and post["error"] is None
    assert post["bytes_in"] > 5 and post["bytes_out"] > 0
    assert 0 <= post["upstream_response_time"] <= post["duration"]
    names = {f"i-{b.name}:{b.port}" for b in backends}
    assert {r["upstream"] for r in written[:4]} <= names - {f"i-{dead.name}:{dead.port}"}
    # Round robin met the dead server: refused, tried again elsewhere, answered.
    retried = [r for r in written[:4] if r["retries"]]
    assert retried and all(
        (r["retries"], r["status"], r["error"]) == (1, 200, None) for r in retried
    )
    assert all(r["request_id"] for r in written)  # generated where the client sent none
    missing = written[4]
    assert (missing["status"], missing["api"], missing["upstream"]) == (404, None, None)
    assert (missing["error"], missing["upstream_status"]) == ("no_route", None)


def test_sigusr1_reopens_the_access_log(backends: list[Backend], tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        config_text(backends, port).replace("[gateway]\n", f'[gateway]\naccess_log = "{log}"\n')
    )
    daemon = Daemon(config)
    try:
        wait_until_serving(port, daemon)
        records(log, 1)
        log.rename(tmp_path / "access.log.1")  # what logrotate does
        daemon.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not log.exists():  # the reopen is queued behind the records before it
            assert time.monotonic() < deadline, daemon.log()
            wait_until_serving(port, daemon)
            time.sleep(0.05)
        assert len(records(tmp_path / "access.log.1", 1)) >= 1
        assert records(log, 1)[0]["status"] == 200
    finally:
        assert daemon.stop() == 0
