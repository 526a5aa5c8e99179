"""Smooth weighted round-robin, nginx's algorithm (ngx_http_upstream_get_peer).

Pure and deterministic: each pick adds every server's weight to its running score, takes the
highest score and subtracts the total from it. Weights 5,1,1 give a a b a c a a, spreading the
heavy server's turns instead of bunching them (a a a a a b c).
"""

from __future__ import annotations


class SmoothWeightedRoundRobin:
    __slots__ = ("_current", "_cycle", "_next", "_total", "_weights")

    # The sequence repeats every sum(weights) picks; up to this length it is computed once and
    # replayed, which makes a pick an index step instead of a loop over the servers.
    MAX_CYCLE = 4096

    def __init__(self, weights: tuple[int, ...]) -> None:
        if not weights or any(w < 1 for w in weights):
            raise ValueError(f"weights must be positive, got {weights!r}")
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
        current = self._current
        weights = self._weights
        if len(weights) == 1:
            return 0
        best = 0
        for i, weight in enumerate(weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best

    def __repr__(self) -> str:
        if self._cycle:
            return (
                f"<SmoothWeightedRoundRobin weights={self._weights} at={self._next}/{self._total}>"
            )
        return f"<SmoothWeightedRoundRobin weights={self._weights} current={self._current}>"
