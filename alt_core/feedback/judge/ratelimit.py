"""Client-side rate limits: token buckets for requests and tokens per minute.

Providers enforce per-minute limits over shorter windows too, so each bucket holds about
one second's worth (at least one request's cost): the client paces itself smoothly
instead of bursting a whole minute's budget and then collecting 429s. A request larger
than the bucket waits for a full bucket and leaves it in debt, which keeps the average
rate right. A 429 pauses every request until its Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_minute` units per minute, at most `capacity` saved up (default: 1 s)."""

    def __init__(
        self,
        rate_per_minute: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate_per_minute / 60.0
        self.capacity = max(capacity if capacity is not None else self.rate, 1.0)
        self.level = self.capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` (capped at the capacity) can be taken; 0 if now."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def settle(self, correction: float) -> None:
        """Charge (or refund, if negative) the difference between estimate and usage."""
        self._refill()
        self.level = min(self.capacity, self.level - correction)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits, plus a shared 429 pause."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._clock = clock
        self.requests = (
            TokenBucket(requests_per_minute, clock=clock) if requests_per_minute else None
        )
        self.tokens = TokenBucket(tokens_per_minute, clock=clock) if tokens_per_minute else None
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def _wait_time(self, tokens: float) -> float:
        waits = [self._paused_until - self._clock()]
        if self.requests is not None:
            waits.append(self.requests.wait_time(1))
        if self.tokens is not None:
            waits.append(self.tokens.wait_time(tokens))
        return max(waits)

    async def acquire(self, tokens: float) -> None:
        """Wait until one request of about `tokens` tokens may go, then charge it."""
        if self.requests is None and self.tokens is None and self._wait_time(tokens) <= 0:
            return
        # One waiter at a time: the lock queues callers in arrival order, so a large
        # request is not starved by a stream of small ones.
        async with self._lock:
            while (wait := self._wait_time(tokens)) > 0:
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(tokens)

    def settle_tokens(self, estimated: float, actual: float) -> None:
        if self.tokens is not None:
            self.tokens.settle(actual - estimated)
