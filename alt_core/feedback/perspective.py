"""Toxicity from Google's Perspective API: the `perspective` provider.

One request per distinct text to `{base_url}/comments:analyze`:

    {"comment": {"text": ...}, "requestedAttributes": {"TOXICITY": {}},
     "languages": ["en"], "doNotStore": true}
    -> {"attributeScores": {"TOXICITY": {"summaryScore": {"value": 0.87, ...}}}, ...}

`PerspectiveClient` is the judge client (`alt_core.feedback.judge.client.JudgeClient`)
with another endpoint, body and answer: the same concurrency cap, QPS limit (the API
allows 1 query per second by default: `requests_per_minute` 60), retries with backoff
on 429 / 5xx / timeouts / a malformed body, the judge's missing causes, and the judge
cache (keyed by the attribute and languages and the text; scores kept as floats), so a
rerun asks only for what is still missing. The key is read from
`feedback.toxicity.perspective.api_key_env` (default PERSPECTIVE_API_KEY) or a Prefect
Secret block, sent in the `X-Goog-Api-Key` header (never in the URL, which httpx logs),
and scrubbed from every reason the client keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import SecretStr

from alt_core import store
from alt_core.config import RunConfig
from alt_core.config.toxicity import PerspectiveConfig, ToxicityConfig
from alt_core.feedback.judge.cache import ENTRY_FIELDS, JudgeCache
from alt_core.feedback.judge.client import JudgeClient, JudgeRequestError
from alt_core.feedback.judge.stats import JudgeStats
from alt_core.feedback.toxicity import ToxicityProvider, scored_texts, toxicity_feedback


@dataclass(frozen=True)
class _Scope:
    """The cache scope of Perspective requests: what shapes the body besides the text."""

    name: str
    content_hash: str


def _scope(config: PerspectiveConfig) -> _Scope:
    blob = json.dumps({"attribute": config.attribute, "languages": config.languages})
    return _Scope(
        f"perspective-{config.attribute.lower()}", hashlib.sha256(blob.encode()).hexdigest()
    )


class PerspectiveClient(JudgeClient):
    """`async with PerspectiveClient(config) as c: frame, stats = await c.judge(texts, texts)`;
    the frame's `score` is the toxicity (NaN where missing)."""

    endpoint = "/comments:analyze"

    def __init__(self, config: PerspectiveConfig, *, cache_uri: str | None = None):
        # No template: the body is fixed; the cache scope names the attribute instead.
        self.perspective = config
        settings = {"attribute": config.attribute, "languages": config.languages}
        self._setup(config, JudgeCache(cache_uri, config.model, _scope(config), settings,
                                       float_scores=True))  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"PerspectiveClient(attribute={self.perspective.attribute!r}, "
            f"base_url={self.config.base_url!r}, max_concurrency={self.config.max_concurrency})"
        )

    def _auth_headers(self, key: SecretStr) -> dict[str, str]:
        return {"X-Goog-Api-Key": key.get_secret_value()}

    def _answer(self, data: Any) -> float:
        value = data["attributeScores"][self.perspective.attribute]["summaryScore"]["value"]
        score = float(value)
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ValueError(f"score {value!r} is not in [0, 1]")
        return score

    def body(self, text: str) -> dict[str, Any]:
        return {
            "comment": {"text": text},
            "requestedAttributes": {self.perspective.attribute: {}},
            "languages": list(self.perspective.languages),
            "doNotStore": True,
        }

    async def judge_one(
        self, prompt: str, generation: str, stats: JudgeStats
    ) -> tuple[dict[str, Any], bool]:
        """(entry, cacheable) for one text (`generation`; `prompt` is unused)."""
        entry = dict.fromkeys(ENTRY_FIELDS)
        try:
            score = await self.request(self.body(generation), len(generation) / 4.0, stats)
        except JudgeRequestError as exc:
            entry.update(missing_reason=str(exc), missing_cause=exc.cause)
            return entry, False
        entry["score"] = score
        return entry, True

    def _frame(self, entries: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.DataFrame.from_records(entries, columns=ENTRY_FIELDS)
        frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("float64")
        text = ["missing_reason", "missing_cause"]
        frame[text] = frame[text].astype(object).where(frame[text].notna(), None)
        return frame


def perspective_scores(
    texts: list[str], config: PerspectiveConfig, cache_uri: str | None = None, progress_log=None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(frame with score, missing_reason, missing_cause per text; stats), synchronously."""

    async def run() -> tuple[pd.DataFrame, dict[str, Any]]:
        async with PerspectiveClient(config, cache_uri=cache_uri) as client:
            return await client.judge(texts, texts, progress_log)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with ThreadPoolExecutor(max_workers=1) as pool:  # inside a running loop (a notebook)
        return pool.submit(asyncio.run, run()).result()


class PerspectiveProvider(ToxicityProvider):
    """Perspective's TOXICITY (or another attribute) of each generation."""

    name = "perspective"
    unit = "texts"
    resume_note = "answered texts are cached, so only the missing ones are asked again"

    def __init__(self, settings: ToxicityConfig, cache_uri: str | None = None) -> None:
        super().__init__(settings)
        self.cache_uri = cache_uri
        self.last_stats: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: RunConfig) -> PerspectiveProvider:
        cache = config.feedback.judge_cache or store.join(config.storage.cache_dir, "judge-cache")
        return cls(config.feedback.toxicity, cache_uri=cache)

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        texts = scored_texts(df, self.settings)
        tox = pd.Series(np.nan, index=df.index, dtype="float64")
        cause = pd.Series(None, index=df.index, dtype=object)
        reason = pd.Series(None, index=df.index, dtype=object)
        self.last_stats = {}
        if len(texts):
            frame, self.last_stats = perspective_scores(
                texts.tolist(), self.settings.perspective, self.cache_uri, self.progress
            )
            frame = frame.set_axis(texts.index)
            tox.loc[texts.index] = frame["score"]
            cause.loc[texts.index] = frame["missing_cause"]
            reason.loc[texts.index] = frame["missing_reason"]
        return toxicity_feedback(df, tox, cause=cause, reason=reason)
