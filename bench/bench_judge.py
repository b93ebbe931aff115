"""Benchmark: judge client throughput, concurrent vs one request at a time.

Run: .venv/bin/python bench/bench_judge.py [--concurrency 64] [--delay 0.2]

A loopback OpenAI-compatible judge (tests/judge_server.py, in its own process so it does
not share the client's interpreter) answers every request after `--delay` seconds. The
same client judges `--judgements` pairs with `--concurrency` requests in flight, then
`--sequential` pairs with one request in flight; the rates are compared on one line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alt_core.feedback.judge import JudgeConfig, judge_batch  # noqa: E402


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "judge_server.py"), "--delay", str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"the loopback judge did not start (printed {url!r})")
    return proc, url


def rate(url: str, n: int, concurrency: int, tag: str) -> tuple[float, dict]:
    """Judgements per second for n distinct pairs at the given concurrency."""
    rows = [(f"post {tag}{i}", f"<{tag}-{i:06d}> a summary") for i in range(n)]
    config = JudgeConfig(
        base_url=url, model="bench-judge", max_concurrency=concurrency, timeout_s=30
    )
    started = time.perf_counter()
    frame, stats = judge_batch(rows, config)
    elapsed = time.perf_counter() - started
    if frame["missing_reason"].notna().any() or stats["requests"] != n:
        raise RuntimeError(f"benchmark run was not clean: {stats}")
    return n / elapsed, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.2, help="judge answer delay (s)")
    parser.add_argument("--judgements", type=int, default=1280, help="concurrent run size")
    parser.add_argument("--sequential", type=int, default=25, help="sequential run size")
    args = parser.parse_args(argv)
    proc, url = start_server(args.delay)
    try:
        rate(url, 16, args.concurrency, "warmup")
        concurrent, stats = rate(url, args.judgements, args.concurrency, "c")
        sequential, _ = rate(url, args.sequential, 1, "s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(
        f"  concurrent run: {args.judgements} judgements, latency p50/p99 "
        f"{stats['latency_ms_p50']:.0f}/{stats['latency_ms_p99']:.0f} ms; sequential run: "
        f"{args.sequential} judgements; judge delay {args.delay * 1000:.0f} ms"
    )
    print(
        f"judge throughput: concurrent {concurrent:.1f}/s (concurrency {args.concurrency}) "
        f"vs sequential {sequential:.1f}/s = {concurrent / sequential:.1f}x"
    )


if __name__ == "__main__":
    main()
