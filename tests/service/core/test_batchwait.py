"""The wait policies as arithmetic: times are given, nothing sleeps."""

from __future__ import annotations

import pytest

from service.core.batchwait import (
    MIN_OVERLAP,
    OVERLAP_WEIGHT,
    QUIET_GAPS,
    AdaptiveWait,
    FixedWait,
    make_policy,
)

DELAY = 0.0005  # max_queue_delay_us = 500


def busy(policy: AdaptiveWait, *, arrivals: int, gap: float, start: float = 10.0) -> float:
    """``arrivals`` requests ``gap`` seconds apart, each finding others in flight; the last arrival time."""
    now = start
    for i in range(arrivals):
        now = start + i * gap
        policy.arrived(now, in_flight=3)
    return now


def test_fixed_wait_is_the_delay_after_the_oldest_whatever_happens() -> None:
    policy = FixedWait(DELAY)
    for i in range(5):
        policy.arrived(10.0 + i * 1e-4, in_flight=i)
    policy.computed(8, 0.001)
    assert policy.close_at(10.0, earliest_deadline=10.0001, queued=5) == pytest.approx(10.0 + DELAY)


def test_first_request_goes_at_once() -> None:
    policy = AdaptiveWait(DELAY)
    policy.arrived(10.0, in_flight=5)
    assert policy.gap is None
    assert policy.close_at(10.0, None, queued=1) <= 10.0


def test_lone_closed_loop_client_never_waits_however_fast_it_is() -> None:
    policy = AdaptiveWait(DELAY)
    now = 10.0
    for _ in range(1000):  # its next request comes only after the previous answer: never overlapping
        now += 1e-5
        policy.arrived(now, in_flight=0)
    assert policy.gap == pytest.approx(1e-5)
    assert policy.overlap == 0.0
    assert policy.close_at(now, None, queued=1) <= now


def test_busy_stream_holds_until_it_pauses() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=5e-5)
    assert last + QUIET_GAPS * 5e-5 < last - 1e-4 + DELAY  # the pause comes before the delay bound
    assert policy.close_at(last - 1e-4, None, queued=1) == pytest.approx(last + QUIET_GAPS * 5e-5)


def test_hold_is_bounded_by_the_delay_after_the_oldest() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=4e-4)  # a pause of several gaps would outlast the delay
    oldest = last - 1e-4
    assert policy.close_at(oldest, None, queued=1) == pytest.approx(oldest + DELAY)


def test_hold_ends_one_batch_compute_before_the_earliest_deadline() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=1e-4)
    policy.computed(8, 2e-4)
    policy.computed(8, 2e-4)
    assert policy.close_at(last, earliest_deadline=last + 3e-4, queued=1) == pytest.approx(last + 1e-4)
    assert policy.close_at(last, earliest_deadline=last + 1e-4, queued=1) < last  # already too late to wait
    assert policy.close_at(last, earliest_deadline=last + 1.0, queued=1) == pytest.approx(
        last + QUIET_GAPS * 1e-4
    )


def test_compute_time_is_a_weighted_mean() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=1e-4)
    policy.computed(8, 4e-4)
    policy.computed(8, 0.0)  # 4e-4 + (0 - 4e-4) / 4
    assert policy.close_at(last, earliest_deadline=last + 5e-4, queued=1) == pytest.approx(last + 2e-4)


def test_sparse_arrivals_do_not_wait_even_when_they_overlap() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=1.5 * DELAY)
    assert policy.close_at(last, None, queued=1) <= last


def test_one_long_pause_stops_the_waiting() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=1e-4)
    assert policy.close_at(last, None, queued=1) > last
    policy.arrived(last + 1.0, in_flight=0)  # traffic stopped for a second, then one request
    assert policy.close_at(last + 1.0, None, queued=1) <= last + 1.0


def test_waiting_starts_once_most_arrivals_found_company() -> None:
    needed = next(k for k in range(1, 100) if 1 - (1 - OVERLAP_WEIGHT) ** k >= MIN_OVERLAP)
    policy = AdaptiveWait(DELAY)
    policy.arrived(10.0, in_flight=0)
    last = busy(policy, arrivals=needed - 1, gap=1e-4, start=10.0001)
    assert policy.overlap < MIN_OVERLAP
    assert policy.close_at(last, None, queued=1) <= last
    policy.arrived(last + 1e-4, in_flight=1)
    assert policy.overlap >= MIN_OVERLAP
    assert policy.close_at(last, None, queued=1) > last + 1e-4


def test_overlap_fades_when_the_clients_go_serial() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=50, gap=1e-4)
    for i in range(1, 10):
        policy.arrived(last + i * 1e-4, in_flight=0)
    assert policy.overlap < MIN_OVERLAP
    assert policy.close_at(last + 9e-4, None, queued=1) <= last + 9e-4


@pytest.mark.parametrize("name, kind", [("adaptive", AdaptiveWait), ("fixed", FixedWait)])
def test_make_policy_by_name(name: str, kind: type) -> None:
    assert isinstance(make_policy(name, DELAY), kind)  # type: ignore[arg-type]


def test_make_policy_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown batch wait policy 'eager'"):
        make_policy("eager", DELAY)  # type: ignore[arg-type]


def test_closed_loop_batch_goes_once_every_recent_client_is_queued() -> None:
    policy = AdaptiveWait(DELAY)
    now = 10.0
    for _ in range(20):  # four clients in a closed loop: each round, arrivals find 0, 1, 2, 3 others
        for others in range(4):
            now += 1e-4
            policy.arrived(now, in_flight=others)
    assert policy.concurrency == pytest.approx(4.0)
    assert policy.close_at(now - 3e-4, None, queued=3) > now  # one client still to come
    assert policy.close_at(now - 3e-4, None, queued=4) <= now  # everyone is here: nobody else can come


def test_concurrency_peak_decays_when_clients_leave() -> None:
    policy = AdaptiveWait(DELAY)
    last = busy(policy, arrivals=1, gap=1e-4)
    policy.arrived(last, in_flight=15)  # sixteen at once
    for i in range(1, 200):  # then only two
        policy.arrived(last + i * 1e-4, in_flight=1)
    assert policy.concurrency == pytest.approx(2.0)
