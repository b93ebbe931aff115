"""Counters of one judging call, returned as a flat dict for the iteration's metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Why a request or an answer failed. Transient kinds are retried; 4xx and parse are not
# (a parse failure gets one repair request instead).
FAILURE_KINDS = ("429", "5xx", "timeout", "connection", "bad_response", "4xx", "parse")
TRANSIENT_KINDS = frozenset({"429", "5xx", "timeout", "connection", "bad_response"})


@dataclass
class JudgeStats:
    judgements: int = 0  # rows asked for, duplicates included
    requests: int = 0  # HTTP requests sent, retries and repairs included
    retries: int = 0
    failures: Counter = field(default_factory=Counter)
    repairs: int = 0  # repair requests sent after an unparseable answer
    repaired: int = 0  # of which the answer then parsed
    cache_hits: int = 0
    duplicates: int = 0  # rows whose (prompt, generation) pair occurred earlier in the call
    missing: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latencies_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def fail(self, kind: str) -> None:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        self.failures[kind] += 1

    def add_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.tokens_in += int(usage.get("prompt_tokens") or 0)
            self.tokens_out += int(usage.get("completion_tokens") or 0)

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s, dtype=float) * 1000.0
        pct = np.percentile(lat, [50, 90, 99]) if lat.size else [float("nan")] * 3
        out: dict[str, Any] = {
            "judgements": self.judgements,
            "requests": self.requests,
            "retries": self.retries,
            **{f"failures_{k}": int(self.failures[k]) for k in FAILURE_KINDS},
            "parse_failures": int(self.failures["parse"]),
            "repairs": self.repairs,
            "repaired": self.repaired,
            "cache_hits": self.cache_hits,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_ms_p50": float(pct[0]),
            "latency_ms_p90": float(pct[1]),
            "latency_ms_p99": float(pct[2]),
            "wall_s": round(self.wall_s, 3),
        }
        return out
