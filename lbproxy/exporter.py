"""Prometheus metrics: ``prometheus_client`` metrics fed from ``metrics.Stats``, served at
``/metrics`` on the admin listener.

Theory of operation. The hot path only counts (metrics.py). ``Exporter.flush`` moves those
counts into the metrics below and sets the gauges from the runtime's state (servers, pools,
connections); the admin listener's ``/metrics`` flushes, then renders with
``prometheus_client.generate_latest``. A timer flushes every second too, which matters with
several workers: they run ``prometheus_client``'s multiprocess mode (``use_multiprocess``,
set up by the supervisor before it forks), each worker's values live in files under
``PROMETHEUS_MULTIPROC_DIR``, and whichever worker answers a scrape reads every worker's files
through ``MultiProcessCollector``. Gauges of a live worker are summed, or kept at the lowest
(a server is up, or weighted, only as far as every worker says), and forgotten once it exits.

Labels are bounded by the configuration: API names, load balancer listeners (``upstream``),
server names (``server``, ``instance:port``), upstream addresses, and fixed sets of methods,
status codes, kinds and reasons. A raw path or client address is never a label.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

from lbproxy import __version__
from lbproxy.accesslog import AccessLog
from lbproxy.admin import AdminError, AdminRequest, Handler, Reply
from lbproxy.metrics import CONNECT_BUCKETS, DURATION_BUCKETS, GroupStats, Stats
from lbproxy.metrics import Histogram as Counts

if TYPE_CHECKING:
    from lbproxy.server import Runtime

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 1.0
# Methods counted under their own name; any other is "OTHER" (labels stay bounded).
_METHODS = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
}
_UPSTREAM = ("upstream", "server")

# Counters and histograms get no ``_created`` series: half the series for nothing to read.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def use_multiprocess(directory: str) -> None:
    """Keep metric values in ``directory`` (shared by the workers) from now on. The directory
    is emptied: files of an earlier run would be counted again. ``prometheus_client`` picks its
    value class when imported, so it is picked again here, after the variable is set; metrics
    made afterwards (each worker's) use the files."""
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def worker_exited(pid: int) -> None:
    """Forget an exited worker's live gauges (its counters stay counted)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class Exporter:
    """The process's metrics, fed from ``stats``; ``runtime()`` is the runtime serving now."""

    def __init__(self, stats: Stats, runtime: Callable[[], Runtime]) -> None:
        check_histogram_layout()
        self.stats = stats
        self._runtime = runtime
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess:
            self._scrape = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._scrape)  # type: ignore[no-untyped-call]
        else:
            self._scrape = registry
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
        self._define(registry)
        self._connections = 0
        self._dropped = 0
        self._dropped_log: AccessLog | None = None
        self._gauge_labels: dict[Gauge, set[tuple[str, ...]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def _define(self, r: CollectorRegistry) -> None:
        server = _UPSTREAM
        self.requests = Counter(
            "lbproxy_requests", "Requests answered, by API, method and status code.",
            ("api", "method", "code"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "lbproxy_request_duration_seconds",
            "Time from a request's head to the end of its answer, by API.",
            ("api",), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_requests = Counter(
            "lbproxy_upstream_requests", "Answers from upstream servers, by status class.",
            (*server, "code_class"), registry=r,
        )  # fmt: skip
        self.upstream_time = Histogram(
            "lbproxy_upstream_response_duration_seconds",
            "Time from sending a request to a server (connect included) to the end of its answer.",
            server, buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.connect_time = Histogram(
            "lbproxy_upstream_connect_duration_seconds",
            "Time to open a new connection to a server (TLS handshake included).",
            server, buckets=CONNECT_BUCKETS, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "lbproxy_upstream_errors",
            "Failed tries, by kind: connect, connect_timeout, timeout, reset, protocol.",
            (*server, "kind"), registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "lbproxy_upstream_retries", "Requests tried again, by the failure that led to it.",
            ("upstream", "reason"), registry=r,
        )  # fmt: skip
        self.up = Gauge(
            "lbproxy_server_up", "1 while a server takes requests (not down, not ejected).",
            server, registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.weight = Gauge(
            "lbproxy_server_weight", "A server's weight now (0: drained).",
            server, registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.in_flight = Gauge(
            "lbproxy_server_requests_in_flight", "Requests a server is answering now.",
            server, registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.checks = Counter(
            "lbproxy_health_checks", "Active health checks, by result (success, failure).",
            (*server, "result"), registry=r,
        )  # fmt: skip
        self.transitions = Counter(
            "lbproxy_health_transitions",
            "Health changes: down, up, ejected, half-open, recovered.",
            (*server, "event"), registry=r,
        )  # fmt: skip
        self.pool = Gauge(
            "lbproxy_upstream_connections", "Upstream connections, by state (active, idle).",
            ("address", "state"), registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.created = Counter(
            "lbproxy_upstream_connections_created", "Upstream connections opened.",
            server, registry=r,
        )  # fmt: skip
        self.reused = Counter(
            "lbproxy_upstream_connections_reused",
            "Requests sent on a pooled connection rather than a new one.",
            server, registry=r,
        )  # fmt: skip
        self.clients = Gauge(
            "lbproxy_client_connections_open", "Client connections open now.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.accepted = Counter(
            "lbproxy_client_connections", "Client connections accepted.", registry=r
        )
        self.rejected = Counter(
            "lbproxy_rejected_requests",
            "Requests refused by the gateway itself, by reason (authorization_gate, acl, "
            "signature, throttled, limits, bad_request, no_route, shutting_down).",
            ("reason",), registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "lbproxy_config_reloads", "Configuration reloads, by result (success, failure).",
            ("result",), registry=r,
        )  # fmt: skip
        self.last_reload = Gauge(
            "lbproxy_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (start or reload).",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.last_reload.set(time.time())
        self.dropped = Counter(
            "lbproxy_access_log_dropped", "Access log records dropped (the writer fell behind).",
            registry=r,
        )  # fmt: skip
        self.build_info = Gauge(
            "lbproxy_build_info", "Always 1: the version, Python and HTTP parser running.",
            ("version", "python_version", "parser"), registry=r, multiprocess_mode="max",
        )  # fmt: skip

    # -- feeding ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush()
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick, loop)

    def flush(self) -> None:
        """Move what was counted into the metrics; set the gauges to what is true now."""
        stats = self.stats
        for api in (*stats.apis.values(), stats.unrouted):
            for (method, status), n in api.take_requests().items():
                self.requests.labels(api.name, _METHODS.get(method, "OTHER"), str(status)).inc(n)
            _add(self.duration.labels(api.name), api.duration)
        for group in stats.groups.values():
            self._flush_group(group)
        rejected, stats.rejected = stats.rejected, {}
        for reason, n in rejected.items():
            self.rejected.labels(reason).inc(n)
        reloads, stats.reloads = stats.reloads, {}
        for ok, n in reloads.items():
            self.reloads.labels("success" if ok else "failure").inc(n)
            if ok:
                self.last_reload.set(time.time())
        if stats.connections > self._connections:
            self.accepted.inc(stats.connections - self._connections)
            self._connections = stats.connections
        self._set_gauges(self._runtime())

    def _flush_group(self, group: GroupStats) -> None:
        name, servers = group.name, group.servers
        counts = group.take_counts()
        for i, server in enumerate(servers):
            for k, n in enumerate(counts.responses[i]):
                if n:
                    self.upstream_requests.labels(name, server, f"{k}xx").inc(n)
            _add(self.upstream_time.labels(name, server), group.response_time[i])
            _add(self.connect_time.labels(name, server), group.connect_time[i])
            if counts.created[i]:
                self.created.labels(name, server).inc(counts.created[i])
            if counts.reused[i]:
                self.reused.labels(name, server).inc(counts.reused[i])
        for (i, kind), n in counts.errors.items():
            self.errors.labels(name, servers[i], kind).inc(n)
        for reason, n in counts.retries.items():
            self.retries.labels(name, reason).inc(n)
        for (i, passed), n in counts.checks.items():
            self.checks.labels(name, servers[i], "success" if passed else "failure").inc(n)
        for (i, event), n in counts.transitions.items():
            self.transitions.labels(name, servers[i], event).inc(n)

    def _set_gauges(self, runtime: Runtime) -> None:
        now = asyncio.get_running_loop().time()
        seen: dict[Gauge, set[tuple[str, ...]]] = {}

        def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
            if not labels:
                gauge.set(value)
                return
            gauge.labels(*labels).set(value)
            seen.setdefault(gauge, set()).add(labels)

        for group in runtime.routes.groups.values():
            for host in group.table.hosts:
                server = (group.name, host.name)
                put(self.up, server, 1.0 if host.is_available(now) else 0.0)
                put(self.weight, server, host.weight)
                put(self.in_flight, server, host.in_flight)
        for address, (active, idle) in runtime.pools.counts().items():
            put(self.pool, (address, "active"), active)
            put(self.pool, (address, "idle"), idle)
        put(self.clients, (), runtime.client_connections())
        parser = runtime.config.gateway.http_parser
        put(self.build_info, (__version__, platform.python_version(), parser), 1)
        log = runtime.access_log
        if log is not self._dropped_log:  # another log (a reload): its count starts at 0
            self._dropped_log, self._dropped = log, 0
        if log is not None and log.dropped > self._dropped:
            self.dropped.inc(log.dropped - self._dropped)
            self._dropped = log.dropped
        # Servers and pools gone with a reload are no longer reported. Multiprocess mode
        # cannot remove a series from its files: NaN there, which no comparison matches.
        for gauge, before in self._gauge_labels.items():
            for labels in before - seen.get(gauge, set()):
                if self.multiprocess:
                    gauge.labels(*labels).set(math.nan)
                else:
                    gauge.remove(*labels)
        self._gauge_labels = seen

    # -- serving ------------------------------------------------------------------------------

    def render(self) -> bytes:
        self.flush()
        return prometheus_client.generate_latest(self._scrape)

    def handler(self) -> Handler:
        """The admin handler of ``GET /metrics`` (readable without the admin token, like
        Prometheus expects; put the admin listener on a private address)."""

        def handle(request: AdminRequest) -> Reply | None:
            if request.path != "/metrics":
                return None
            if request.method not in ("GET", "HEAD"):
                raise AdminError(405, "method_not_allowed", "use GET")
            return Reply(200, self.render(), prometheus_client.CONTENT_TYPE_LATEST.encode())

        return handle


def _add(child: Histogram, counts: Counts) -> None:
    """Add a take of ``counts`` to a histogram child at once. ``prometheus_client`` has no
    public call for this; its children keep one value per bucket (not cumulative) and the sum,
    which ``check_histogram_layout`` verifies at start so a library change fails loudly."""
    taken = counts.take()
    if taken is None:
        return
    observed, total = taken
    buckets = child._buckets
    for i, n in enumerate(observed):
        if n:
            buckets[i].inc(n)
    child._sum.inc(total)


def check_histogram_layout() -> None:
    """Fail at start, not with wrong figures later, if ``prometheus_client`` keeps histograms
    otherwise than ``_add`` relies on: a histogram fed by ``_add`` must read like one fed by
    ``observe``."""
    bounds = (1.0, 2.0)
    # In memory even in multiprocess mode: the probes must not reach the shared files.
    value_class, values.ValueClass = values.ValueClass, values.MutexValue
    try:
        added = Histogram("probe_seconds", "", buckets=bounds, registry=None)
        observed = Histogram("probe_seconds", "", buckets=bounds, registry=None)
    finally:
        values.ValueClass = value_class
    counts = Counts(bounds)
    for value in (0.5, 1.5, 1.5, 3.0):
        counts.observe(value)
        observed.observe(value)
    _add(added, counts)
    if list(added.collect()) != list(observed.collect()):
        raise RuntimeError("this prometheus_client keeps histograms in a way lbproxy cannot feed")
