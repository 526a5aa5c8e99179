"""Health state of a listener's servers: active checks and passive outlier detection. Pure.

Theory of operation. Two sources judge a server, and both only flip flags on the host table
(``hosts.HostTable``) that the balancer reads:

- Active checks (when the listener has ``health_check``): the checker task probes each server
  every ``interval`` (jittered) and reports a ``CheckResult``. A server starts up; ``fall``
  failed checks in a row hold it down, ``rise`` passing ones release it.
- Passive health, from real requests: ``max_fails`` consecutive failures eject a server for
  ``fail_timeout`` seconds. When the time is up the server is half-open: it takes requests
  again (ramping, with slow start), one failure ejects it again, one success closes the case.
  A passing active check ends an ejection early, into half-open.

Every change comes back as ``Transition`` values for the caller to log (the reason says what
was seen: "status 500", "timeout", "connection refused"); the board also keeps, for status
pages, each server's last transition and its last ``CHECK_HISTORY`` check results. Nothing here
reads a clock, sleeps or touches a socket: the asyncio checker lives with the relay, and the
time is always an argument.
"""

from __future__ import annotations

import enum
import errno
import random
from collections import deque
from dataclasses import dataclass

from lbproxy.config import HealthCheck, Passive
from lbproxy.hosts import HostTable

# Checks of different servers (and workers) drift apart by up to this fraction of the interval,
# so they do not hit a server, or leave the gateway, all at once.
JITTER = 0.1
# Check results kept per server for status pages: enough to see a flapping server.
CHECK_HISTORY = 5


class Event(enum.Enum):
    DOWN = "down"  # active checks hold the server down
    UP = "up"  # active checks release it
    EJECTED = "ejected"  # passive health took it out for fail_timeout
    HALF_OPEN = "half-open"  # the ejection ended: requests try it again
    RECOVERED = "recovered"  # a request succeeded while half-open


@dataclass(frozen=True, slots=True)
class Transition:
    host: int
    name: str
    event: Event
    reason: str
    at: float

    def __str__(self) -> str:
        return f"{self.name} {self.event.value}: {self.reason}"


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One active check's result and when (the caller's clock) it was recorded."""

    at: float
    ok: bool
    reason: str


NO_TRANSITIONS: tuple[Transition, ...] = ()


def judge_status(check: HealthCheck, status: int) -> CheckResult:
    """The verdict on an HTTP check's response status."""
    return CheckResult(check.expects(status), f"status {status}")


_TYPE_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timeout"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
)
_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timeout",
}


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed check or request, as logged in a transition."""
    for kind, reason in _TYPE_REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[exc.errno]
        if exc.strerror:
            return exc.strerror.lower()
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def first_check_at(now: float, interval: float, rng: random.Random) -> float:
    """When a server's first check runs: spread over one interval, so that a start or a reload
    does not probe every server at once."""
    return now + rng.uniform(0.0, interval)


def next_check_at(now: float, interval: float, rng: random.Random, jitter: float = JITTER) -> float:
    """``now + interval * (1 ± jitter)``."""
    return now + interval * (1.0 + rng.uniform(-jitter, jitter))


class ActiveState:
    """Rise and fall counting for one server: ``_streak`` counts results that disagree with
    the current state; one that agrees resets it."""

    __slots__ = ("_streak", "fall", "is_up", "rise")

    def __init__(self, rise: int, fall: int) -> None:
        self.rise = rise
        self.fall = fall
        self.is_up = True
        self._streak = 0

    def record(self, ok: bool) -> bool:
        """Count one result; True when it flips the state."""
        if ok == self.is_up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < (self.fall if self.is_up else self.rise):
            return False
        self.is_up = ok
        self._streak = 0
        return True


class PassiveState:
    """Consecutive failures of one server and where it stands: ``ok``, ``ejected`` (until
    ``ejected_until``), or ``half_open`` (the ejection ended, no request has succeeded yet)."""

    __slots__ = ("ejected_until", "fails", "phase")

    def __init__(self) -> None:
        self.fails = 0
        self.phase = "ok"
        self.ejected_until = 0.0

    def lapse(self, now: float) -> bool:
        """Move an ejection whose time is up to half-open; True when it did."""
        if self.phase == "ejected" and now >= self.ejected_until:
            self.phase = "half_open"
            return True
        return False


class HealthBoard:
    """The health of one listener's servers, writing its verdicts to the host table."""

    __slots__ = (
        "_active",
        "_check",
        "_checks",
        "_downed",
        "_last",
        "_passive",
        "_settings",
        "fail_statuses",
        "table",
        "troubled",
    )

    def __init__(self, table: HostTable, passive: Passive, check: HealthCheck | None) -> None:
        self.table = table
        self._settings = passive
        self.fail_statuses = frozenset(passive.fail_statuses)
        self._check = check
        count = len(table.hosts)
        self._passive = [PassiveState() for _ in range(count)]
        self._active = [ActiveState(check.rise, check.fall) for _ in range(count)] if check else []
        self._checks = [deque[CheckRecord](maxlen=CHECK_HISTORY) for _ in range(count)]
        self._last: list[Transition | None] = [None] * count
        self._downed: list[Transition | None] = [None] * count
        # Some server has failures counted or is out: only then must successes be recorded,
        # which spares the relay a call per request while every server is well.
        self.troubled = False

    def is_failure_status(self, status: int) -> bool:
        """A response status that passive health counts as a failure (``fail_statuses``)."""
        return status in self.fail_statuses

    def phase(self, index: int, now: float) -> str:
        """``up``, ``down`` (active checks), ``ejected`` or ``half_open``, for status pages."""
        if self._active and not self._active[index].is_up:
            return "down"
        state = self._passive[index]
        if state.phase == "ejected" and now >= state.ejected_until:
            return "half_open"
        return "up" if state.phase == "ok" else state.phase

    def checks(self, index: int) -> tuple[CheckRecord, ...]:
        """The server's last active check results, oldest first."""
        return tuple(self._checks[index])

    def last_transition(self, index: int) -> Transition | None:
        """The server's latest transition, None before any."""
        return self._last[index]

    def why(self, index: int) -> Transition | None:
        """The transition that explains the server's phase: while active checks hold it down,
        the one that took it down (a passive transition since, such as an ejection running
        out, does not explain it); else the latest."""
        if self._active and not self._active[index].is_up:
            return self._downed[index]
        return self._last[index]

    # --- active checks --------------------------------------------------------------------------

    def record_check(self, index: int, result: CheckResult, now: float) -> tuple[Transition, ...]:
        if self._check is None:
            raise ValueError("this listener has no health_check; nothing records checks")
        active = self._active[index]
        self._checks[index].append(CheckRecord(now, result.ok, result.reason))
        found: list[Transition] = []
        if active.record(result.ok):
            self.table.set_checked_down(index, not active.is_up, now)
            count = self._check.rise if active.is_up else self._check.fall
            verdict = "passed" if active.is_up else "failed"
            reason = f"{count} check(s) {verdict} in a row; last: {result.reason}"
            event = Event.UP if active.is_up else Event.DOWN
            found.append(self._transition(index, event, reason, now))
            if event is Event.DOWN:
                self._downed[index] = found[-1]
        passive = self._passive[index]
        if (
            result.ok
            and active.is_up
            and passive.phase == "ejected"
            and now < passive.ejected_until
        ):
            # The server answers its checks: let requests judge it again now rather than later.
            self.table.end_ejection(index, now)
            passive.phase = "half_open"
            reason = f"active check passed ({result.reason}); ejection ended early"
            found.append(self._transition(index, Event.HALF_OPEN, reason, now))
        return tuple(found)

    # --- passive health -------------------------------------------------------------------------

    def record_success(self, index: int, now: float) -> tuple[Transition, ...]:
        state = self._passive[index]
        if state.phase == "ok":
            state.fails = 0
            self._recheck_trouble()
            return NO_TRANSITIONS
        lapsed = self._lapse(index, state, now)
        if state.phase == "ejected":
            return lapsed  # a request sent before the ejection; it does not end it
        state.phase = "ok"
        state.fails = 0
        self._recheck_trouble()
        recovered = self._transition(index, Event.RECOVERED, "a request succeeded", now)
        return (*lapsed, recovered)

    def record_failure(self, index: int, reason: str, now: float) -> tuple[Transition, ...]:
        settings = self._settings
        state = self._passive[index]
        if settings.max_fails == 0:
            return NO_TRANSITIONS
        self.troubled = True
        lapsed = self._lapse(index, state, now)
        if state.phase == "ejected":
            return lapsed
        if state.phase == "half_open":
            why = f"failed again after an ejection: {reason}"
        else:
            state.fails += 1
            if state.fails < settings.max_fails:
                return lapsed
            why = f"{state.fails} failure(s) in a row; last: {reason}"
        state.phase = "ejected"
        state.fails = 0
        state.ejected_until = now + settings.fail_timeout
        self.table.eject(index, state.ejected_until)
        ejected = self._transition(
            index, Event.EJECTED, f"{why}; out for {settings.fail_timeout:g} s", now
        )
        return (*lapsed, ejected)

    def _recheck_trouble(self) -> None:
        if self.troubled:
            self.troubled = any(s.fails or s.phase != "ok" for s in self._passive)

    def poll(self, now: float) -> tuple[Transition, ...]:
        """Ejections whose time is up, as half-open transitions. The balancer needs no poll (it
        reads the ejection's end time); this is for the log, called by the checker's tick."""
        found: list[Transition] = []
        for index, state in enumerate(self._passive):
            found.extend(self._lapse(index, state, now))
        return tuple(found)

    def _lapse(self, index: int, state: PassiveState, now: float) -> tuple[Transition, ...]:
        if not state.lapse(now):
            return NO_TRANSITIONS
        timeout = self._settings.fail_timeout
        reason = f"the {timeout:g} s ejection ended; trying it again"
        return (self._transition(index, Event.HALF_OPEN, reason, now),)

    def _transition(self, index: int, event: Event, reason: str, now: float) -> Transition:
        transition = Transition(index, self.table.hosts[index].name, event, reason, now)
        self._last[index] = transition
        return transition

    def __repr__(self) -> str:
        return f"<HealthBoard {self.table!r}>"
