"""The host table: one row per server of a listener, the state that selection and health share.

Theory of operation (Envoy's and Pingora's model): health code flips flags on a host (held down
by active checks, ejected until a time, ramping up since a time), the relay counts its requests
in flight, and the balancer only reads. Neither side calls the other, so each is tested alone.

Pure: times are floats from the caller's clock (``loop.time()``); nothing here reads a clock.
Flags that end by themselves (an ejection, a slow-start ramp) are stored as times and judged
against ``now``, so no timer is needed to lift them. Two summaries, refreshed on every flag
change, let the balancer's hot path be two comparisons: ``down`` (how many hosts active checks
hold down) and ``settled_at`` (from then on, with no new flag, every host is available at full
weight; never while every host is drained, so the balancer's precomputed cycle, which needs a
weight, is not used then). ``generation`` counts runtime weight changes (``set_weight``), so
that a balancer holding a schedule built from the weights knows when to build it again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from lbproxy.config import Listener

# A host coming back takes this percentage of its weight at first, then ramps linearly to 100
# over the listener's slow_start (Envoy's default floor is also 10%).
MIN_SHARE = 10
FULL_SHARE = 100
NEVER = float("-inf")


class Availability(enum.Enum):
    """Which servers a listener's new requests go to."""

    PRIMARY = "primary"  # at least one primary server is available
    BACKUP = "backup"  # every primary is down or drained; backups serve
    FAIL_OPEN = "fail_open"  # every server is down: all are tried anyway before a 503
    DRAINED = "drained"  # an operator drained every server: new requests get 503


class Host:
    """One server of a listener. ``weight`` 0 is drained: never picked for a new request.
    ``weight`` is the current one, which an operator may change at runtime; ``configured_weight``
    is the configuration's, which ``enable`` goes back to."""

    __slots__ = (
        "backup",
        "checked_down",
        "configured_weight",
        "ejected_until",
        "in_flight",
        "name",
        "ramp_from",
        "weight",
    )

    def __init__(self, name: str, weight: int, backup: bool = False) -> None:
        if weight < 0:
            raise ValueError(f"weight must be 0 or more, got {weight}")
        self.name = name
        self.weight = weight
        self.configured_weight = weight
        self.backup = backup
        self.checked_down = False
        self.ejected_until = NEVER
        self.ramp_from = NEVER
        self.in_flight = 0

    def is_drained(self) -> bool:
        return self.weight == 0

    def is_available(self, now: float) -> bool:
        """May take new requests at ``now``: not drained, not held down, not ejected."""
        return self.weight > 0 and not self.checked_down and now >= self.ejected_until

    def __repr__(self) -> str:
        flags = [f"w{self.weight}"]
        if self.weight != self.configured_weight:
            flags[0] += f" (configured {self.configured_weight})"
        if self.backup:
            flags.append("backup")
        if self.checked_down:
            flags.append("down")
        if self.ejected_until != NEVER:
            flags.append(f"ejected<{self.ejected_until:g}")
        if self.in_flight:
            flags.append(f"{self.in_flight} in flight")
        return f"{self.name} {' '.join(flags)}"


class HostTable:
    __slots__ = ("down", "generation", "hosts", "settled_at", "slow_start")

    def __init__(self, hosts: Sequence[Host], slow_start: float = 0.0) -> None:
        if not any(h.weight > 0 for h in hosts):
            raise ValueError("a host table needs a host with a weight above 0")
        self.hosts = tuple(hosts)
        self.slow_start = slow_start
        self.down = 0
        self.settled_at = NEVER
        self.generation = 0

    @classmethod
    def for_listener(cls, listener: Listener) -> HostTable:
        """One host per server, in the listener's order, named ``instance:port``."""
        hosts = [Host(f"{s.instance}:{s.port}", s.weight, s.backup) for s in listener.servers]
        return cls(hosts, listener.slow_start)

    # --- written by health code ---------------------------------------------------------------

    def set_checked_down(self, index: int, down: bool, now: float) -> None:
        """Active checks hold the host down, or release it (it then ramps up from ``now``, or
        from the end of an ejection still running)."""
        host = self.hosts[index]
        if host.checked_down and not down:
            host.ramp_from = max(now, host.ejected_until)
        host.checked_down = down
        self._settle()

    def eject(self, index: int, until: float) -> None:
        """Passive health takes the host out of selection until ``until``; it ramps up from
        then."""
        host = self.hosts[index]
        host.ejected_until = until
        host.ramp_from = until
        self._settle()

    def end_ejection(self, index: int, now: float) -> None:
        host = self.hosts[index]
        if now < host.ejected_until:
            host.ejected_until = now
            host.ramp_from = now
            self._settle()

    # --- written by operators (the admin API); runtime only, a restart forgets it -------------

    def set_weight(self, index: int, weight: int, now: float) -> None:
        """Give the host a new current weight. 0 drains it (no new requests; those in flight
        finish); a drained host given a weight again ramps up from ``now`` under slow start.
        Every host may be drained, as HAProxy and nginx let operators do (a maintenance of the
        whole group): new requests then find no server (``Availability.DRAINED``)."""
        host = self.hosts[index]
        if weight < 0:
            raise ValueError(f"weight must be 0 or more, got {weight}")
        if host.weight == 0 and weight > 0:
            host.ramp_from = max(now, host.ramp_from)
        host.weight = weight
        self.generation += 1
        self._settle()

    def _settle(self) -> None:
        hosts = self.hosts
        self.down = sum(1 for h in hosts if h.checked_down)
        if not any(h.weight > 0 for h in hosts):
            self.settled_at = float("inf")
            return
        ramps = [h.ramp_from + self.slow_start for h in hosts if self.slow_start > 0]
        self.settled_at = max([NEVER, *ramps, *(h.ejected_until for h in hosts)])

    # --- written by the relay -----------------------------------------------------------------

    def begin(self, index: int) -> None:
        """A request to the host started (least_conn counts these)."""
        self.hosts[index].in_flight += 1

    def end(self, index: int) -> None:
        self.hosts[index].in_flight -= 1

    # --- read by the balancer and the status page ---------------------------------------------

    def is_settled(self, now: float) -> bool:
        """Every host is available at its full weight (drained ones aside, but not all)."""
        return not self.down and now >= self.settled_at

    def share(self, host: Host, now: float) -> int:
        """The percentage of its weight the host takes at ``now`` (slow start)."""
        elapsed = now - host.ramp_from
        if self.slow_start <= 0 or elapsed >= self.slow_start:
            return FULL_SHARE
        return max(MIN_SHARE, int(FULL_SHARE * elapsed / self.slow_start))

    def availability(self, now: float) -> Availability:
        available = [h for h in self.hosts if h.is_available(now)]
        if any(not h.backup for h in available):
            return Availability.PRIMARY
        if available:
            return Availability.BACKUP
        if all(h.is_drained() for h in self.hosts):
            return Availability.DRAINED
        return Availability.FAIL_OPEN

    def __repr__(self) -> str:
        return f"<HostTable [{', '.join(map(repr, self.hosts))}]>"
