"""Whether a failed try moves on: retries that are safe by construction. Pure.

Theory of operation. A request's tries are tracked by a ``RetryState``; after each failure the
relay asks ``decide`` and gets a ``Decision`` with an action and its reason:

- A connect failure (refused, unreachable, connect timeout) sent nothing: always move on to
  the next server. These moves count neither against ``tries`` nor the budget; the number of
  servers bounds them (the balancer's ``tried`` mask runs out).
- A reused idle connection that the server closed before any response byte (it timed the
  connection out meanwhile) is retried once on a fresh connection to the same server, whatever
  the method: the server never read the request.
- Any other failure happened after the request was sent. It moves on only when the method is
  idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) or the request carries Idempotency-Key,
  while ``tries`` allows another send and the listener's retry budget has room.
- Nothing is retried once a byte of the response went to the client.

The retry budget (Envoy's): at most ``budget`` of a listener's requests in flight may be
retrying at once, but never fewer than ``MIN_RETRY_CONCURRENCY``, so a lone request can retry.
When a server fails every request, retries then add a fifth to the load instead of doubling it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lbproxy.config import RetryPolicy

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
MIN_RETRY_CONCURRENCY = 3


class Failure(enum.Enum):
    """How a try failed; the value is the reason as logged."""

    CONNECT_REFUSED = "connection refused"
    CONNECT_UNREACHABLE = "host unreachable"
    CONNECT_TIMEOUT = "connect timeout"
    STALE_CONNECTION = "reused connection closed before answering"
    RESET = "connection reset"
    TIMEOUT = "upstream timeout"

    @property
    def is_connect(self) -> bool:
        """Nothing of the request reached the server."""
        return self in _CONNECT_FAILURES

    @property
    def status(self) -> int:
        """The status the client gets when this is the last failure: 504 for timeouts."""
        return 504 if self in (Failure.CONNECT_TIMEOUT, Failure.TIMEOUT) else 502


_CONNECT_FAILURES = frozenset(
    {Failure.CONNECT_REFUSED, Failure.CONNECT_UNREACHABLE, Failure.CONNECT_TIMEOUT}
)


def final_status(failure: Failure, every_server_down: bool) -> int:
    """The answer once no try succeeded: 503 (with Retry-After) when every server was down
    and none answered, else what the last failure says."""
    return 503 if every_server_down else failure.status


class Action(enum.Enum):
    NEXT_SERVER = "next server"
    SAME_SERVER = "same server, fresh connection"
    GIVE_UP = "give up"


@dataclass(frozen=True, slots=True)
class Decision:
    host: int
    failure: Failure
    action: Action
    reason: str

    @property
    def retries(self) -> bool:
        return self.action is not Action.GIVE_UP

    def __str__(self) -> str:
        return f"{self.failure.value}: {self.action.value}: {self.reason}"


class RetryBudget:
    """One listener's requests in flight and how many of them are retrying."""

    __slots__ = ("fraction", "minimum", "requests", "retrying")

    def __init__(self, fraction: float, minimum: int = MIN_RETRY_CONCURRENCY) -> None:
        self.fraction = fraction
        self.minimum = minimum
        self.requests = 0
        self.retrying = 0

    def limit(self) -> int:
        return max(self.minimum, int(self.fraction * self.requests))

    def has_room(self) -> bool:
        return self.retrying < self.limit()

    def __repr__(self) -> str:
        return (
            f"<RetryBudget [{self.retrying} of {self.requests} requests retrying, "
            f"limit {self.limit()}]>"
        )


class RetryState:
    """One request's tries. It counts in ``budget`` from creation until ``finish()``, unless
    ``counted`` says the caller already counts every request in ``budget.requests`` (the relay
    does, so that a request that never fails needs no RetryState)."""

    __slots__ = (
        "_budget",
        "_counted",
        "_finished",
        "_holds_slot",
        "_policy",
        "_stale_retried",
        "history",
        "idempotent",
        "method",
        "sends",
        "tried",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        method: str,
        has_idempotency_key: bool,
        counted: bool = False,
    ) -> None:
        self._policy = policy
        self._budget = budget
        self.method = method
        self.idempotent = method in IDEMPOTENT_METHODS or has_idempotency_key
        self.sends = 0
        # A bit per host index, for the balancer's pick(now, tried).
        self.tried = 0
        self.history: list[Decision] = []
        self._stale_retried = False
        self._holds_slot = False
        self._finished = False
        self._counted = counted
        if not counted:
            budget.requests += 1

    def try_deadline(self, now: float, deadline: float) -> float:
        """When the try started at ``now`` times out: ``try_timeout`` from now, or the route's
        own ``deadline`` when that comes first or the listener sets no try_timeout."""
        try_timeout = self._policy.try_timeout
        return deadline if try_timeout is None else min(deadline, now + try_timeout)

    def decide(self, host: int, failure: Failure, response_started: bool) -> Decision:
        """What to do after the try on ``host`` failed; recorded in ``history``."""
        self.tried |= 1 << host
        action, reason = self._judge(failure, response_started)
        decision = Decision(host, failure, action, reason)
        self.history.append(decision)
        return decision

    def _judge(self, failure: Failure, response_started: bool) -> tuple[Action, str]:
        stale_once = failure is Failure.STALE_CONNECTION and not self._stale_retried
        if not failure.is_connect and not stale_once:
            self.sends += 1
        if response_started:
            return Action.GIVE_UP, "the response to the client has begun"
        if stale_once:
            self._stale_retried = True
            return Action.SAME_SERVER, "the server never read the request; once more"
        if failure.is_connect:
            return Action.NEXT_SERVER, "nothing was sent"
        return self._judge_sent()

    def _judge_sent(self) -> tuple[Action, str]:
        if not self.idempotent:
            return (
                Action.GIVE_UP,
                f"{self.method} was sent and is not idempotent (an Idempotency-Key header "
                "would allow a retry)",
            )
        tries = self._policy.tries
        if self.sends >= tries:
            return Action.GIVE_UP, f"sent {self.sends} time(s) of tries = {tries}"
        budget = self._budget
        if not self._holds_slot:
            if not budget.has_room():
                return (
                    Action.GIVE_UP,
                    f"retry budget spent: {budget.retrying} of {budget.requests} requests "
                    "are retrying",
                )
            budget.retrying += 1
            self._holds_slot = True
        why = "idempotent" if self.method in IDEMPOTENT_METHODS else "has an Idempotency-Key"
        return Action.NEXT_SERVER, f"{self.method} {why}; send {self.sends + 1} of {tries}"

    def finish(self) -> None:
        """The request is over: release its place in the budget (once)."""
        if self._finished:
            return
        self._finished = True
        if not self._counted:
            self._budget.requests -= 1
        if self._holds_slot:
            self._budget.retrying -= 1

    def __repr__(self) -> str:
        return f"<RetryState {self.method} sends={self.sends} tried={self.tried:#b}>"
