"""What the gateway counts, kept as plain Python numbers on the hot path.

Theory of operation. A request costs the hot path a few dict and list increments and a bisect:
no lock, no label lookup, no string work. ``exporter.py`` moves what was counted into
``prometheus_client`` metrics about once a second and before each scrape (``take`` methods hand
over what was counted since the last take and start again), so the costly part (label
lookups, multiprocess files) is paid once per label set per second, not once per request.

- ``ApiStats``: one per API name (or load balancer listener serving clients directly), shared
  across reloads so a request in flight during one counts where the next ones do.
- ``GroupStats``: one per server group (load balancer listener or single-instance
  authorization), per server of it: answers by status class, response and connect times,
  errors, pooled connections made and reused, health checks and transitions; and the group's
  retries by reason.
- ``Stats``: the process's registry of both, plus what belongs to no route: requests refused
  before routing, rejections by reason, accepted client connections, reloads.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from lbproxy.health import Transition

# Seconds. Request durations span a cached answer (sub-millisecond) to a long poll; a gateway on
# a private network sees most upstream answers under 100 ms, so the low end is finer.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
# Connects on a private network take tens to hundreds of microseconds; a TLS handshake more.
CONNECT_BUCKETS = (0.0001, 0.00025, *DURATION_BUCKETS[:-2])
# Upstream error kinds (the ``kind`` label) by the try's failure reason (retry.Failure values).
ERROR_KINDS = {
    "connection refused": "connect",
    "host unreachable": "connect",
    "connect timeout": "connect_timeout",
    "reused connection closed before answering": "reset",
    "connection reset": "reset",
    "upstream timeout": "timeout",
}


class Histogram:
    """Counts per bucket (``counts[i]``: observations in ``(bounds[i-1], bounds[i]]``, the last
    one above every bound) and their sum; cumulative sums are the exporter's business."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def take(self) -> tuple[list[int], float] | None:
        """What was observed since the last take (None: nothing), and start again."""
        if self.sum == 0.0 and not any(self.counts):
            return None
        counts, total = self.counts, self.sum
        self.counts = [0] * len(counts)
        self.sum = 0.0
        return counts, total


class ApiStats:
    """Requests of one API: counts by (method, status) and durations."""

    __slots__ = ("duration", "name", "requests")

    def __init__(self, name: str) -> None:
        self.name = name
        # method as received -> status -> count; the exporter bounds the methods. Nested
        # rather than keyed by (method, status): no tuple to build and hash twice per request,
        # and the method's hash is cached by the bytes object.
        self.requests: dict[bytes, dict[int, int]] = {}
        self.duration = Histogram(DURATION_BUCKETS)

    def take_requests(self) -> dict[tuple[bytes, int], int]:
        """Counts by (method, status) since the last take, and start again."""
        requests, self.requests = self.requests, {}
        return {
            (method, status): n
            for method, by_status in requests.items()
            for status, n in by_status.items()
        }


class GroupStats:
    """What the servers of one group did. Lists are indexed by the server's index in the group
    (the host table's), ``servers`` names them as labels do (``instance:port``)."""

    __slots__ = (
        "checks",
        "connect_time",
        "created",
        "errors",
        "name",
        "response_time",
        "responses",
        "retries",
        "reused",
        "servers",
        "transitions",
    )

    def __init__(self, name: str, servers: Sequence[str]) -> None:
        self.name = name
        self.servers = tuple(servers)
        n = len(self.servers)
        # responses[i][k]: answers of status class k (status // 100) from server i.
        self.responses = [[0] * 10 for _ in range(n)]
        self.response_time = [Histogram(DURATION_BUCKETS) for _ in range(n)]
        self.connect_time = [Histogram(CONNECT_BUCKETS) for _ in range(n)]
        self.created = [0] * n
        self.reused = [0] * n
        self.errors: dict[tuple[int, str], int] = {}  # (server, kind)
        self.retries: dict[str, int] = {}  # the failure that led to another try
        self.checks: dict[tuple[int, bool], int] = {}  # (server, passed)
        self.transitions: dict[tuple[int, str], int] = {}  # (server, event)

    def error(self, index: int, failure: str) -> None:
        key = (index, ERROR_KINDS.get(failure, "protocol"))
        self.errors[key] = self.errors.get(key, 0) + 1

    def retry(self, failure: str) -> None:
        self.retries[failure] = self.retries.get(failure, 0) + 1

    def check(self, index: int, passed: bool) -> None:
        key = (index, passed)
        self.checks[key] = self.checks.get(key, 0) + 1

    def transition(self, transition: Transition) -> None:
        key = (transition.host, transition.event.value)
        self.transitions[key] = self.transitions.get(key, 0) + 1

    def take_counts(self) -> GroupCounts:
        """Everything but the histograms since the last take, and start again."""
        counts = GroupCounts(
            self.responses,
            self.created,
            self.reused,
            self.errors,
            self.retries,
            self.checks,
            self.transitions,
        )
        n = len(self.servers)
        self.responses = [[0] * 10 for _ in range(n)]
        self.created = [0] * n
        self.reused = [0] * n
        self.errors, self.retries, self.checks, self.transitions = {}, {}, {}, {}
        return counts


@dataclass(slots=True)
class GroupCounts:
    """One take of a group's counters (what ``GroupStats`` names the same)."""

    responses: list[list[int]]
    created: list[int]
    reused: list[int]
    errors: dict[tuple[int, str], int]
    retries: dict[str, int]
    checks: dict[tuple[int, bool], int]
    transitions: dict[tuple[int, str], int]


class Stats:
    """The process's counts: one per worker, kept across reloads."""

    __slots__ = ("apis", "connections", "groups", "open", "rejected", "reloads", "unrouted")

    def __init__(self) -> None:
        self.apis: dict[str, ApiStats] = {}
        # By name and servers: a reload that changes a group's servers makes new stats, and
        # the old ones still count the requests of a runtime draining (or a reload refused).
        self.groups: dict[tuple[str, tuple[str, ...]], GroupStats] = {}
        self.unrouted = ApiStats("")  # refused before an API was found: 400, 404, 403...
        self.rejected: dict[str, int] = {}  # by rejection reason (errors.HTTPError.rejection)
        self.connections = 0  # client connections accepted
        # Client connections open in this worker, across its runtimes (one draining after a
        # reload counts too): what gateway.max_client_connections caps.
        self.open = 0
        self.reloads: dict[bool, int] = {}  # by success

    def api(self, name: str) -> ApiStats:
        stats = self.apis.get(name)
        if stats is None:
            stats = self.apis[name] = ApiStats(name)
        return stats

    def group(self, name: str, servers: Sequence[str]) -> GroupStats:
        """The stats of the group ``name`` with these servers (the same across reloads)."""
        key = (name, tuple(servers))
        stats = self.groups.get(key)
        if stats is None:
            stats = self.groups[key] = GroupStats(name, servers)
        return stats

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def reload(self, ok: bool) -> None:
        self.reloads[ok] = self.reloads.get(ok, 0) + 1
