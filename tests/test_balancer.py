"""Balancing: nginx's exact smooth WRR sequences and proportions, then the host table's tiers
(weight 0, backups, fail open), slow start, ejections, retries' exclusions and least_conn."""

from __future__ import annotations

from collections import Counter

import pytest

from lbproxy.balancer import (
    LeastConnections,
    Scheduler,
    SmoothWeightedRoundRobin,
    WeightedRoundRobin,
    make_scheduler,
)
from lbproxy.config import Listener, ServerRef
from lbproxy.hosts import Availability, Host, HostTable

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
    "weights", [(), (0,), (0, 0), (3, -1), (-5,)], ids=["empty", "zero", "zeros", "neg", "-5"]
)
def test_invalid_weights_raise(weights: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"^weights must be 0 or more with one above 0, got "):
        SmoothWeightedRoundRobin(weights)


@pytest.mark.parametrize(
    ("weights", "sequence"),
    [((5, 0, 1), "aaacaa"), ((0, 2, 1), "bcb"), ((1, 0), "a"), ((0, 0, 3), "c")],
)
def test_weight_zero_is_never_picked(weights: tuple[int, ...], sequence: str) -> None:
    assert picks(weights, 3 * len(sequence)) == 3 * sequence


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


# --- over a host table ---------------------------------------------------------------------------


def make_table(weights: tuple[int, ...], backups: str = "", slow_start: float = 0.0) -> HostTable:
    hosts = [Host(NAMES[i], w, NAMES[i] in backups) for i, w in enumerate(weights)]
    return HostTable(hosts, slow_start)


def run(scheduler: Scheduler, count: int, now: float = 0.0, tried: int = 0) -> str:
    out = []
    for _ in range(count):
        index = scheduler.pick(now, tried)
        out.append("-" if index is None else NAMES[index])
    return "".join(out)


def shares(scheduler: Scheduler, count: int, now: float) -> list[int]:
    counts = Counter(run(scheduler, count, now))
    return [counts[name] for name in NAMES[: len(scheduler._table.hosts)]]  # type: ignore[attr-defined]


NGINX_SEQUENCES = [
    ((5, 1, 1), "aabacaa"),
    ((3, 2, 1), "abacba"),
    ((1, 1, 1), "abc"),
    ((2, 1), "aba"),
    ((1, 1, 3), "cacbc"),
    ((7,), "a"),
]


@pytest.mark.parametrize(("weights", "sequence"), NGINX_SEQUENCES)
def test_settled_table_replays_the_nginx_sequence(weights: tuple[int, ...], sequence: str) -> None:
    assert run(WeightedRoundRobin(make_table(weights)), 3 * len(sequence)) == 3 * sequence


@pytest.mark.parametrize(("weights", "sequence"), NGINX_SEQUENCES)
def test_the_slow_path_gives_the_same_sequence(weights: tuple[int, ...], sequence: str) -> None:
    # An extra host, excluded as if already tried, sends every pick down the step-by-step path
    # over exactly the hosts of the vector.
    extra = 1 << len(weights)
    scheduler = WeightedRoundRobin(make_table((*weights, 1)))
    assert run(scheduler, 3 * len(sequence), tried=extra) == 3 * sequence


def test_wrr_5_1_1_over_7000_picks() -> None:
    scheduler = WeightedRoundRobin(make_table((5, 1, 1)))
    sequence = run(scheduler, 7000)
    assert sequence[:14] == "aabacaa" * 2
    assert Counter(sequence) == {"a": 5000, "b": 1000, "c": 1000}


@pytest.mark.parametrize(
    ("weights", "ejected", "now", "sequence"),
    [
        ((5, 1, 1), 0, 1.0, "bc"),
        ((5, 1, 1), 1, 1.0, "aaacaa"),
        ((3, 2, 1), 1, 1.0, "aaca"),
        ((5, 1, 1), 0, 10.0, "aabacaa"),  # the ejection ended at 10.0
    ],
)
def test_an_ejected_host_is_skipped_until_its_time(
    weights: tuple[int, ...], ejected: int, now: float, sequence: str
) -> None:
    table = make_table(weights)
    table.eject(ejected, until=10.0)
    assert run(WeightedRoundRobin(table), 2 * len(sequence), now) == 2 * sequence


def test_the_slow_path_matches_nginx_on_the_remaining_hosts() -> None:
    table = make_table((5, 1, 1))
    table.set_checked_down(2, True, 0.0)
    assert run(WeightedRoundRobin(table), 12) == picks((5, 1), 12)


def test_weight_zero_drains_on_both_paths() -> None:
    table = make_table((5, 0, 1))
    scheduler = WeightedRoundRobin(table)
    assert run(scheduler, 12) == "aaacaa" * 2
    table.set_checked_down(0, True, 0.0)
    assert run(scheduler, 4) == "cccc"
    table.set_checked_down(2, True, 0.0)
    assert table.availability(0.0) is Availability.FAIL_OPEN
    assert Counter(run(scheduler, 12)) == {"a": 10, "c": 2}  # fail open, never the drained b


@pytest.mark.parametrize("scheduler_type", [WeightedRoundRobin, LeastConnections])
def test_backups_serve_only_while_every_primary_is_down(scheduler_type: type[Scheduler]) -> None:
    table = make_table((2, 1, 1, 3), backups="cd")
    scheduler = scheduler_type(table)  # type: ignore[call-arg]
    assert set(run(scheduler, 40)) == {"a", "b"}
    assert table.availability(0.0) is Availability.PRIMARY
    table.set_checked_down(0, True, 0.0)
    assert run(scheduler, 6) == "bbbbbb"
    table.set_checked_down(1, True, 0.0)
    assert table.availability(0.0) is Availability.BACKUP
    assert Counter(run(scheduler, 40)) == {"c": 10, "d": 30}
    table.set_checked_down(1, False, 1.0)
    assert run(scheduler, 6, now=1.0) == "bbbbbb"


def test_backups_take_the_cycle_when_every_primary_is_drained() -> None:
    table = make_table((0, 1, 2), backups="bc")
    assert table.availability(0.0) is Availability.BACKUP
    assert run(WeightedRoundRobin(table), 6) == "cbc" * 2


def test_fail_open_tries_every_server_once() -> None:
    table = make_table((5, 1, 1, 1), backups="d")
    for i in range(4):
        table.set_checked_down(i, True, 0.0)
    assert table.availability(0.0) is Availability.FAIL_OPEN
    scheduler = WeightedRoundRobin(table)
    assert Counter(run(scheduler, 80)) == {"a": 50, "b": 10, "c": 10, "d": 10}
    tried, order = 0, ""
    while (index := scheduler.pick(0.0, tried)) is not None:
        tried |= 1 << index
        order += NAMES[index]
    assert sorted(order) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("down", "tried", "expected"),
    [
        ("", "a", "bc"),  # a retry goes to the other primaries
        ("", "abc", "d"),  # then to the backup
        ("d", "abc", "d"),  # then to a server marked down, rather than give up
        ("", "abcd", "-"),  # every server tried
        ("b", "a", "c"),  # the down primary waits while an untried one is up
    ],
)
def test_tried_hosts_are_left_out(down: str, tried: str, expected: str) -> None:
    table = make_table((1, 1, 1, 1), backups="d")
    for name in down:
        table.set_checked_down(NAMES.index(name), True, 0.0)
    mask = sum(1 << NAMES.index(name) for name in tried)
    for scheduler in (WeightedRoundRobin(table), LeastConnections(table)):
        assert set(run(scheduler, 8, tried=mask)) == set(expected)


# --- slow start --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (100.0, [100, 100, 10]),  # back at 100: the 10% floor
        (100.5, [100, 100, 10]),  # 5% of the ramp is still below the floor
        (102.5, [100, 100, 25]),
        (105.0, [100, 100, 50]),
        (109.0, [100, 100, 90]),
        (110.0, [1, 1, 1]),  # settled: the replayed cycle, one turn each per 3 picks
    ],
)
def test_slow_start_ramps_a_recovered_host(now: float, expected: list[int]) -> None:
    table = make_table((1, 1, 1), slow_start=10.0)
    table.set_checked_down(2, True, 50.0)
    table.set_checked_down(2, False, 100.0)
    assert table.is_settled(now) is (now >= 110.0)
    assert shares(WeightedRoundRobin(table), sum(expected), now) == expected


def test_slow_start_scales_with_the_weight_and_follows_an_ejection() -> None:
    table = make_table((4, 2), slow_start=20.0)
    table.eject(0, until=30.0)
    assert table.settled_at == 50.0
    scheduler = WeightedRoundRobin(table)
    assert shares(scheduler, 10, now=29.0) == [0, 10]
    # At 40.0 a is half-way: 4 * 50 = 200 against b's 2 * 100 = 200.
    assert shares(scheduler, 400, now=40.0) == [200, 200]


@pytest.mark.parametrize(("elapsed", "share"), [(0, 10), (1, 10), (3, 30), (9.99, 99), (10, 100)])
def test_share_is_linear_from_the_floor(elapsed: float, share: int) -> None:
    table = make_table((1, 1), slow_start=10.0)
    table.end_ejection(0, 0.0)  # nothing to end: no ramp starts
    assert table.share(table.hosts[0], elapsed) == 100
    table.eject(0, until=0.0)
    assert table.share(table.hosts[0], elapsed) == share


def test_an_ejection_ended_early_ramps_from_then() -> None:
    table = make_table((1, 1), slow_start=10.0)
    table.eject(1, until=60.0)
    table.end_ejection(1, 20.0)
    assert (table.hosts[1].ejected_until, table.settled_at) == (20.0, 30.0)
    assert table.availability(20.0) is Availability.PRIMARY
    assert shares(WeightedRoundRobin(table), 110, now=20.0) == [100, 10]


def test_release_during_an_ejection_ramps_from_the_ejection_end() -> None:
    table = make_table((1, 1), slow_start=10.0)
    table.set_checked_down(1, True, 0.0)
    table.eject(1, until=50.0)
    table.set_checked_down(1, False, 20.0)
    assert (table.hosts[1].ramp_from, table.settled_at) == (50.0, 60.0)


# --- least connections -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "in_flight", "expected"),
    [
        ((1, 1, 1), (2, 0, 1), "b"),
        ((1, 1, 1), (1, 1, 0), "c"),
        ((3, 1), (2, 1), "a"),  # 2/3 < 1/1
        ((1, 3), (1, 2), "b"),
        ((2, 1), (2, 1), "a"),  # tied at 1 per weight: WRR among the tied starts with a
    ],
)
def test_least_conn_takes_the_lowest_load_per_weight(
    weights: tuple[int, ...], in_flight: tuple[int, ...], expected: str
) -> None:
    table = make_table(weights)
    for index, count in enumerate(in_flight):
        for _ in range(count):
            table.begin(index)
    assert run(LeastConnections(table), 1) == expected


def test_least_conn_ties_take_turns_by_weight() -> None:
    # Nothing in flight: every pick is a tie, broken by smooth WRR, so nginx's sequence.
    assert run(LeastConnections(make_table((5, 1, 1))), 14) == "aabacaa" * 2


def test_least_conn_follows_requests_as_they_start_and_end() -> None:
    table = make_table((1, 1, 1))
    scheduler = LeastConnections(table)
    started = []
    for _ in range(6):
        index = scheduler.pick(0.0)
        assert index is not None
        table.begin(index)
        started.append(NAMES[index])
    # Each round of three goes to each host once; which first is smooth WRR among the tied.
    assert [sorted(started[i : i + 3]) for i in (0, 3)] == [["a", "b", "c"]] * 2
    table.end(1)
    table.end(1)
    assert run(scheduler, 1) == "b"
    assert [h.in_flight for h in table.hosts] == [2, 0, 2]


def test_least_conn_respects_slow_start() -> None:
    table = make_table((1, 1), slow_start=10.0)
    table.eject(1, until=0.0)
    for _ in range(5):
        table.begin(0)
    # a: 5 in flight at share 100 (5/100); b: 0 in flight, so b still wins at 10%.
    assert run(LeastConnections(table), 1, now=1.0) == "b"


# --- building and showing ------------------------------------------------------------------------


def test_make_scheduler_by_name() -> None:
    table = make_table((1, 1))
    assert isinstance(make_scheduler("wrr", table), WeightedRoundRobin)
    assert isinstance(make_scheduler("least_conn", table), LeastConnections)


def test_host_table_for_a_listener() -> None:
    servers = (
        ServerRef("i-1", 9001, 3),
        ServerRef("i-2", 9001, 0),
        ServerRef("i-3", 9002, 1, True),
    )
    table = HostTable.for_listener(Listener(8081, servers, slow_start=5.0))
    assert [(h.name, h.weight, h.backup) for h in table.hosts] == [
        ("i-1:9001", 3, False),
        ("i-2:9001", 0, False),
        ("i-3:9002", 1, True),
    ]
    assert table.slow_start == 5.0


def test_repr_shows_each_host_state() -> None:
    table = make_table((3, 0, 1), backups="c")
    table.set_checked_down(0, True, 0.0)
    table.eject(2, until=12.5)
    table.begin(2)
    assert repr(WeightedRoundRobin(table)) == (
        "<WeightedRoundRobin <HostTable [a w3 down, b w0, c w1 backup ejected<12.5 1 in flight]>>"
    )


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([Host("a", 0)], "a host table needs a host with a weight above 0"),
        ([], "a host table needs a host with a weight above 0"),
    ],
)
def test_a_table_that_can_pick_nothing_is_refused(hosts: list[Host], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        HostTable(hosts)


def test_a_negative_weight_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^weight must be 0 or more, got -1$"):
        Host("a", -1)


# --- runtime weight changes (the admin API's drain, enable and weight) ---------------------------


def test_a_weight_change_rebuilds_the_wrr_cycle() -> None:
    table = make_table((1, 1, 1))
    scheduler = WeightedRoundRobin(table)
    assert run(scheduler, 3) == "abc"
    table.set_weight(0, 5, now=0.0)
    # The precomputed cycle of 1:1:1 would go on with "abc"; the new one is nginx's 5:1:1.
    assert run(scheduler, 14) == "aabacaa" * 2
    assert table.generation == 1


@pytest.mark.parametrize("scheduler_type", [WeightedRoundRobin, LeastConnections])
def test_a_drained_host_takes_no_new_requests_and_keeps_those_in_flight(
    scheduler_type: type[Scheduler],
) -> None:
    table = make_table((2, 1, 1))
    scheduler = scheduler_type(table)  # type: ignore[call-arg]
    table.begin(1)
    table.set_weight(1, 0, now=0.0)
    assert Counter(run(scheduler, 30)) == {"a": 20, "c": 10}
    assert table.hosts[1].in_flight == 1 and table.hosts[1].is_drained()
    table.end(1)
    table.set_weight(1, table.hosts[1].configured_weight, now=0.0)
    assert Counter(run(scheduler, 40)) == {"a": 20, "b": 10, "c": 10}


def test_least_conn_weighs_load_by_the_current_weight() -> None:
    table = make_table((1, 1))
    for _ in range(3):
        table.begin(0)
    table.begin(1)
    assert run(LeastConnections(table), 1) == "b"  # 3/1 against 1/1
    table.set_weight(0, 10, now=0.0)
    assert run(LeastConnections(table), 1) == "a"  # 3/10 against 1/1


def test_draining_every_primary_hands_the_cycle_to_the_backups() -> None:
    table = make_table((1, 1, 2), backups="c")
    scheduler = WeightedRoundRobin(table)
    table.set_weight(0, 0, now=0.0)
    assert run(scheduler, 4) == "bbbb"
    table.set_weight(1, 0, now=0.0)
    assert table.availability(0.0) is Availability.BACKUP
    assert run(scheduler, 4) == "cccc"


@pytest.mark.parametrize("scheduler_type", [WeightedRoundRobin, LeastConnections])
def test_every_host_may_be_drained_and_then_none_is_picked(
    scheduler_type: type[Scheduler],
) -> None:
    table = make_table((1, 0, 1), backups="c")
    scheduler = scheduler_type(table)  # type: ignore[call-arg]
    table.set_weight(0, 0, now=0.0)
    table.set_weight(2, 0, now=0.0)
    assert table.availability(0.0) is Availability.DRAINED
    assert not table.is_settled(1e9)  # no cycle to replay: it would need a weight
    assert [scheduler.pick(0.0), scheduler.pick(0.0, tried=0b010)] == [None, None]
    table.set_weight(2, 2, now=0.0)
    assert table.availability(0.0) is Availability.BACKUP and table.is_settled(0.0)
    assert run(scheduler, 3) == "ccc"


def test_a_negative_runtime_weight_is_refused() -> None:
    table = make_table((1, 1))
    with pytest.raises(ValueError, match=r"^weight must be 0 or more, got -2$"):
        table.set_weight(1, -2, now=0.0)
    assert [h.weight for h in table.hosts] == [1, 1] and table.generation == 0


def test_drained_hosts_are_left_out_of_fail_open() -> None:
    table = make_table((1, 1, 1))
    scheduler = WeightedRoundRobin(table)
    table.set_weight(0, 0, now=0.0)
    table.set_checked_down(1, True, now=0.0)
    table.set_checked_down(2, True, now=0.0)
    assert table.availability(0.0) is Availability.FAIL_OPEN
    assert run(scheduler, 4) == "bcbc"
    assert run(scheduler, 1, tried=0b110) == "-"  # every server that is not drained was tried


def test_an_enabled_host_ramps_up_under_slow_start() -> None:
    table = make_table((1, 1), slow_start=10.0)
    scheduler = WeightedRoundRobin(table)
    table.set_weight(1, 0, now=0.0)
    table.set_weight(1, 1, now=100.0)
    assert table.share(table.hosts[1], 101.0) == 10
    assert table.settled_at == 110.0
    assert shares(scheduler, 110, now=101.0) == [100, 10]
    assert shares(scheduler, 150, now=105.0) == [100, 50]
    assert shares(scheduler, 20, now=110.0) == [10, 10]


def test_a_weight_change_shows_in_the_repr() -> None:
    table = make_table((3, 1))
    table.set_weight(0, 0, now=0.0)
    assert repr(table) == "<HostTable [a w0 (configured 3), b w1]>"
