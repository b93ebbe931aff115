"""Column layout of every table the pipeline writes, in one place.

One row per prompt (prompts) or per generation (everything after sampling). Stages add
columns; they never rename them.
"""

from __future__ import annotations

import pandas as pd

# Drawn prompts of one iteration. `query` is the conditioned text the policy sees.
PROMPTS = ["prompt_id", "prompt", "query"]
# One row per generation.
SAMPLES = [*PROMPTS, "sample_idx", "generation", "num_tokens", "truncated"]
# Feedback adds a scalar reward (NaN when missing), the feedback text the policy is
# conditioned on (None for pure reward methods until the pool maps buckets to text),
# the judge's score / analysis and why a judgement is missing.
FEEDBACK = [*SAMPLES, "reward", "feedback", "score", "analysis", "missing_reason"]
# Written when the provider gives them: the judge's raw answer.
OPTIONAL_FEEDBACK = ["raw_answer"]
# The datapool: what survives across iterations, with the bucket it falls in
# (quantile index, score or category index; 0 is always the best).
POOL = [
    "prompt_id",
    "prompt",
    "generation",
    "truncated",
    "reward",
    "feedback",
    "score",
    "bucket",
    "iteration",
]
# The training set of one iteration.
TRAIN = ["prompt_id", "query", "reference_query", "response", "append_eos", "bucket"]
# Evaluation rows (evaluation.samples_per_prompt generations per validation prompt, one
# greedy generation by default).
EVAL = [
    "prompt_id",
    "prompt",
    "query",
    "generation",
    "num_tokens",
    "truncated",
    "reward",
    "ref_nll",
    "ref_tokens",
]


class SchemaError(ValueError):
    """A table is missing columns a stage needs."""


def require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")
