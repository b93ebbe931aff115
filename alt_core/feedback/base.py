"""The feedback-provider interface and its registry.

A provider reads a table of (prompt, generation) rows and returns, for the same rows,
the feedback columns of `schemas.FEEDBACK`: a scalar `reward` (NaN when the feedback is
missing), the `feedback` text (None for pure reward providers: the datapool maps their
reward buckets to text), the judge's `score` and `analysis`, and `missing_reason`.

Providers are looked up by the name in `feedback.provider` and imported lazily, so the
sentiment scorer does not import torch and a judge client is loaded only when used.
Adding a provider is one line in `PROVIDERS`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import pandas as pd

from alt_core.config import RunConfig
from alt_core.schemas import FEEDBACK, SAMPLES, require_columns

# The columns a provider adds to a samples table, in schema order.
FEEDBACK_COLUMNS = [c for c in FEEDBACK if c not in SAMPLES]
INPUT_COLUMNS = ["prompt", "generation"]

# provider name -> "module:Class" of a FeedbackProvider with a `from_config` classmethod.
PROVIDERS: dict[str, str] = {
    "sentiment": "alt_core.feedback.sentiment:SentimentProvider",
    "reward_model": "alt_core.feedback.reward_model:RewardModelProvider",
    "rule_critic": "alt_core.tasks.demo.rule_critic:RuleCriticProvider",
    "judge": "alt_core.feedback.judge.provider:JudgeProvider",
}


class FeedbackProvider(ABC):
    """Scores generations. Implementations keep any model or client they need between
    calls; `close` releases it."""

    name: str = "provider"
    # Where a slow provider prints `progress DONE/TOTAL` lines (alt_core.runtime.progress) as it
    # scores; None: nowhere. Set by whoever runs the provider.
    progress: Callable[[str], None] | None = None

    @classmethod
    @abstractmethod
    def from_config(cls, config: RunConfig) -> FeedbackProvider:
        """Build the provider from a run configuration."""

    @abstractmethod
    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        """Feedback for each row of `df` (needs columns prompt, generation).

        Returns a table with the same index as `df` and the columns FEEDBACK_COLUMNS."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release models or connections."""


def feedback_frame(
    index: pd.Index,
    reward: np.ndarray | pd.Series | float = np.nan,
    feedback: pd.Series | None = None,
    score: np.ndarray | pd.Series | float = np.nan,
    analysis: pd.Series | None = None,
    missing_reason: pd.Series | None = None,
) -> pd.DataFrame:
    """A FEEDBACK_COLUMNS table on `index`; text columns default to None."""
    none = pd.Series([None] * len(index), index=index, dtype=object)
    frame = pd.DataFrame(
        {
            "reward": pd.Series(reward, index=index, dtype="float64"),
            "feedback": none if feedback is None else feedback.astype(object),
            "score": pd.Series(score, index=index, dtype="float64"),
            "analysis": none if analysis is None else analysis.astype(object),
            "missing_reason": none if missing_reason is None else missing_reason.astype(object),
        },
        index=index,
    )
    return frame[FEEDBACK_COLUMNS]


def missing_generations(df: pd.DataFrame) -> pd.Series:
    """Rows whose generation is absent (None / NaN), as opposed to an empty string."""
    require_columns(df, INPUT_COLUMNS, "the table to score")
    return df["generation"].isna()


def reason_where(mask: pd.Series, reason: str) -> pd.Series:
    """`reason` where `mask` is true, None elsewhere (a `missing_reason` column)."""
    return pd.Series(reason, index=mask.index, dtype=object).where(mask.astype(bool), None)


def get_provider(config: RunConfig) -> FeedbackProvider:
    """The provider named by `config.feedback.provider`, built from the config."""
    name = config.feedback.provider
    if name not in PROVIDERS:
        raise ValueError(f"unknown feedback.provider {name!r}; choose one of {sorted(PROVIDERS)}")
    module_name, _, class_name = PROVIDERS[name].partition(":")
    provider_cls = getattr(importlib.import_module(module_name), class_name)
    return provider_cls.from_config(config)
