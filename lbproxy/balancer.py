"""Which server a request goes to: smooth weighted round-robin (nginx's algorithm) or least
connections, over a listener's host table.

Smooth WRR (ngx_http_upstream_get_peer): each pick adds every server's weight to its running
score, takes the highest score and subtracts the total from it. Weights 5,1,1 give a a b a c a a,
spreading the heavy server's turns instead of bunching them (a a a a a b c).

Pure and deterministic: a pick reads the host table at the ``now`` it is given. Servers are
taken in tiers: available primaries, else available backups, else (fail open) every server that
is not drained, because a server marked down may have recovered and trying it beats a certain
503. ``tried`` (a bit per host index) leaves out servers a request already tried, so retries and
fail-open walk through each server once. While the table is settled (every host up at full
weight) and nothing is excluded, WRR replays a precomputed cycle: an index step per pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lbproxy.hosts import FULL_SHARE, HostTable

# (host index, effective weight) of the servers one pick chooses among.
Candidates = list[tuple[int, int]]


class SmoothWeightedRoundRobin:
    """Smooth WRR over fixed weights; a weight of 0 is never picked."""

    __slots__ = ("_current", "_cycle", "_next", "_total", "_weights")

    # The sequence repeats every sum(weights) picks; up to this length it is computed once and
    # replayed, which makes a pick an index step instead of a loop over the servers.
    MAX_CYCLE = 4096

    def __init__(self, weights: tuple[int, ...]) -> None:
        if not any(w > 0 for w in weights) or any(w < 0 for w in weights):
            raise ValueError(f"weights must be 0 or more with one above 0, got {weights!r}")
        self._weights = weights
        self._current = [0] * len(weights)
        self._total = sum(weights)
        self._next = 0
        self._cycle: tuple[int, ...] = ()
        if self._total <= self.MAX_CYCLE:
            self._cycle = tuple(self._step() for _ in range(self._total))

    def pick(self) -> int:
        """The index of the next server."""
        cycle = self._cycle
        if cycle:
            i = self._next
            self._next = i + 1 if i + 1 < len(cycle) else 0
            return cycle[i]
        return self._step()

    def _step(self) -> int:
        if len(self._weights) == 1:
            return 0
        return step(self._current, list(enumerate(self._weights)))

    def __repr__(self) -> str:
        if self._cycle:
            return (
                f"<SmoothWeightedRoundRobin weights={self._weights} at={self._next}/{self._total}>"
            )
        return f"<SmoothWeightedRoundRobin weights={self._weights} current={self._current}>"


def step(current: list[int], candidates: Sequence[tuple[int, int]]) -> int:
    """One smooth WRR step among ``candidates``; ties go to the first. Hosts that are not
    candidates keep their score, as nginx keeps a skipped peer's."""
    best = -1
    total = 0
    for i, weight in candidates:
        if weight <= 0:
            continue
        current[i] += weight
        total += weight
        if best < 0 or current[i] > current[best]:
            best = i
    current[best] -= total
    return best


def candidates(table: HostTable, now: float, tried: int) -> Candidates:
    """The tier one pick chooses among, each host with its slow-start weight; empty when every
    server that is not drained has been tried."""
    primary: Candidates = []
    backup: Candidates = []
    down: Candidates = []
    for i, host in enumerate(table.hosts):
        if host.weight == 0 or tried >> i & 1:
            continue
        if not host.is_available(now):
            # Fail open at full weight: a ramp is for a host known to be back.
            down.append((i, host.weight * FULL_SHARE))
        elif host.backup:
            backup.append((i, host.weight * table.share(host, now)))
        else:
            primary.append((i, host.weight * table.share(host, now)))
    return primary or backup or down


class Scheduler(Protocol):
    def pick(self, now: float, tried: int = 0) -> int | None:
        """The index of the host for the next try, or None once every server was tried."""


class WeightedRoundRobin:
    __slots__ = ("_current", "_cycle", "_generation", "_table")

    def __init__(self, table: HostTable) -> None:
        self._table = table
        self._current = [0] * len(table.hosts)
        self._cycle = self._build_cycle()
        self._generation = table.generation

    def _build_cycle(self) -> SmoothWeightedRoundRobin:
        """The cycle of the table's current weights. While the table is settled every host is
        up, so the cycle holds the primaries, or the backups when every primary is drained (some
        host has a weight above 0: a table whose every host is drained never settles)."""
        hosts = self._table.hosts
        weights = tuple(0 if h.backup else h.weight for h in hosts)
        if not any(weights):
            weights = tuple(h.weight if h.backup else 0 for h in hosts)
        return SmoothWeightedRoundRobin(weights)

    def pick(self, now: float, tried: int = 0) -> int | None:
        table = self._table
        if not tried and not table.down and now >= table.settled_at:
            # A runtime weight change (HostTable.set_weight) makes the cycle stale.
            if table.generation != self._generation:
                self._cycle = self._build_cycle()
                self._generation = table.generation
            return self._cycle.pick()
        among = candidates(table, now, tried)
        return step(self._current, among) if among else None

    def __repr__(self) -> str:
        return f"<WeightedRoundRobin {self._table!r}>"


class LeastConnections:
    """Fewest requests in flight relative to weight (nginx's least_conn); ties go by smooth WRR
    among the tied, so equal hosts take turns instead of the first always winning."""

    __slots__ = ("_current", "_table")

    def __init__(self, table: HostTable) -> None:
        self._table = table
        self._current = [0] * len(table.hosts)

    def pick(self, now: float, tried: int = 0) -> int | None:
        among = candidates(self._table, now, tried)
        if not among:
            return None
        hosts = self._table.hosts
        tied: Candidates = []
        best_load, best_weight = 0, 1
        for i, weight in among:
            load = hosts[i].in_flight
            # load/weight < best_load/best_weight, without division.
            if not tied or load * best_weight < best_load * weight:
                tied, best_load, best_weight = [(i, weight)], load, weight
            elif load * best_weight == best_load * weight:
                tied.append((i, weight))
        return step(self._current, tied)

    def __repr__(self) -> str:
        return f"<LeastConnections {self._table!r}>"


SCHEDULERS: dict[str, type[WeightedRoundRobin] | type[LeastConnections]] = {
    "wrr": WeightedRoundRobin,
    "least_conn": LeastConnections,
}


def make_scheduler(name: str, table: HostTable) -> Scheduler:
    """The listener's ``scheduler`` ("wrr" or "least_conn") over ``table``."""
    return SCHEDULERS[name](table)
