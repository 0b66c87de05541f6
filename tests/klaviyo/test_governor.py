"""The rate-limit governor on a fake clock: pacing, header corrections, Retry-After, no herd."""

from __future__ import annotations

import asyncio

import pytest

from stream.klaviyo.client import EVENTS, EVENTS_BULK, PROFILE_IMPORT
from stream.klaviyo.governor import Governor, Limit
from tests.support.fake_clock import FakeClock


def governor(clock: FakeClock, **kwargs: object) -> Governor:
    return Governor(clock=clock, sleep=clock.sleep, jitter=lambda: 0.0, **kwargs)  # type: ignore[arg-type]


def fixed_window_counts(times: list[float], start: float, length: float) -> list[int]:
    """Requests per fixed window, as Klaviyo counts them."""
    counts: dict[int, int] = {}
    for t in times:
        index = int((t - start) // length)
        counts[index] = counts.get(index, 0) + 1
    return [counts.get(i, 0) for i in range(max(counts) + 1)]


async def send_times(gov: Governor, clock: FakeClock, endpoint: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        await gov.acquire(endpoint)
        times.append(clock.now)
    return times


@pytest.mark.parametrize(
    ("endpoint", "limit"),
    [(EVENTS_BULK, Limit(10, 150)), (EVENTS, Limit(350, 3500)), (PROFILE_IMPORT, Limit(75, 750))],
)
async def test_no_fixed_window_ever_exceeds_the_burst_or_steady_limit(
    endpoint: str, limit: Limit
) -> None:
    clock = FakeClock()
    gov = governor(clock)
    times = await send_times(gov, clock, endpoint, limit.steady * 3)
    for phase in (0.0, 0.3, 0.77):  # wherever Klaviyo's windows happen to start
        start = times[0] - phase
        assert max(fixed_window_counts(times, start, 60.0)) <= limit.steady
        assert max(fixed_window_counts(times, start, 1.0)) <= limit.burst
    # and it runs close to the limit: every full steady window gets >= 95% of the quota
    assert min(fixed_window_counts(times, times[0], 60.0)[:-1]) >= 0.95 * limit.steady


async def test_a_share_splits_the_quota_between_replicas() -> None:
    clock = FakeClock()
    quarter = governor(clock, share=0.25)
    full = governor(FakeClock())
    assert quarter.interval(EVENTS_BULK) == pytest.approx(4 * full.interval(EVENTS_BULK))
    times = await send_times(quarter, clock, EVENTS_BULK, 120)
    assert max(fixed_window_counts(times, times[0], 60.0)) <= 150 / 4


async def test_time_scale_shrinks_the_windows() -> None:
    clock = FakeClock()
    gov = governor(clock, time_scale=0.01)
    assert gov.interval(EVENTS_BULK) == pytest.approx(0.6 / (150 * 0.97))
    assert gov.ceiling(EVENTS_BULK, 6.0) == pytest.approx(1500)


async def test_retry_after_blocks_the_endpoint_and_only_that_endpoint() -> None:
    clock = FakeClock()
    gov = governor(clock)
    await gov.acquire(EVENTS_BULK)
    gov.throttled(EVENTS_BULK, 7.0)
    blocked_at = clock.now
    assert await gov.acquire(EVENTS) == 0.0
    await gov.acquire(EVENTS_BULK)
    assert clock.now >= blocked_at + 7.0


async def test_waiters_after_a_block_wake_one_interval_apart_not_all_at_once() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def frozen_sleep(seconds: float) -> None:  # everyone queues at the same instant
        waits.append(seconds)

    gov = Governor(clock=clock, sleep=frozen_sleep, jitter=lambda: 0.0)
    gov.throttled(EVENTS_BULK, 5.0)
    await asyncio.gather(*(gov.acquire(EVENTS_BULK) for _ in range(10)))
    assert min(waits) == pytest.approx(5.0)
    gaps = [b - a for a, b in zip(sorted(waits), sorted(waits)[1:], strict=False)]
    assert all(gap == pytest.approx(gov.interval(EVENTS_BULK)) for gap in gaps)


async def test_first_slot_after_a_block_is_jittered() -> None:
    clock = FakeClock()
    gov = Governor(clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    gov.throttled(EVENTS_BULK, 2.0)
    waited = await gov.acquire(EVENTS_BULK)
    assert waited == pytest.approx(2.0 + 0.5 * gov.interval(EVENTS_BULK))


async def test_remaining_zero_waits_for_the_reset() -> None:
    clock = FakeClock()
    gov = governor(clock)
    await gov.acquire(EVENTS_BULK)
    gov.observe(
        EVENTS_BULK, {"RateLimit-Limit": "150", "RateLimit-Remaining": "0", "RateLimit-Reset": "12"}
    )
    assert await gov.acquire(EVENTS_BULK) == pytest.approx(12.0)


async def test_little_remaining_spreads_the_rest_of_the_window() -> None:
    """Another client spent most of the quota: what is left is spread until the reset."""
    clock = FakeClock()
    gov = governor(clock)
    await gov.acquire(EVENTS_BULK)
    gov.observe(
        EVENTS_BULK, {"ratelimit-limit": "150", "ratelimit-remaining": "5", "ratelimit-reset": "31"}
    )
    times = await send_times(gov, clock, EVENTS_BULK, 6)
    # at most `remaining` requests before the (lower bound of the) reset
    assert sum(1 for t in times if t < 1000.0 + 30) <= 5


async def test_plenty_remaining_does_not_slow_us_down() -> None:
    plain, corrected = FakeClock(), FakeClock()
    gov_plain, gov_corrected = governor(plain), governor(corrected)
    headers = {"RateLimit-Limit": "150", "RateLimit-Remaining": "145", "RateLimit-Reset": "59"}
    for _ in range(20):
        await gov_plain.acquire(EVENTS_BULK)
        await gov_corrected.acquire(EVENTS_BULK)
        gov_corrected.observe(EVENTS_BULK, headers)
    assert corrected.now == plain.now


async def test_rate_limit_header_corrects_the_documented_limit() -> None:
    clock = FakeClock()
    gov = governor(clock)
    before = gov.interval(EVENTS_BULK)
    gov.observe(EVENTS_BULK, {"RateLimit-Limit": "300"})
    assert gov.interval(EVENTS_BULK) == pytest.approx(before / 2)


async def test_an_endpoint_without_a_documented_limit_is_not_paced() -> None:
    clock = FakeClock()
    gov = governor(clock)
    assert [await gov.acquire("/api/profile-bulk-import-jobs/abc") for _ in range(100)] == [0] * 100


def test_share_and_headroom_are_validated() -> None:
    with pytest.raises(ValueError):
        Governor(share=0)
    with pytest.raises(ValueError):
        Governor(headroom=1.5)


async def test_a_caller_late_for_its_slot_catches_up_without_overrunning_a_window() -> None:
    """A busy event loop makes callers late: up to two missed slots are caught up."""
    clock = FakeClock()
    gov = governor(clock)
    interval = gov.interval(EVENTS_BULK)
    times: list[float] = []
    for n in range(450):
        if n % 10 == 0:
            clock.now += 2.5 * interval  # the loop was busy: nobody asked for 2.5 slots
        await gov.acquire(EVENTS_BULK)
        times.append(clock.now)
    for phase in (0.0, 0.2, 0.5):
        start = times[0] - phase
        assert max(fixed_window_counts(times, start, 60.0)) <= 150
        assert max(fixed_window_counts(times, start, 1.0)) <= 10
    elapsed = times[-1] - times[0]
    assert 450 / elapsed >= 0.95 * 150 / 60
