"""Smooth weighted round-robin, nginx's algorithm (ngx_http_upstream_get_peer).

Pure and deterministic: each pick adds every server's weight to its running score, takes the
highest score and subtracts the total from it. Weights 5,1,1 give a a b a c a a, spreading the
heavy server's turns instead of bunching them (a a a a a b c).
"""

from __future__ import annotations


class SmoothWeightedRoundRobin:
    __slots__ = ("_current", "_total", "_weights")

    def __init__(self, weights: tuple[int, ...]) -> None:
        if not weights or any(w < 1 for w in weights):
            raise ValueError(f"weights must be positive, got {weights!r}")
        self._weights = weights
        self._current = [0] * len(weights)
        self._total = sum(weights)

    def pick(self) -> int:
        """The index of the next server."""
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
        return f"<SmoothWeightedRoundRobin weights={self._weights} current={self._current}>"
