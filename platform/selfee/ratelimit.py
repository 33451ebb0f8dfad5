"""Job-wide request and token limits, kept by each worker on its own (aiolimiter).

How the quota is shared: the job's limits are split evenly and statically across its N
workers, and each worker paces its share with leaky buckets. No worker ever talks to another
about the quota, so limiting costs no round trips and has no central actor to fail or to
become the bottleneck at thousands of requests a minute; the price is that a worker left
idle at the end of a job cannot lend its share to the others (the job keeps a fixed pool of
workers for that reason). A central limiter actor was the alternative: one RPC per request,
and a single point the whole job waits on.

"Never exceeded in any 60 s window" is a hard bound, not an average: a leaky bucket of
capacity ``b`` draining at ``r`` per second admits at most ``b + 60 r`` in any 60 s, so each
bucket gets ``60 r = share * (1 - margin) - b``. Requests use ``b = 1`` (evenly paced, which
is also what server-side sliding windows like); tokens use ``b`` = the largest reservation
one request can make (its prompt budget plus ``max_tokens``, i.e. the context window). The
margin absorbs network jitter between our send time and the server's arrival time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

WINDOW_S = 60.0
DEFAULT_MARGIN = 0.02


class LimitError(ValueError):
    """Limits that cannot be met as configured (the message says what to change)."""


@dataclass(frozen=True)
class BucketSpec:
    capacity: float  # the largest burst (and the largest single acquisition)
    per_second: float  # the steady drain rate

    @property
    def period_s(self) -> float:
        return self.capacity / self.per_second

    def max_in_window(self, window_s: float = WINDOW_S) -> float:
        return self.capacity + self.per_second * window_s


def bucket_for(
    limit_per_minute: float, capacity: float, margin: float = DEFAULT_MARGIN
) -> BucketSpec:
    """The leaky bucket that never admits more than ``limit_per_minute`` in any 60 s."""
    steady = limit_per_minute * (1 - margin) - capacity
    if steady <= 0:
        raise LimitError(
            f"a share of {limit_per_minute:g} per minute cannot fit bursts of {capacity:g}"
        )
    return BucketSpec(capacity=capacity, per_second=steady / WINDOW_S)


@dataclass(frozen=True)
class WorkerShare:
    """One worker's part of the job's limits (None: unlimited)."""

    requests: BucketSpec | None
    tokens: BucketSpec | None


def split_limits(
    rpm: float | None,
    tpm: float | None,
    workers: int,
    max_request_tokens: int,
    margin: float = DEFAULT_MARGIN,
) -> WorkerShare:
    """Each of ``workers`` gets 1/``workers`` of the job's requests and tokens per minute."""
    requests = tokens = None
    if rpm is not None:
        try:
            requests = bucket_for(rpm / workers, 1, margin)
        except LimitError:
            raise LimitError(
                f"rpm {rpm:g} is too low for {workers} workers: each would get "
                f"{rpm / workers:.2f} requests a minute; use fewer workers"
            ) from None
    if tpm is not None:
        try:
            tokens = bucket_for(tpm / workers, max_request_tokens, margin)
        except LimitError:
            raise LimitError(
                f"tpm {tpm:g} is too low for {workers} workers: one request may use up to "
                f"{max_request_tokens} tokens (max_context), more than a worker's share of "
                f"{tpm / workers:.0f} a minute allows; use fewer workers or a smaller "
                "max_context"
            ) from None
    return WorkerShare(requests, tokens)


def workers_for(rpm: float | None, wanted: int, min_rpm_per_worker: float = 20) -> int:
    """Fewer workers when the rate is too low to share well (each bucket keeps one request
    of headroom, which is a large part of a small share)."""
    if rpm is None:
        return wanted
    return max(1, min(wanted, int(rpm // min_rpm_per_worker)))


class RateLimiter:
    """A worker's limits: requests and tokens, plus a pause when the server says 429."""

    def __init__(self, share: WorkerShare) -> None:
        self.share = share
        self._requests = _limiter(share.requests)
        self._tokens = _limiter(share.tokens)
        self._paused_until = 0.0

    async def acquire(self, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self._paused_until - loop.time()) > 0:
            await asyncio.sleep(delay)
        if self._tokens is not None:
            await self._tokens.acquire(min(tokens, self._tokens.max_rate))
        if self._requests is not None:
            await self._requests.acquire(1)

    def pause(self, seconds: float) -> None:
        """Hold every request of this worker for ``seconds`` (a server's Retry-After)."""
        now = asyncio.get_running_loop().time()
        self._paused_until = max(self._paused_until, now + seconds)


def _limiter(spec: BucketSpec | None) -> AsyncLimiter | None:
    return None if spec is None else AsyncLimiter(spec.capacity, spec.period_s)
