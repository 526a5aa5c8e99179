"""Retry decisions: a vector table of method x failure x state, each with its action and reason,
then tries, the stale-connection retry, the budget and the statuses given up with."""

from __future__ import annotations

import pytest

from lbproxy.config import RetryPolicy
from lbproxy.retry import (
    IDEMPOTENT_METHODS,
    Action,
    Decision,
    Failure,
    RetryBudget,
    RetryState,
    final_status,
)

NEXT, SAME, GIVE_UP = Action.NEXT_SERVER, Action.SAME_SERVER, Action.GIVE_UP
NOT_IDEMPOTENT = "was sent and is not idempotent (an Idempotency-Key header would allow a retry)"


def state(
    method: str = "GET", key: bool = False, tries: int = 2, budget: RetryBudget | None = None
) -> RetryState:
    return RetryState(RetryPolicy(tries=tries), budget or RetryBudget(0.2), method, key)


DECISIONS = [
    # connect failures: nothing was sent, whatever the method
    ("GET", Failure.CONNECT_REFUSED, False, NEXT, "nothing was sent"),
    ("POST", Failure.CONNECT_REFUSED, False, NEXT, "nothing was sent"),
    ("PATCH", Failure.CONNECT_UNREACHABLE, False, NEXT, "nothing was sent"),
    ("POST", Failure.CONNECT_TIMEOUT, False, NEXT, "nothing was sent"),
    # after the request was sent
    ("GET", Failure.RESET, False, NEXT, "GET idempotent; send 2 of 2"),
    ("GET", Failure.TIMEOUT, False, NEXT, "GET idempotent; send 2 of 2"),
    ("HEAD", Failure.RESET, False, NEXT, "HEAD idempotent; send 2 of 2"),
    ("PUT", Failure.TIMEOUT, False, NEXT, "PUT idempotent; send 2 of 2"),
    ("DELETE", Failure.RESET, False, NEXT, "DELETE idempotent; send 2 of 2"),
    ("OPTIONS", Failure.RESET, False, NEXT, "OPTIONS idempotent; send 2 of 2"),
    ("TRACE", Failure.RESET, False, NEXT, "TRACE idempotent; send 2 of 2"),
    ("POST", Failure.TIMEOUT, False, GIVE_UP, f"POST {NOT_IDEMPOTENT}"),
    ("PATCH", Failure.RESET, False, GIVE_UP, f"PATCH {NOT_IDEMPOTENT}"),
    ("POST+key", Failure.TIMEOUT, False, NEXT, "POST has an Idempotency-Key; send 2 of 2"),
    # a stale pooled connection: the server never read the request
    (
        "POST",
        Failure.STALE_CONNECTION,
        False,
        SAME,
        "the server never read the request; once more",
    ),
    # once a byte went to the client, never
    ("GET", Failure.RESET, True, GIVE_UP, "the response to the client has begun"),
    ("GET+key", Failure.TIMEOUT, True, GIVE_UP, "the response to the client has begun"),
    ("GET", Failure.STALE_CONNECTION, True, GIVE_UP, "the response to the client has begun"),
]


@pytest.mark.parametrize(
    ("sent", "failure", "started", "action", "reason"),
    DECISIONS,
    ids=[f"{r}-{f.name}{'-started' if s else ''}" for r, f, s, *_ in DECISIONS],
)
def test_first_failure(
    sent: str, failure: Failure, started: bool, action: Action, reason: str
) -> None:
    method, _, key = sent.partition("+")
    retry = state(method, key == "key")
    decision = retry.decide(2, failure, response_started=started)
    assert decision == Decision(2, failure, action, reason)
    assert decision.retries is (action is not GIVE_UP)
    assert retry.tried == 0b100
    assert retry.history == [decision]


def test_idempotent_methods() -> None:
    assert sorted(IDEMPOTENT_METHODS) == ["DELETE", "GET", "HEAD", "OPTIONS", "PUT", "TRACE"]


def test_tries_bound_the_sends_not_the_connect_failures() -> None:
    retry = state("GET", tries=3)
    actions = [
        retry.decide(0, Failure.CONNECT_REFUSED, False).action,
        retry.decide(1, Failure.RESET, False).action,
        retry.decide(2, Failure.CONNECT_TIMEOUT, False).action,
        retry.decide(3, Failure.TIMEOUT, False).action,
    ]
    assert actions == [NEXT, NEXT, NEXT, NEXT]
    last = retry.decide(4, Failure.RESET, False)
    assert (last.action, last.reason) == (GIVE_UP, "sent 3 time(s) of tries = 3")
    assert (retry.sends, retry.tried) == (3, 0b11111)
    assert [str(d) for d in retry.history][-2:] == [
        "upstream timeout: next server: GET idempotent; send 3 of 3",
        "connection reset: give up: sent 3 time(s) of tries = 3",
    ]


def test_tries_one_never_resends() -> None:
    retry = state("GET", tries=1)
    assert retry.decide(0, Failure.CONNECT_REFUSED, False).action is NEXT
    assert retry.decide(1, Failure.RESET, False).reason == "sent 1 time(s) of tries = 1"


def test_a_stale_connection_is_retried_once_then_counts_as_sent() -> None:
    retry = state("POST")
    assert retry.decide(0, Failure.STALE_CONNECTION, False).action is SAME
    assert retry.sends == 0
    second = retry.decide(0, Failure.STALE_CONNECTION, False)
    assert (second.action, second.reason) == (GIVE_UP, f"POST {NOT_IDEMPOTENT}")
    assert retry.sends == 1


def test_a_get_on_a_second_stale_connection_moves_on() -> None:
    retry = state("GET")
    assert retry.decide(0, Failure.STALE_CONNECTION, False).action is SAME
    assert retry.decide(0, Failure.STALE_CONNECTION, False).action is NEXT


@pytest.mark.parametrize(
    ("failure", "every_server_down", "status"),
    [
        (Failure.CONNECT_REFUSED, False, 502),
        (Failure.CONNECT_UNREACHABLE, False, 502),
        (Failure.RESET, False, 502),
        (Failure.STALE_CONNECTION, False, 502),
        (Failure.CONNECT_TIMEOUT, False, 504),
        (Failure.TIMEOUT, False, 504),
        (Failure.CONNECT_REFUSED, True, 503),
        (Failure.TIMEOUT, True, 503),
    ],
)
def test_final_status(failure: Failure, every_server_down: bool, status: int) -> None:
    assert final_status(failure, every_server_down) == status


@pytest.mark.parametrize(
    ("now", "deadline", "try_timeout", "expected"),
    [(10.0, 70.0, 2.0, 12.0), (10.0, 11.0, 2.0, 11.0), (10.0, 70.0, None, 70.0)],
)
def test_try_deadline(
    now: float, deadline: float, try_timeout: float | None, expected: float
) -> None:
    retry = RetryState(RetryPolicy(try_timeout=try_timeout), RetryBudget(0.2), "GET", False)
    assert retry.try_deadline(now, deadline) == expected


# --- the retry budget ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "requests", "limit"),
    [(0.2, 1, 3), (0.2, 10, 3), (0.2, 20, 4), (0.2, 100, 20), (0.5, 9, 4), (0.0, 100, 3)],
)
def test_budget_limit(fraction: float, requests: int, limit: int) -> None:
    budget = RetryBudget(fraction)
    budget.requests = requests
    assert budget.limit() == limit


def test_a_lone_request_may_retry() -> None:
    budget = RetryBudget(0.2)
    retry = RetryState(RetryPolicy(), budget, "GET", False)
    assert retry.decide(0, Failure.RESET, False).action is NEXT
    assert (budget.requests, budget.retrying) == (1, 1)
    retry.finish()
    retry.finish()  # idempotent: the request is released once
    assert (budget.requests, budget.retrying) == (0, 0)


def test_the_budget_stops_a_retry_storm() -> None:
    budget = RetryBudget(0.2)
    requests = [RetryState(RetryPolicy(tries=3), budget, "GET", False) for _ in range(20)]
    decisions = [r.decide(0, Failure.TIMEOUT, False) for r in requests]
    assert [d.action for d in decisions].count(NEXT) == 4  # 20% of 20 in flight
    assert decisions[4].reason == "retry budget spent: 4 of 20 requests are retrying"
    assert repr(budget) == "<RetryBudget [4 of 20 requests retrying, limit 4]>"
    # A request that already holds a slot keeps retrying within its tries.
    assert requests[0].decide(1, Failure.TIMEOUT, False).action is NEXT
    assert budget.retrying == 4
    # Connect failures move on without the budget.
    assert requests[10].decide(1, Failure.CONNECT_REFUSED, False).action is NEXT
    for r in requests:
        r.finish()
    assert (budget.requests, budget.retrying) == (0, 0)


def test_repr() -> None:
    retry = state("PUT")
    retry.decide(1, Failure.RESET, False)
    assert repr(retry) == "<RetryState PUT sends=1 tried=0b10>"


def test_a_counted_state_leaves_the_request_count_to_its_caller() -> None:
    # The relay counts every request in budget.requests itself and creates a RetryState only
    # on a failure; such a state must not count the request a second time.
    budget = RetryBudget(0.2)
    budget.requests = 5
    state = RetryState(RetryPolicy(tries=3), budget, "GET", False, counted=True)
    assert budget.requests == 5
    assert state.decide(0, Failure.TIMEOUT, False).action is Action.NEXT_SERVER
    assert budget.retrying == 1
    state.finish()
    assert (budget.requests, budget.retrying) == (5, 0)
