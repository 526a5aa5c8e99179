"""Rate limits as token buckets: the burst, the sustained rate, the wait a refused request is
told, per-minute and both limits together, and the per-key table's bound and eviction."""

from __future__ import annotations

import re

import pytest

from lbproxy.throttle import KeyedRateLimiter, RateLimiter, retry_after

P = None  # a request that passes


def run(limiter: RateLimiter, times: list[float]) -> list[float | None]:
    return [limiter.take(t) for t in times]


def approx(outcomes: list[float | None]) -> list[object]:
    return [o if o is None else pytest.approx(o) for o in outcomes]


@pytest.mark.parametrize(
    ("per_second", "per_minute", "times", "outcomes"),
    [
        # a burst of N at once, then the (N+1)th waits 1/N
        (3, None, [0, 0, 0, 0], [P, P, P, 1 / 3]),
        (1, None, [0, 0, 0.25, 0.999, 1], [P, 1, 0.75, 0.001, P]),
        # tokens come back one every 1/N seconds
        (2, None, [0, 0, 0, 0.5, 0.5, 1.0, 1.0, 1.5, 1.5], [P, P, 0.5, P, 0.5, P, 0.5, P, 0.5]),
        # a bucket never holds more than N: a long pause refills it to N, not more
        (2, None, [0, 100, 100, 100], [P, P, P, 0.5]),
        # a refused request takes nothing
        (1, None, [0, 0.1, 0.2, 0.3, 0.9, 1.0], [P, 0.9, 0.8, 0.7, 0.1, P]),
        # per minute: M at once, then one every 60/M seconds
        (None, 2, [0, 0, 0, 10, 29.5, 30, 30], [P, P, 30, 20, 0.5, P, 30]),
        (None, 60, [0] * 60 + [0, 1, 1], [P] * 60 + [1, P, 1]),
        # both: the second limit shapes the burst, the minute limit the total
        (2, 3, [0, 0, 0, 0.5, 1.0, 20, 20], [P, P, 0.5, P, 19, P, 20]),
        (2, 3, [0, 0, 0.5, 0.5], [P, P, P, 19.5]),  # the minute bucket alone refuses
    ],
)
def test_sequences(
    per_second: int | None, per_minute: int | None, times: list[float], outcomes: list[float | None]
) -> None:
    assert run(RateLimiter(per_second, per_minute), times) == approx(outcomes)


@pytest.mark.parametrize("per_second", [1, 3, 5, 10, 100])
def test_exactly_n_pass_per_second_under_a_flood(per_second: int) -> None:
    limiter = RateLimiter(per_second, None)
    passed = [0] * 10
    for i in range(10 * 1000):  # a request every millisecond for ten seconds
        now = i / 1000
        if limiter.take(now) is None:
            passed[int(now)] += 1
    # The first second has the full bucket on top of the refill.
    assert passed == [2 * per_second - 1] + [per_second] * 9


def test_exactly_m_pass_per_minute_under_a_flood() -> None:
    limiter = RateLimiter(None, 30)
    passed = [0] * 5
    for i in range(5 * 600):  # ten requests a second for five minutes
        now = i / 10
        if limiter.take(now) is None:
            passed[int(now // 60)] += 1
    assert passed == [30 + 29, 30, 30, 30, 30]


def test_both_limits_under_a_flood() -> None:
    limiter = RateLimiter(10, 120)  # 10 a second, 2 a second sustained over a minute
    passed = [0] * 120
    for i in range(120 * 100):
        now = i / 100
        if limiter.take(now) is None:
            passed[int(now)] += 1
    # The second bucket paces the start while the minute bucket (120, +2 a second) drains: it
    # runs dry when 10 + 10t = 120 + 2t, at t = 13.75 s, and from then on sets the pace.
    assert passed[0] == 19
    assert passed[1:13] == [10] * 12
    assert passed[13] == 8
    assert passed[14:] == [2] * 106
    assert sum(passed[:60]) == 120 + 2 * 60 - 1  # the token refilled at 60.0 is taken at 60.0


def test_refill_steps_that_are_not_exact_in_binary() -> None:
    limiter = RateLimiter(10, None)
    assert run(limiter, [0.0] * 10) == [P] * 10
    for k in range(1, 50):
        now = k * 0.1
        assert limiter.take(now) is None, now
        assert limiter.take(now) == pytest.approx(0.1), now


@pytest.mark.parametrize(
    ("wait", "seconds"),
    [
        (1e-6, 1),
        (0.5, 1),
        (1.0, 1),
        (1.0 + 1e-12, 1),  # float noise is not a second
        (1.2, 2),
        (19.5, 20),
        (30.0, 30),
        (59.9999, 60),
    ],
)
def test_retry_after(wait: float, seconds: int) -> None:
    assert retry_after(wait) == seconds


def test_retry_after_of_a_refused_request() -> None:
    limiter = RateLimiter(5, 100)
    assert run(limiter, [0.0] * 5) == [P] * 5
    wait = limiter.take(0.0)
    assert wait == pytest.approx(0.2)
    assert wait is not None
    assert retry_after(wait) == 1


@pytest.mark.parametrize(
    ("per_second", "per_minute", "takes", "now", "available"),
    [
        (5, None, 0, 0, 5),
        (5, None, 2, 0, 3),
        (5, None, 5, 0, 0),
        (5, None, 2, 0.2, 4),
        (5, None, 5, 0.39, 1),
        (5, None, 5, 10, 5),
        (None, 3, 3, 0, 0),
        (None, 3, 3, 20, 1),
        (5, 3, 0, 0, 3),
        (5, 3, 2, 0, 1),
        (5, 3, 3, 40, 2),
    ],
)
def test_available(
    per_second: int | None, per_minute: int | None, takes: int, now: float, available: int
) -> None:
    limiter = RateLimiter(per_second, per_minute)
    assert run(limiter, [0.0] * takes) == [P] * takes
    assert limiter.available(now) == available
    assert run(limiter, [now] * (available + 1))[-1] is not None


def test_is_idle_once_every_bucket_is_full_again() -> None:
    limiter = RateLimiter(2, 6)
    assert limiter.is_idle(0)
    limiter.take(0)
    assert not limiter.is_idle(0.5)
    assert not limiter.is_idle(9.9)
    assert limiter.is_idle(10)  # the minute bucket, one token every 10 s, is the slower


@pytest.mark.parametrize(
    ("per_second", "per_minute", "message"),
    [
        (None, None, "a rate limit needs per_second, per_minute or both"),
        (0, None, "per_second must be a positive integer or None, not 0"),
        (None, -1, "per_minute must be a positive integer or None, not -1"),
        (True, None, "per_second must be a positive integer or None, not True"),
        (1, 0, "per_minute must be a positive integer or None, not 0"),
    ],
)
def test_limits_must_be_positive(
    per_second: int | None, per_minute: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RateLimiter(per_second, per_minute)
    with pytest.raises(ValueError, match=re.escape(message)):
        KeyedRateLimiter(per_second, per_minute)


@pytest.mark.parametrize(
    ("limiter", "text"),
    [
        (RateLimiter(5, 100), "<RateLimiter 5/s, 100/min>"),
        (RateLimiter(5, None), "<RateLimiter 5/s>"),
        (RateLimiter(None, 100), "<RateLimiter 100/min>"),
        (KeyedRateLimiter(1, None, max_keys=4), "<KeyedRateLimiter 1/s [0/4 keys]>"),
    ],
)
def test_repr(limiter: object, text: str) -> None:
    assert repr(limiter) == text


# --- per key -------------------------------------------------------------------------------------


def test_keys_have_their_own_buckets() -> None:
    limiter = KeyedRateLimiter(2, None)
    assert [limiter.take("a", 0) for _ in range(3)] == [P, P, pytest.approx(0.5)]
    assert [limiter.take("b", 0) for _ in range(3)] == [P, P, pytest.approx(0.5)]
    assert limiter.take("a", 0.5) is None
    assert limiter.take("b", 0.25) == pytest.approx(0.25)
    assert repr(limiter) == "<KeyedRateLimiter 2/s [2/10000 keys]>"


def test_a_full_table_drops_idle_keys_first() -> None:
    limiter = KeyedRateLimiter(1, None, max_keys=4)
    for key in "abc":
        assert limiter.take(key, 0) is None
    assert limiter.take("d", 0.9) is None
    assert len(limiter) == 4
    # At 1.5 a, b and c are full again; d, taken at 0.9, is not.
    assert limiter.take("e", 1.5) is None
    assert len(limiter) == 2
    assert "d" in limiter
    assert "a" not in limiter
    # Dropping the idle keys changed no answer: d is still limited, a is as new.
    assert limiter.take("d", 1.5) == pytest.approx(0.4)
    assert limiter.take("a", 1.5) is None


def test_a_full_table_of_busy_keys_drops_those_nearest_full() -> None:
    limiter = KeyedRateLimiter(1, None, max_keys=8)
    keys = [f"k{i}" for i in range(8)]
    for i, key in enumerate(keys):
        assert limiter.take(key, i / 10) is None  # k0 is full again first, at 1.0
    assert limiter.take("new", 0.75) is None
    assert len(limiter) == 8
    assert "k0" not in limiter
    assert all(key in limiter for key in keys[1:])
    # the dropped key starts again with a full bucket, and its return drops the next one
    assert limiter.take("k0", 0.75) is None
    assert "k1" not in limiter
    assert limiter.take("k7", 0.75) == pytest.approx(0.95)


def test_the_table_stays_bounded_and_sweeps_an_eighth_at_a_time() -> None:
    limiter = KeyedRateLimiter(1, None, max_keys=16)
    sizes = []
    for i in range(40):
        limiter.take(f"k{i}", 0)
        sizes.append(len(limiter))
    assert max(sizes) == 16
    assert sizes[:16] == list(range(1, 17))
    # full at 16: the 17th key drops two, and the table refills for two keys before the next
    assert sizes[16:22] == [15, 16, 15, 16, 15, 16]


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        KeyedRateLimiter(1, None, max_keys=0)
    limiter = KeyedRateLimiter(1, None, max_keys=1)
    assert limiter.take("a", 0) is None
    assert limiter.take("b", 0) is None
    assert len(limiter) == 1
    assert "b" in limiter
