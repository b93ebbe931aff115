"""Sentiment reward: the VADER compound score of the generated continuation.

The demo's reward. Only the continuation is scored, never the prompt: the policy is
rewarded for what it writes. VADER is lexicon-based, needs no download and returns a
compound score in [-1, 1]; an empty continuation scores 0.0 (neutral) and a missing one
(None / NaN) gets a NaN reward with a `missing_reason`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alt_core.config import RunConfig
from alt_core.feedback.base import (
    FeedbackProvider,
    feedback_frame,
    missing_generations,
    reason_where,
)


class SentimentProvider(FeedbackProvider):
    name = "sentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    @classmethod
    def from_config(cls, config: RunConfig) -> SentimentProvider:
        return cls()

    def compound(self, texts: pd.Series) -> pd.Series:
        """VADER compound score of each text; blank texts score 0.0."""
        stripped = texts.astype(str).str.strip()
        # Sampling repeats itself (n generations per prompt, greedy evaluation), so score
        # each distinct text once.
        unique = pd.unique(stripped[stripped != ""])
        scores = {t: self._analyzer.polarity_scores(t)["compound"] for t in unique}
        return stripped.map(scores).fillna(0.0).astype("float64")

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = missing_generations(df)
        reward = self.compound(df["generation"].where(~missing, "")).where(~missing, np.nan)
        reason = reason_where(missing, "no generation")
        return feedback_frame(df.index, reward=reward, missing_reason=reason)
