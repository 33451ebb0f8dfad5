"""Job-wide limits: the per-worker shares never exceed the job's limit in any 60 s window.

Checked on a virtual clock (looptime), so minutes of traffic take milliseconds and the
property is exact rather than a timing that may flake.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools

import looptime
import pytest

from selfee.ratelimit import LimitError, RateLimiter, split_limits, workers_for


def max_in_window(events: list[tuple[float, int]], window: float = 60.0) -> int:
    """The largest total amount sent in any window of ``window`` seconds."""
    times = [t for t, _ in events]
    prefix = [0]
    for _, amount in events:
        prefix.append(prefix[-1] + amount)
    return max(prefix[bisect.bisect_left(times, t + window)] - prefix[i]
               for i, t in enumerate(times))  # fmt: skip


def simulate(rpm, tpm, workers, tokens_per_request, seconds=600.0, in_flight=8, pause_at=None):
    """Every worker runs ``in_flight`` senders that send as fast as their limiter allows."""
    events: list[tuple[float, int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        share = split_limits(rpm, tpm, workers, max_request_tokens=4096)
        limiters = [RateLimiter(share) for _ in range(workers)]

        async def sender(limiter: RateLimiter, n: int) -> None:
            while loop.time() < seconds:
                amount = tokens_per_request[n % len(tokens_per_request)]
                await limiter.acquire(amount)
                events.append((loop.time(), amount))
                n += 1
                if pause_at is not None and len(events) == pause_at:
                    limiter.pause(30)

        await asyncio.gather(*(sender(lim, i) for lim in limiters for i in range(in_flight)))

    loop = looptime.new_event_loop(start=0, noop_cycles=0)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    events.sort()
    return events


@pytest.mark.parametrize(("rpm", "workers"), [(600, 1), (600, 4), (3000, 1), (3000, 4), (60, 2)])
def test_requests_never_exceed_rpm_in_any_window(rpm: int, workers: int) -> None:
    events = simulate(rpm, None, workers, [1])
    counts = [(t, 1) for t, _ in events]
    assert max_in_window(counts) <= rpm
    achieved = len(events) / (events[-1][0] / 60)
    assert achieved >= 0.95 * rpm - 2 * workers  # the pacing wastes little of the quota


def test_tokens_never_exceed_tpm_in_any_window() -> None:
    tpm = 200_000
    events = simulate(None, tpm, 4, [300, 4096, 1200, 50], seconds=900)
    assert max_in_window(events) <= tpm
    # a share can't use its last 4096 tokens of headroom: the bound costs at most that much
    assert sum(a for _, a in events) / (events[-1][0] / 60) >= 0.95 * tpm - 4 * 4096


def test_both_limits_at_once() -> None:
    events = simulate(1200, 100_000, 2, [500, 3000])
    assert max_in_window([(t, 1) for t, _ in events]) <= 1200
    assert max_in_window(events) <= 100_000


def test_pause_holds_the_whole_worker() -> None:
    events = simulate(6000, None, 1, [1], seconds=60, in_flight=4, pause_at=10)
    gap = max(b[0] - a[0] for a, b in itertools.pairwise(events))
    assert gap >= 29.9  # a 429's Retry-After stops every sender of that worker


def test_shares_that_cannot_work_are_refused_with_advice() -> None:
    with pytest.raises(LimitError, match="use fewer workers"):
        split_limits(3, None, 4, 4096)
    with pytest.raises(LimitError, match="max_context"):
        split_limits(None, 10_000, 4, 4096)
    assert workers_for(60, 8) == 3 and workers_for(None, 8) == 8 and workers_for(5, 4) == 1
