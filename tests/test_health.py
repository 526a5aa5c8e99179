"""Health state: rise/fall counting, passive ejection and half-open, an active check ending an
ejection early, the reasons logged with each transition, and the jittered check schedule."""

from __future__ import annotations

import errno
import random

import pytest

from lbproxy.config import HealthCheck, Passive
from lbproxy.health import (
    CHECK_HISTORY,
    JITTER,
    ActiveState,
    CheckRecord,
    CheckResult,
    Event,
    HealthBoard,
    Transition,
    describe_error,
    first_check_at,
    judge_status,
    next_check_at,
)
from lbproxy.hosts import Availability, Host, HostTable

PASS = CheckResult(True, "status 200")
FAIL = CheckResult(False, "status 500")


PASSIVE = Passive()
CHECK = HealthCheck()


def board(
    passive: Passive = PASSIVE, check: HealthCheck | None = CHECK, slow_start: float = 0
) -> HealthBoard:
    hosts = [Host("a:80", 1), Host("b:80", 1), Host("c:80", 1, backup=True)]
    return HealthBoard(HostTable(hosts, slow_start), passive, check)


def lines(transitions: tuple[Transition, ...]) -> list[str]:
    return [str(t) for t in transitions]


# --- rise and fall -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rise", "fall", "results", "states"),
    [
        (2, 3, "FFF", "UUD"),
        (2, 3, "FFPFFF", "UUUUUD"),  # a pass in between resets the count
        (2, 3, "FFFPP", "UUDDU"),
        (2, 3, "FFFPFPP", "UUDDDDU"),  # a failure in between resets the rise count
        (1, 1, "FPFP", "DUDU"),
        (3, 1, "FPPP", "DDDU"),
        (2, 2, "PPPP", "UUUU"),  # a server starts up
    ],
)
def test_rise_and_fall(rise: int, fall: int, results: str, states: str) -> None:
    state = ActiveState(rise, fall)
    seen = ""
    for result in results:
        state.record(result == "P")
        seen += "U" if state.is_up else "D"
    assert seen == states


def test_a_server_goes_down_after_fall_checks_and_up_after_rise() -> None:
    health = board(check=HealthCheck(rise=2, fall=3))
    table = health.table
    assert health.record_check(0, FAIL, 1.0) == ()
    assert health.record_check(0, FAIL, 2.0) == ()
    (down,) = health.record_check(0, CheckResult(False, "timeout"), 3.0)
    assert down == Transition(
        0, "a:80", Event.DOWN, "3 check(s) failed in a row; last: timeout", 3.0
    )
    assert str(down) == "a:80 down: 3 check(s) failed in a row; last: timeout"
    assert table.hosts[0].checked_down and table.down == 1
    assert health.phase(0, 3.0) == "down"
    assert health.record_check(0, PASS, 4.0) == ()
    assert lines(health.record_check(0, PASS, 5.0)) == [
        "a:80 up: 2 check(s) passed in a row; last: status 200"
    ]
    assert not table.hosts[0].checked_down and table.down == 0
    assert health.phase(0, 5.0) == "up"


def test_every_primary_down_hands_over_to_the_backup_then_fails_open() -> None:
    health = board(check=HealthCheck(rise=1, fall=1))
    health.record_check(0, FAIL, 1.0)
    health.record_check(1, FAIL, 1.0)
    assert health.table.availability(1.0) is Availability.BACKUP
    health.record_check(2, CheckResult(False, "connection refused"), 1.0)
    assert health.table.availability(1.0) is Availability.FAIL_OPEN


def test_a_recovered_server_ramps_from_the_check_that_released_it() -> None:
    health = board(check=HealthCheck(rise=1, fall=1), slow_start=30.0)
    health.record_check(1, FAIL, 10.0)
    health.record_check(1, PASS, 20.0)
    assert (health.table.hosts[1].ramp_from, health.table.settled_at) == (20.0, 50.0)


def test_checks_need_a_health_check() -> None:
    with pytest.raises(
        ValueError, match=r"^this listener has no health_check; nothing records checks$"
    ):
        board(check=None).record_check(0, PASS, 0.0)


# --- passive health ------------------------------------------------------------------------------


def test_consecutive_failures_eject_then_half_open_then_recover() -> None:
    health = board(Passive(max_fails=3, fail_timeout=10.0))
    table = health.table
    assert health.record_failure(0, "connection refused", 1.0) == ()
    assert health.record_failure(0, "connection refused", 1.5) == ()
    (ejected,) = health.record_failure(0, "connection reset", 2.0)
    assert (
        str(ejected) == "a:80 ejected: 3 failure(s) in a row; last: connection reset; out for 10 s"
    )
    assert (ejected.event, ejected.at, table.hosts[0].ejected_until) == (Event.EJECTED, 2.0, 12.0)
    assert not table.hosts[0].is_available(11.9)
    assert health.phase(0, 11.9) == "ejected"
    # Results of requests sent before the ejection neither extend nor end it.
    assert health.record_failure(0, "timeout", 5.0) == ()
    assert health.record_success(0, 6.0) == ()
    assert table.hosts[0].ejected_until == 12.0
    assert health.poll(11.9) == ()
    assert health.phase(0, 12.0) == "half_open"
    assert lines(health.poll(12.0)) == ["a:80 half-open: the 10 s ejection ended; trying it again"]
    assert health.poll(13.0) == ()
    assert table.hosts[0].is_available(12.0)
    assert lines(health.record_success(0, 13.0)) == ["a:80 recovered: a request succeeded"]
    assert health.phase(0, 13.0) == "up"
    assert health.record_failure(0, "timeout", 14.0) == ()  # counting starts again from 0


def test_a_half_open_server_is_ejected_again_by_one_failure() -> None:
    health = board(Passive(max_fails=2, fail_timeout=5.0))
    health.record_failure(1, "timeout", 0.0)
    health.record_failure(1, "timeout", 0.0)
    # No poll ran: the failure itself finds the ejection over, and says both.
    assert lines(health.record_failure(1, "connection refused", 7.0)) == [
        "b:80 half-open: the 5 s ejection ended; trying it again",
        "b:80 ejected: failed again after an ejection: connection refused; out for 5 s",
    ]
    assert health.table.hosts[1].ejected_until == 12.0


def test_a_success_without_a_poll_reports_both_steps() -> None:
    health = board(Passive(max_fails=1, fail_timeout=5.0))
    health.record_failure(1, "timeout", 0.0)
    assert [t.event for t in health.record_success(1, 6.0)] == [Event.HALF_OPEN, Event.RECOVERED]


@pytest.mark.parametrize(
    ("results", "ejected"),
    [
        ("FFF", True),
        ("FFSFF", False),  # a success resets the count
        ("FFSFFF", True),
        ("SSSS", False),
    ],
)
def test_only_consecutive_failures_count(results: str, ejected: bool) -> None:
    health = board(Passive(max_fails=3))
    for result in results:
        if result == "F":
            health.record_failure(0, "connection reset", 1.0)
        else:
            health.record_success(0, 1.0)
    assert health.table.hosts[0].is_available(1.0) is not ejected


def test_max_fails_zero_turns_passive_health_off() -> None:
    health = board(Passive(max_fails=0))
    for _ in range(100):
        assert health.record_failure(0, "connection refused", 1.0) == ()
    assert health.table.hosts[0].is_available(1.0)


def test_an_active_check_passing_ends_an_ejection_early() -> None:
    health = board(Passive(max_fails=1, fail_timeout=30.0), HealthCheck(rise=2, fall=3))
    health.record_failure(0, "connection reset", 10.0)
    assert lines(health.record_check(0, PASS, 15.0)) == [
        "a:80 half-open: active check passed (status 200); ejection ended early"
    ]
    assert health.table.hosts[0].ejected_until == 15.0
    assert health.table.is_settled(15.0)
    assert health.record_check(0, PASS, 16.0) == ()


def test_a_check_that_does_not_bring_the_server_up_leaves_the_ejection() -> None:
    health = board(Passive(max_fails=1, fail_timeout=30.0), HealthCheck(rise=2, fall=1))
    health.record_check(0, FAIL, 1.0)
    health.record_failure(0, "connection refused", 2.0)
    assert health.record_check(0, PASS, 3.0) == ()  # one pass of rise = 2
    assert health.table.hosts[0].ejected_until == 32.0
    assert lines(health.record_check(0, PASS, 4.0)) == [
        "a:80 up: 2 check(s) passed in a row; last: status 200",
        "a:80 half-open: active check passed (status 200); ejection ended early",
    ]


@pytest.mark.parametrize(
    ("status", "counts"), [(502, True), (503, True), (500, False), (200, False)]
)
def test_fail_statuses(status: int, counts: bool) -> None:
    assert board(Passive(fail_statuses=(502, 503, 504))).is_failure_status(status) is counts


# --- verdicts and reasons ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "status", "result"),
    [
        (HealthCheck().expect, 200, CheckResult(True, "status 200")),
        (HealthCheck().expect, 302, CheckResult(True, "status 302")),
        (HealthCheck().expect, 500, CheckResult(False, "status 500")),
        (((204, 204),), 200, CheckResult(False, "status 200")),
    ],
)
def test_judge_status(
    expect: tuple[tuple[int, int], ...], status: int, result: CheckResult
) -> None:
    assert judge_status(HealthCheck(expect=expect), status) == result


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
        (ConnectionRefusedError(), "connection refused"),
        (ConnectionResetError(), "connection reset"),
        (TimeoutError(), "timeout"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host unreachable"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
        (OSError(errno.EPIPE, "Broken pipe"), "broken pipe"),
        (EOFError(), "EOFError"),
        (ValueError("bad status line"), "ValueError: bad status line"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v,
)
def test_describe_error(error: BaseException, reason: str) -> None:
    assert describe_error(error) == reason


# --- schedule ------------------------------------------------------------------------------------


def test_next_checks_are_jittered_within_bounds_and_reproducible() -> None:
    times = [next_check_at(100.0, 5.0, random.Random(seed)) for seed in range(200)]
    assert all(100.0 + 5.0 * (1 - JITTER) <= t <= 100.0 + 5.0 * (1 + JITTER) for t in times)
    assert len(set(times)) == 200
    # Spread over the whole window, not bunched at one side.
    assert min(times) < 104.6 and max(times) > 105.4
    assert next_check_at(100.0, 5.0, random.Random(7)) == times[7]


def test_a_jitter_of_zero_keeps_the_interval() -> None:
    assert next_check_at(10.0, 2.0, random.Random(1), jitter=0.0) == 12.0


def test_first_checks_spread_over_one_interval() -> None:
    rng = random.Random(3)
    firsts = [first_check_at(50.0, 10.0, rng) for _ in range(100)]
    assert all(50.0 <= t <= 60.0 for t in firsts)
    assert min(firsts) < 52.0 and max(firsts) > 58.0


def test_repr_shows_the_table() -> None:
    health = board()
    health.record_failure(0, "timeout", 0.0)
    assert repr(health) == "<HealthBoard <HostTable [a:80 w1, b:80 w1, c:80 w1 backup]>>"


def test_troubled_says_when_successes_must_be_recorded() -> None:
    # The relay records a success only while `troubled`: it must be set by any failure and
    # cleared once every server is back to no failures counted.
    b = board(passive=Passive(max_fails=2, fail_timeout=5.0))
    assert not b.troubled
    b.record_failure(0, "connection refused", now=0.0)
    assert b.troubled
    b.record_success(0, now=1.0)
    assert not b.troubled
    b.record_failure(0, "timeout", now=2.0)
    b.record_failure(0, "timeout", now=2.0)  # ejected until 7
    b.record_success(1, now=3.0)
    assert b.troubled  # host 0 is still out
    b.record_success(0, now=8.0)  # half-open, then recovered
    assert not b.troubled


# --- what status pages read ----------------------------------------------------------------------


def test_the_board_keeps_the_last_check_results_of_each_server() -> None:
    health = board()
    for second in range(CHECK_HISTORY + 2):
        health.record_check(0, PASS if second % 2 else FAIL, float(second))
    health.record_check(1, CheckResult(False, "timeout"), 9.0)
    assert health.checks(0) == tuple(
        CheckRecord(float(s), bool(s % 2), "status 200" if s % 2 else "status 500")
        for s in range(2, CHECK_HISTORY + 2)
    )
    assert health.checks(1) == (CheckRecord(9.0, False, "timeout"),)
    assert health.checks(2) == ()


def test_the_board_keeps_each_server_s_last_transition() -> None:
    health = board(passive=Passive(max_fails=1, fail_timeout=10.0), check=HealthCheck(fall=1))
    assert health.last_transition(0) is None
    health.record_failure(0, "connection reset", 1.0)
    ejected = health.last_transition(0)
    assert ejected is not None and ejected.event is Event.EJECTED
    assert ejected.reason == "1 failure(s) in a row; last: connection reset; out for 10 s"
    health.record_check(0, FAIL, 2.0)
    assert health.last_transition(0) == Transition(
        0, "a:80", Event.DOWN, "1 check(s) failed in a row; last: status 500", 2.0
    )
    assert health.last_transition(1) is None


def test_why_a_server_is_down_is_the_transition_that_took_it_down() -> None:
    health = board(passive=Passive(max_fails=1, fail_timeout=10.0), check=HealthCheck(fall=1))
    health.record_failure(0, "connection refused", 1.0)
    health.record_check(0, CheckResult(False, "connection refused"), 2.0)
    down = Transition(
        0, "a:80", Event.DOWN, "1 check(s) failed in a row; last: connection refused", 2.0
    )
    assert health.why(0) == down
    # The ejection runs out while the checks still hold the server down: the latest transition
    # says "trying it again", which is not why the server is out.
    (lapsed,) = health.poll(12.0)
    assert lapsed.event is Event.HALF_OPEN and health.last_transition(0) == lapsed
    assert health.phase(0, 12.0) == "down" and health.why(0) == down
    health.record_check(0, PASS, 13.0)
    health.record_check(0, PASS, 14.0)
    up = health.why(0)
    assert up is not None and up.event is Event.UP and up == health.last_transition(0)
    assert health.why(1) is None
