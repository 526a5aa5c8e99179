"""Smooth weighted round-robin: nginx's exact sequences, proportions, and refused weights."""

from __future__ import annotations

from collections import Counter

import pytest

from lbproxy.balancer import SmoothWeightedRoundRobin

NAMES = "abcdefgh"


def picks(weights: tuple[int, ...], count: int) -> str:
    balancer = SmoothWeightedRoundRobin(weights)
    return "".join(NAMES[balancer.pick()] for _ in range(count))


@pytest.mark.parametrize(
    ("weights", "sequence"),
    [
        ((5, 1, 1), "aabacaa"),
        ((3, 2, 1), "abacba"),
        ((1, 1, 1), "abc"),
        ((2, 2), "ab"),
        ((2, 1), "aba"),
        ((1, 2), "bab"),
        ((1, 1, 3), "cacbc"),
        ((1,), "a"),
        ((7,), "a"),
    ],
)
def test_nginx_sequence(weights: tuple[int, ...], sequence: str) -> None:
    assert picks(weights, 3 * len(sequence)) == 3 * sequence


@pytest.mark.parametrize("weights", [(1, 1), (1, 1, 1, 1), (4, 4, 4), (1000,) * 5])
def test_equal_weights_take_turns(weights: tuple[int, ...]) -> None:
    assert picks(weights, 4 * len(weights)) == 4 * NAMES[: len(weights)]


@pytest.mark.parametrize(
    "weights", [(5, 1, 1), (3, 2, 1), (7, 3, 1), (100, 1), (1, 10, 100, 1000), (2, 3, 5, 7, 11)]
)
def test_proportions_match_weights(weights: tuple[int, ...]) -> None:
    rounds = 10
    counts = Counter(picks(weights, rounds * sum(weights)))
    assert [counts[NAMES[i]] for i in range(len(weights))] == [rounds * w for w in weights]


@pytest.mark.parametrize(
    "weights", [(), (0,), (1, 0), (3, -1), (-5,)], ids=["empty", "zero", "one-zero", "neg", "-5"]
)
def test_invalid_weights_raise(weights: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"^weights must be positive, got "):
        SmoothWeightedRoundRobin(weights)


def test_balancers_do_not_share_state() -> None:
    first, second = SmoothWeightedRoundRobin((5, 1, 1)), SmoothWeightedRoundRobin((5, 1, 1))
    assert [first.pick() for _ in range(3)] == [0, 0, 1]
    assert [second.pick() for _ in range(3)] == [0, 0, 1]


def test_repr_shows_weights_and_position_in_the_cycle() -> None:
    balancer = SmoothWeightedRoundRobin((5, 1, 1))
    assert repr(balancer) == "<SmoothWeightedRoundRobin weights=(5, 1, 1) at=0/7>"
    balancer.pick()
    assert repr(balancer) == "<SmoothWeightedRoundRobin weights=(5, 1, 1) at=1/7>"


def test_a_cycle_too_long_to_precompute_gives_the_same_sequence() -> None:
    weights = (3000, 1000, 1)  # 4001 picks a cycle: precomputed
    big = (3000, 2000, 1)  # 5001: computed pick by pick
    cached, live = SmoothWeightedRoundRobin(weights), SmoothWeightedRoundRobin(big)
    assert "at=0/4001" in repr(cached) and "current=[0, 0, 0]" in repr(live)
    reference = SmoothWeightedRoundRobin(weights)
    reference._cycle = ()  # force the step-by-step path on the same weights
    assert [cached.pick() for _ in range(9000)] == [reference.pick() for _ in range(9000)]
    assert [live.pick() for _ in range(6)] == [0, 1, 0, 1, 0, 0]
    assert "current=" in repr(live) and "[0, 0, 0]" not in repr(live)
