"""Metrics: the hot path's counts (metrics.py), their export (exporter.py) and /metrics over real
sockets, promtool's judgement, and several workers' figures summed (multiprocess mode)."""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Histogram as PromHistogram
from prometheus_client.parser import text_string_to_metric_families

from lbproxy import __version__
from lbproxy.exporter import _add, check_histogram_layout
from lbproxy.metrics import DURATION_BUCKETS, Histogram, Stats
from lbproxy.server import Runtime
from tests.harness import Backend, Client, LoopThread, config_from, free_port, gateway_toml
from tests.test_daemon import Daemon, _children, wait_until_serving

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def http_get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    with socket.create_connection(address, timeout=10) as sock:
        client = Client(sock)
        client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response, body = client.response()
        return response.status_code, body


# -- the counts themselves -------------------------------------------------------------------


def test_histogram_counts_each_bucket_and_takes_what_was_observed() -> None:
    counts = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.5, 9.0):
        counts.observe(v)
    assert counts.counts == [2, 1, 2]  # le 1 (1.0 included), le 2, above
    assert counts.take() == ([2, 1, 2], 14.5)
    assert counts.take() is None


def test_a_histogram_fed_in_bulk_reads_like_one_fed_by_observe() -> None:
    check_histogram_layout()  # what the exporter relies on, checked at its start
    bulk = PromHistogram("t_seconds", "", buckets=DURATION_BUCKETS, registry=None)
    one_by_one = PromHistogram("t_seconds", "", buckets=DURATION_BUCKETS, registry=None)
    counts = Histogram(DURATION_BUCKETS)
    for v in (0.0001, 0.0005, 0.003, 0.2, 7.0, 100.0):
        counts.observe(v)
        one_by_one.observe(v)
    _add(bulk, counts)
    assert list(bulk.collect()) == list(one_by_one.collect())


def test_a_group_whose_servers_changed_gets_new_stats_and_the_old_ones_still_count() -> None:
    stats = Stats()
    first = stats.group("lb:80", ["a:1", "b:1"])
    assert stats.group("lb:80", ["a:1", "b:1"]) is first
    second = stats.group("lb:80", ["a:1"])
    # A draining runtime (or a refused reload's) still counts into the first: both are kept.
    assert second is not first and list(stats.groups.values()) == [first, second]
    assert stats.api("x") is stats.api("x")


# -- /metrics over real sockets --------------------------------------------------------------


@pytest.fixture
def gateway(lt: LoopThread, backends: list[Backend]) -> Iterator[Runtime]:
    lb_port = free_port()
    text = gateway_toml(
        backends,
        lb_port,
        gateway_extra='admin_listen = "127.0.0.1:0"\nmax_body_size = 16',
    )
    runtime = Runtime(config_from(text), tomllib.loads(text))
    lt.run(runtime.start())
    yield runtime
    lt.run(runtime.stop(timeout=2.0))


def scrape(runtime: Runtime) -> str:
    assert runtime.admin is not None and runtime.admin.address is not None
    status, body = http_get(runtime.admin.address, "/metrics")
    assert status == 200
    return body.decode()


def test_metrics_count_requests_upstreams_rejections_and_connections(
    gateway: Runtime, backends: list[Backend]
) -> None:
    lb = next(name for name in gateway.routes.groups if name.startswith("lb-t:"))
    with socket.create_connection(gateway.addresses[0], timeout=10) as sock:
        client = Client(sock)
        for _ in range(9):
            client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.response()[0].status_code == 200
        client.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.response()[0].status_code == 404
        client.send(b"PATCH /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.response()[0].status_code == 405
        client.send(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n")
        assert client.response("POST")[0].status_code == 413
    with socket.create_connection(gateway.addresses[0], timeout=10) as sock:
        sock.sendall(b"FOO /api/x HTTP/1.1\r\nHost: x\r\n\r\n")  # the parser refuses it
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(gateway.addresses[0], timeout=10) as idle:
        kept = Client(idle)
        kept.send(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.response()  # the connection stays open while scraping
        samples = parse(scrape(gateway))

    assert value(samples, "lbproxy_requests_total", api="api", method="GET", code="200") == 9
    assert value(samples, "lbproxy_requests_total", api="", method="GET", code="404") == 2
    assert value(samples, "lbproxy_requests_total", api="", method="PATCH", code="405") == 1
    assert value(samples, "lbproxy_requests_total", api="", method="OTHER", code="400") == 1
    assert value(samples, "lbproxy_requests_total", api="api", method="POST", code="413") == 1
    assert value(samples, "lbproxy_request_duration_seconds_count", api="api") == 10
    assert value(samples, "lbproxy_request_duration_seconds_bucket", api="api", le="+Inf") == 10
    assert value(samples, "lbproxy_rejected_requests_total", reason="no_route") == 3
    assert value(samples, "lbproxy_rejected_requests_total", reason="limits") == 1
    assert value(samples, "lbproxy_rejected_requests_total", reason="bad_request") == 1

    # Round robin over three servers: three each, on one pooled connection each.
    for b in backends:
        server = {"upstream": lb, "server": f"i-{b.name}:{b.port}"}
        assert value(samples, "lbproxy_upstream_requests_total", code_class="2xx", **server) == 3
        assert value(samples, "lbproxy_upstream_response_duration_seconds_count", **server) == 3
        assert value(samples, "lbproxy_upstream_connect_duration_seconds_count", **server) == 1
        assert value(samples, "lbproxy_upstream_connections_created_total", **server) == 1
        assert value(samples, "lbproxy_upstream_connections_reused_total", **server) == 2
        assert value(samples, "lbproxy_server_up", **server) == 1
        assert value(samples, "lbproxy_server_weight", **server) == 1
        assert value(samples, "lbproxy_upstream_connections", address=f"127.0.0.1:{b.port}") == 1
    assert value(samples, "lbproxy_client_connections_total") == 3
    assert value(samples, "lbproxy_client_connections_open") == 1
    build = {("version", __version__), ("parser", "httptools")}
    build.add(("python_version", platform.python_version()))
    assert samples[("lbproxy_build_info", frozenset(build))] == 1


def test_failed_tries_are_counted_by_kind_and_retried_by_reason(
    gateway: Runtime, backends: list[Backend], lt: LoopThread
) -> None:
    lb = next(name for name in gateway.routes.groups if name.startswith("lb-t:"))
    dead = backends[1]
    lt.run(dead.stop())
    statuses = {http_get(gateway.addresses[0], "/api/x")[0] for _ in range(6)}
    assert statuses == {200}
    samples = parse(scrape(gateway))
    server = {"upstream": lb, "server": f"i-{dead.name}:{dead.port}"}
    refused = value(samples, "lbproxy_upstream_errors_total", kind="connect", **server)
    assert refused >= 1
    assert value(samples, "lbproxy_upstream_errors_total") == refused
    retries = value(samples, "lbproxy_upstream_retries_total", upstream=lb)
    assert retries == refused
    assert retries == value(
        samples, "lbproxy_upstream_retries_total", upstream=lb, reason="connection refused"
    )
    assert value(samples, "lbproxy_upstream_requests_total", **server) == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) absent")
def test_promtool_finds_nothing_to_complain_about(gateway: Runtime) -> None:
    http_get(gateway.addresses[0], "/api/x")
    http_get(gateway.addresses[0], "/nowhere")
    text = scrape(gateway)
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        check=False,
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


# -- several workers ---------------------------------------------------------------------------


def test_workers_figures_are_summed_and_reloads_counted(
    backends: list[Backend], tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    text = gateway_toml(
        backends, free_port(), gateway_extra=f'workers = 2\nadmin_listen = "127.0.0.1:{admin}"'
    ).replace('listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    directory = tmp_path / "metrics"
    daemon = Daemon(config, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        wait_until_serving(port, daemon)  # one request
        for _ in range(39):  # a connection each: the kernel spreads them over both workers
            assert http_get(("127.0.0.1", port), "/api/x")[0] == 200
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while daemon.log().count("reloaded") < 2:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        config.write_text(text.replace('region = "test-region"', "region = 7", 1))
        daemon.signal(signal.SIGHUP)
        while daemon.log().count("the running configuration stays") < 2:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        # Each worker writes its counts once a second (later on a loaded machine).
        while value(scrape_port(admin), "lbproxy_requests_total", api="api", code="200") < 40:
            assert time.monotonic() < deadline + 10, daemon.log()
            time.sleep(0.2)
        for _ in range(10):  # each scrape answered by either worker: the same sums
            samples = parse(http_get(("127.0.0.1", admin), "/metrics")[1].decode())
            assert value(samples, "lbproxy_requests_total", api="api", code="200") == 40
            assert value(samples, "lbproxy_config_reloads_total", result="success") == 2
            assert value(samples, "lbproxy_config_reloads_total", result="failure") == 2
        # Both workers counted (a file each), and the sums above are over both.
        assert len(list(directory.glob("counter_*.db"))) == 2
    finally:
        assert daemon.stop() == 0


def scrape_port(admin: int) -> Samples:
    return parse(http_get(("127.0.0.1", admin), "/metrics")[1].decode())


def server_up(admin: int) -> dict[str, float]:
    samples = scrape_port(admin)
    return {
        dict(labels)["server"]: v
        for (name, labels), v in samples.items()
        if name == "lbproxy_server_up"
    }


def test_workers_forget_removed_servers_and_dead_workers(
    backends: list[Backend], tmp_path: Path
) -> None:
    """Multiprocess mode cannot delete a series: a server removed by a reload reads NaN in
    every worker (no alert compares true on it), and a dead worker's live gauges go."""
    port, admin, lb_port = free_port(), free_port(), free_port()

    def text(servers: list[Backend]) -> str:
        extra = f'workers = 2\nadmin_listen = "127.0.0.1:{admin}"'
        return gateway_toml(servers, lb_port, gateway_extra=extra).replace(
            'listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:{port}"]'
        )

    config = tmp_path / "gateway.toml"
    config.write_text(text(backends))
    directory = tmp_path / "metrics"
    daemon = Daemon(config, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        wait_until_serving(port, daemon)
        deadline = time.monotonic() + 15
        while daemon.log().count(" serving ") < 2 or len(server_up(admin)) < 3:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        assert set(server_up(admin).values()) == {1.0}
        removed = next(name for name in server_up(admin) if name.startswith("i-c:"))
        config.write_text(text(backends[:2]))  # the same addresses: applied in place
        daemon.signal(signal.SIGHUP)
        while daemon.log().count("reloaded") < 2:
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        while not math.isnan(server_up(admin).get(removed, 0.0)):
            assert time.monotonic() < deadline, server_up(admin)
            time.sleep(0.1)
        for _ in range(5):  # whichever worker answers
            ups = server_up(admin)
            assert math.isnan(ups[removed])
            assert sorted(v for k, v in ups.items() if k != removed) == [1.0, 1.0]
        # A worker killed: the supervisor forgets its live gauges (their files go).
        victim = _children(daemon.process.pid)[0]
        assert list(directory.glob(f"gauge_live*_{victim}.db"))
        os.kill(victim, signal.SIGKILL)
        while victim in _children(daemon.process.pid) or list(
            directory.glob(f"gauge_live*_{victim}.db")
        ):
            assert time.monotonic() < deadline + 10, daemon.log()
            time.sleep(0.1)
        assert list(directory.glob(f"counter_{victim}.db")), "its counts stay counted"
    finally:
        assert daemon.stop() == 0
