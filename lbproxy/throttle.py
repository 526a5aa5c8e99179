"""Request rate limits per API and per app, answered with 429 and ``Retry-After``. Pure.

Theory of operation. A limit of ``per_second = N`` is a token bucket that holds at most N
tokens and refills at N tokens a second; ``per_minute = M`` is one that holds at most M and
refills at M a minute (one token every 60/M seconds). A limiter has one bucket per limit given,
starts full, and a request passes only if every bucket has a whole token, taking one from each;
a refused request takes nothing. So, exactly:

- a burst passes up to N requests at once (and at most M, counted with what the minute bucket
  still holds), and under a steady flood exactly N pass per second (and M per minute);
- over any span of T seconds at most N + N*T requests pass (M + M*T/60 for the minute limit);
- a refused request is told how long until every bucket has a token again, ``retry_after``
  rounds that up to the whole seconds of the ``Retry-After`` header.

The bucket is kept as the time it will be full again, which is "generic cell rate" form: a take
is a comparison and an addition per bucket. A bucket that is full is the same as a new one, so a
``KeyedRateLimiter`` can drop its idle keys without changing any answer.

Limits are per process. With several workers (``SO_REUSEPORT``) each worker keeps its own
buckets, and the kernel spreads connections between them, so the effective limit of the gateway
is up to workers x limit; set the limit divided by the worker count for a gateway-wide figure.
"""

from __future__ import annotations

import heapq
import math

# Timestamps closer than this count as equal, so that ten takes a tenth of a second apart
# refill exactly one token despite binary floating point.
EPSILON = 1e-9

MAX_KEYS = 10_000


def retry_after(wait: float) -> int:
    """The ``Retry-After`` value for a wait of ``wait`` seconds: rounded up, at least 1."""
    return max(1, math.ceil(wait - EPSILON))


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, not {value!r}")


class RateLimiter:
    """Token buckets for ``per_second`` and/or ``per_minute`` requests. Not thread-safe: one per
    event loop."""

    __slots__ = (
        "_minute_full_at",
        "_minute_interval",
        "_minute_tolerance",
        "_second_full_at",
        "_second_interval",
        "_second_tolerance",
        "per_minute",
        "per_second",
    )

    def __init__(self, per_second: int | None, per_minute: int | None) -> None:
        _check_limit("per_second", per_second)
        _check_limit("per_minute", per_minute)
        if per_second is None and per_minute is None:
            raise ValueError("a rate limit needs per_second, per_minute or both")
        self.per_second = per_second
        self.per_minute = per_minute
        # A bucket of capacity C refilling one token per `interval` is full at `full_at`, and
        # has a token at `now` when full_at - now <= tolerance = (C - 1) * interval. A missing
        # limit is a bucket that is always full.
        self._second_interval = 1 / per_second if per_second else 0.0
        self._second_tolerance = (per_second - 1) * self._second_interval if per_second else 0.0
        self._minute_interval = 60 / per_minute if per_minute else 0.0
        self._minute_tolerance = (per_minute - 1) * self._minute_interval if per_minute else 0.0
        self._second_full_at = -math.inf
        self._minute_full_at = -math.inf

    def take(self, now: float) -> float | None:
        """Take a token from every bucket at time ``now`` (seconds, monotonic): None if the
        request passes, else the seconds until one would pass (see ``retry_after``)."""
        second_full_at = max(self._second_full_at, now)
        minute_full_at = max(self._minute_full_at, now)
        second_wait = second_full_at - self._second_tolerance - now
        minute_wait = minute_full_at - self._minute_tolerance - now
        if second_wait > EPSILON or minute_wait > EPSILON:
            return max(second_wait, minute_wait)
        self._second_full_at = second_full_at + self._second_interval
        self._minute_full_at = minute_full_at + self._minute_interval
        return None

    def full_at(self) -> float:
        """The time from which every bucket is full again (-inf if none was ever taken from)."""
        return max(self._second_full_at, self._minute_full_at)

    def is_idle(self, now: float) -> bool:
        """True when every bucket is full at ``now``: the limiter is as good as a new one."""
        return self.full_at() <= now + EPSILON

    def available(self, now: float) -> int:
        """How many requests would pass at ``now`` if they came all at once."""
        counts = []
        for interval, tolerance, full_at in (
            (self._second_interval, self._second_tolerance, self._second_full_at),
            (self._minute_interval, self._minute_tolerance, self._minute_full_at),
        ):
            if interval:
                headroom = tolerance - max(full_at - now, 0.0)
                counts.append(max(0, math.floor(headroom / interval + EPSILON) + 1))
        return min(counts)

    def describe(self) -> str:
        parts = []
        if self.per_second is not None:
            parts.append(f"{self.per_second}/s")
        if self.per_minute is not None:
            parts.append(f"{self.per_minute}/min")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"<RateLimiter {self.describe()}>"


def _full_at_of_item(item: tuple[str, RateLimiter]) -> float:
    return item[1].full_at()


class KeyedRateLimiter:
    """The same limit kept separately for each key (an app's name), for at most ``max_keys``
    keys at a time.

    A new key that finds the table full first drops every idle key, which changes no answer
    (an idle limiter is a new one). Only if fewer than an eighth of the keys were idle are the
    keys whose buckets are nearest to full dropped as well, down to seven eighths of
    ``max_keys``: those start again with full buckets, a small gift to the least busy. Sweeping
    at most once every ``max_keys / 8`` new keys keeps a take cheap.
    """

    __slots__ = ("_limiters", "max_keys", "per_minute", "per_second")

    def __init__(
        self, per_second: int | None, per_minute: int | None, *, max_keys: int = MAX_KEYS
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        RateLimiter(per_second, per_minute)  # the same validation, once
        self.per_second = per_second
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._limiters: dict[str, RateLimiter] = {}

    def take(self, key: str, now: float) -> float | None:
        """``RateLimiter.take`` on the limiter of ``key``."""
        limiter = self._limiters.get(key)
        if limiter is None:
            if len(self._limiters) >= self.max_keys:
                self._make_room(now)
            limiter = RateLimiter(self.per_second, self.per_minute)
            self._limiters[key] = limiter
        return limiter.take(now)

    def _make_room(self, now: float) -> None:
        limiters = self._limiters
        for key in [k for k, limiter in limiters.items() if limiter.is_idle(now)]:
            del limiters[key]
        excess = len(limiters) - (self.max_keys - max(1, self.max_keys // 8))
        if excess > 0:
            nearest_full = heapq.nsmallest(excess, limiters.items(), key=_full_at_of_item)
            for key, _ in nearest_full:
                del limiters[key]

    def __len__(self) -> int:
        return len(self._limiters)

    def __contains__(self, key: object) -> bool:
        return key in self._limiters

    def __repr__(self) -> str:
        limit = RateLimiter(self.per_second, self.per_minute).describe()
        return f"<KeyedRateLimiter {limit} [{len(self._limiters)}/{self.max_keys} keys]>"
