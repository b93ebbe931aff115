"""Token buckets and the shared 429 pause of the judge client, on a fake clock."""

from __future__ import annotations

import asyncio
import time

import pytest

from alt_core.feedback.judge.client import _retry_after
from alt_core.feedback.judge.ratelimit import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_holds_one_second_and_refills_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(600, clock=clock)  # 10 per second
    assert bucket.capacity == 10
    for _ in range(10):
        assert bucket.wait_time(1) == 0
        bucket.take(1)
    assert bucket.wait_time(1) == pytest.approx(0.1)
    clock.now += 0.5
    assert bucket.wait_time(5) == 0
    clock.now += 60
    assert bucket.level <= bucket.capacity and bucket.wait_time(10) == 0


def test_a_request_larger_than_the_bucket_waits_for_a_full_one_then_owes():
    clock = FakeClock()
    tokens = TokenBucket(60_000, clock=clock)  # 1,000 tokens per second
    tokens.take(500)
    assert tokens.wait_time(5_000) == pytest.approx(0.5)  # capped at capacity: no deadlock
    clock.now += 0.5
    tokens.take(5_000)
    assert tokens.wait_time(1) == pytest.approx(4.001)  # the debt keeps the average rate


def test_usage_settles_the_estimate():
    clock = FakeClock()
    tokens = TokenBucket(60_000, clock=clock)
    tokens.take(800)
    tokens.settle(-600)  # the answer used 600 fewer tokens than estimated
    assert tokens.level == pytest.approx(800)


def test_limiter_paces_and_pauses_in_real_time():
    async def run():
        limiter = RateLimiter(requests_per_minute=1200, tokens_per_minute=None)  # 20/s
        started = time.perf_counter()
        for _ in range(30):
            await limiter.acquire(10)
        paced = time.perf_counter() - started
        limiter.pause(0.3)
        started = time.perf_counter()
        await limiter.acquire(10)
        return paced, time.perf_counter() - started

    paced, paused = asyncio.run(run())
    assert 0.45 <= paced < 2.0  # 20 at once, 10 more at 20/s
    assert paused >= 0.29


def test_unlimited_limiter_does_not_wait():
    async def run():
        limiter = RateLimiter(None, None)
        started = time.perf_counter()
        for _ in range(1000):
            await limiter.acquire(10_000)
        return time.perf_counter() - started

    assert asyncio.run(run()) < 0.5


def test_retry_after_header_forms():
    import httpx

    assert _retry_after(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert _retry_after(httpx.Headers({"retry-after-ms": "1500", "Retry-After": "9"})) == 1.5
    date = httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert _retry_after(date) == 0.0  # a date in the past: go now
    assert _retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Headers({})) is None
