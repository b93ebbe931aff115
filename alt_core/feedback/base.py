"""The feedback-provider interface and its registry.

A provider reads a table of (prompt, generation) rows and returns, for the same rows,
the feedback columns of `schemas.FEEDBACK`: a scalar `reward` (NaN when the feedback is
missing), the `feedback` text (None for pure reward providers: the datapool maps their
reward buckets to text), the judge's `score` and `analysis`, and `missing_reason`.

Missing feedback is a failure, not a result: each missing row has a cause (a provider
says which in an extra `missing_cause` column, one of MISSING_CAUSES), and
`check_complete` refuses a shard whose share of missing rows is above
`feedback.max_missing_share` with a `FeedbackIncompleteError` that names the causes and
what to fix. Rows without a generation are the sampler's loss, not the provider's: they
are counted apart and never fail a shard.

Providers are looked up by the name in `feedback.provider` and imported lazily, so the
sentiment scorer does not import torch and a judge client is loaded only when used.
Adding a provider is one line in `PROVIDERS`.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from alt_core.config import RunConfig
from alt_core.runtime.progress import ProgressLog
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
    "toxicity_classifier": "alt_core.feedback.toxicity:ClassifierToxicityProvider",
    "perspective": "alt_core.feedback.perspective:PerspectiveProvider",
    "profanity": "alt_core.feedback.toxicity:ProfanityProvider",
}

# Why a row's feedback is missing -> what to do about it. The judge client (and the
# Perspective client built on it) sets the first eight, the reward model and the
# toxicity scorers `non_finite`; `unknown` is a missing row whose provider
# gave no cause.
MISSING_CAUSES: dict[str, str] = {
    "unreachable": "nothing accepted a connection at feedback.judge.base_url: start the judge "
    "or fix the URL, and check that it is reachable from where the shards run",
    "timeout": "the judge took longer than feedback.judge.timeout_s to answer: raise it, or "
    "lower feedback.judge.max_concurrency if the judge is overloaded",
    "dropped": "the judge closed connections without answering: check its logs (a crash or a "
    "proxy cutting requests off)",
    "unauthorized": "the judge refused the credentials (HTTP 401/403): put a valid key in the "
    "environment variable named by feedback.judge.api_key_env (or the Secret block "
    "feedback.judge.api_key_secret_block)",
    "rate_limited": "the judge still answered 429 after every retry (a rate limit or a spent "
    "budget): wait or raise the quota, or set feedback.judge.requests_per_minute / "
    "tokens_per_minute below it",
    "server_error": "the judge answered HTTP 5xx after every retry: check its logs",
    "rejected": "the judge rejected the requests (HTTP 4xx): check feedback.judge.model and "
    "extra_body, and that the prompts fit its context",
    "bad_response": "the answers were not chat completions: check that feedback.judge.base_url "
    "is the root of an OpenAI-compatible API (…/v1)",
    "unparseable": "the judge answered, but not in the template's format, even after a repair "
    "request: check feedback.judge.template and the judge model (unparseable answers are "
    "cached: set feedback.judge.cache_unparsed=false to ask again)",
    "non_finite": "the reward model or toxicity scorer returned NaN, infinite or out-of-range "
    "scores: check feedback.reward_model / feedback.toxicity and the numerical precision",
    "unknown": "the provider gave no cause: read the shard's missing_reason column",
}
NO_GENERATION = "no_generation"  # the cause of a row that had nothing to score


class FeedbackProvider(ABC):
    """Scores generations. Implementations keep any model or client they need between
    calls; `close` releases it."""

    name: str = "provider"
    # What one row is called in a failure message, and what a rerun costs.
    unit: str = "rows"
    resume_note: str = ""
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


def score_in_batches(
    texts: list[str],
    batch_size: int,
    score: Callable[[list[str]], Any],
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """`score` applied `batch_size` texts at a time, shortest first (a batch pads to its
    longest text, so sorting by length pads little), back in input order: shape (N,).
    `score` takes a batch of texts and returns one value per text; `progress` is the
    provider's `progress` line printer, advanced after each batch."""
    out = np.empty(len(texts), dtype=np.float64)
    order = np.argsort([len(t) for t in texts], kind="stable")
    log = ProgressLog(len(texts), "rows", progress)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = np.asarray(score([texts[i] for i in rows]), dtype=np.float64)
        log.advance(len(rows))
    return out


def classifier_logits(tokenizer: Any, model: Any, texts: list[str], max_length: int) -> Any:
    """A sequence classifier's float logits for a batch of texts, shape (B, num_labels):
    padded to the batch's longest text, cut to `max_length` tokens (from the side the
    tokenizer is set to truncate), on the model's device, without gradients."""
    import torch

    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    ).to(model.device)
    with torch.inference_mode():
        return model(**enc).logits.float()


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


class FeedbackIncompleteError(RuntimeError):
    """A feedback shard has too many missing rows to commit (see `check_complete`)."""

    def __init__(self, message: str, causes: dict[str, int], missing: int, rows: int):
        super().__init__(message)
        self.message = message
        self.causes = causes  # cause -> missing rows, most frequent first
        self.missing = missing
        self.rows = rows

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes and Prefect states
        return (type(self), (self.message, self.causes, self.missing, self.rows))

    @property
    def cause(self) -> str:
        """The most frequent cause."""
        return next(iter(self.causes), "unknown")

    def marker(self) -> dict[str, Any]:
        """The failure record written beside the uncommitted output (`alt status` reads it)."""
        return {
            "cause": self.cause,
            "causes": self.causes,
            "missing": self.missing,
            "rows": self.rows,
            "message": self.message,
            "at": time.time(),
        }


def missing_causes(scored: pd.DataFrame) -> pd.Series:
    """The cause of each row's missing feedback, None where the reward is present: the
    provider's `missing_cause` column where it gives one, else the cause its
    `missing_reason` starts with (`non_finite: ...`), `no_generation` for a row without a
    generation, and `unknown` for any other."""
    missing = scored["reward"].isna()
    reason = scored["missing_reason"].astype(object)
    head = reason.where(reason.notna(), "").astype(str).str.split(":", n=1).str[0]
    fallback = head.where(head.isin(list(MISSING_CAUSES)), "unknown")
    fallback = fallback.where(reason.ne("no generation"), NO_GENERATION).astype(object)
    if "missing_cause" in scored:
        given = scored["missing_cause"].astype(object)
        fallback = given.where(given.notna(), fallback)
    return fallback.where(missing, None)


def check_complete(
    scored: pd.DataFrame,
    max_share: float,
    *,
    shard: str,
    rerun: str,
    provider: FeedbackProvider | None = None,
) -> dict[str, int]:
    """Missing rows by cause (most frequent first) when the shard may commit; raises
    FeedbackIncompleteError when more than `max_share` of the rows that had a generation
    are missing. `shard` names the shard, `rerun` the command that resumes the run."""
    causes = missing_causes(scored)
    counts = {str(k): int(v) for k, v in causes.value_counts().items()}
    asked = len(scored) - counts.get(NO_GENERATION, 0)
    failed = {c: n for c, n in counts.items() if c != NO_GENERATION}
    missing = sum(failed.values())
    if not asked or missing / asked <= max_share:
        return counts
    unit = provider.unit if provider is not None else FeedbackProvider.unit
    examples = scored["missing_reason"].groupby(causes).first()
    found = "; ".join(f"{c}: {n} — {_cut(examples.get(c))}" for c, n in failed.items())
    fixes = " ".join(f"{c}: {MISSING_CAUSES.get(c, MISSING_CAUSES['unknown'])}." for c in failed)
    note = f" ({provider.resume_note})" if provider is not None and provider.resume_note else ""
    message = (
        f"{shard}: {missing} of {asked} {unit} missing ({found}), above "
        f"feedback.max_missing_share={max_share:g}: nothing committed. To fix: {fixes} "
        f"Then rerun with `{rerun}`{note}."
    )
    raise FeedbackIncompleteError(message, failed, missing, asked)


def _cut(reason: Any, limit: int = 200) -> str:
    """A missing_reason, short enough for a message (the provider redacted it already)."""
    text = "no reason given" if reason is None or reason != reason else str(reason)
    return text if len(text) <= limit else text[: limit - 1] + "…"
