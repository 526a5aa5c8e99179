"""A cheap resettable deadline for the hot path.

Moving a deadline is two attribute writes; the loop timer behind it is only rescheduled when it
fires early or must fire sooner. Re-arming a ``call_later`` on every request or read would cost
a heap push and a cancellation each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_callback", "_handle", "_handle_when", "_loop", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = 0.0
        self.when: float | None = None

    def set_in(self, seconds: float) -> None:
        when = self.when = self._loop.time() + seconds
        if self._handle is None or when < self._handle_when:
            self._arm(when)

    def set_at(self, when: float) -> None:
        """``set_in`` for a caller that already read the loop's clock (the same value all
        through a callback): one clock read less."""
        self.when = when
        if self._handle is None or when < self._handle_when:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_when = when
        self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        self.when = None

    def cancel(self) -> None:
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when is None:
            return
        if self._loop.time() < when:
            self._handle_when = when
            self._handle = self._loop.call_at(when, self._fire)
            return
        self.when = None
        self._callback()
