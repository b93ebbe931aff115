"""The ALT datapool and the balanced draw of each iteration's training set.

Pure table functions: they take DataFrames (and a numpy Generator for every random
choice) and return new DataFrames with a fresh RangeIndex; they never open files and
never modify their inputs. Everything is vectorised with groupby / cumcount /
sort_values, so a pool of a few hundred thousand generations is handled in well under
a second.

Buckets. Bucket 0 is always the best. A method's `bucket_rule` (`alt_core.methods`)
picks one of two rules, and with it the draw below:
- "reward_quantiles" (Quark, ALT_RM): per prompt, the generations sorted by reward (highest
  first, ties kept in row order) are cut into Q buckets of n // Q rows; the remainder of
  n / Q goes to the last (worst) bucket. When a prompt has fewer than Q generations each
  one gets its own bucket in rank order (bucket = rank), so the best sample is always in
  bucket 0 and only the worst buckets are empty.
- "score_rank" (ALT_LMU, ALT_LMC, SteerLM): bucket = dense rank of the judge score,
  highest first, over the distinct scores present in the whole pool (scores 0..3 all
  present: bucket = 3 - score). Providers must therefore give higher scores to better
  generations. The numbering is pool-wide so that a bucket means the same score for
  every prompt; the spread draw only skips empty buckets, so it is unaffected.

Balancing. Flush and the judge draw share one ordering: within each (prompt, bucket) the
rows get a random rank, then each prompt's rows are ordered by (rank, bucket) and the
first k are taken. That is a round-robin over the buckets in which a short bucket
simply drops out, handing its unused share to the others; when k is not a multiple of
the number of buckets, the better buckets get the extra row.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from alt_core.config import RunConfig
from alt_core.methods import (
    best_feedback,
    bucket_text,
    compose_queries,
    default_exemplar,
    method_spec,
    reference_queries,
)
from alt_core.schemas import POOL, TRAIN, require_columns

# Columns a feedback table must carry for the pool to ingest it.
POOL_INPUT = ["prompt_id", "prompt", "generation", "truncated", "reward", "feedback", "score"]

# dtypes of empty results, so an empty table still writes a meaningful Parquet schema.
_DTYPES = {
    "truncated": "bool",
    "reward": "float64",
    "score": "float64",
    "bucket": "int64",
    "iteration": "int64",
    "append_eos": "bool",
}

# A generation ends a sentence when its last character, after trailing whitespace and
# closing quotes/brackets are stripped, is one of these.
_SENTENCE_END = r"[.!?…。！？]"
_CLOSERS = "\"'”’»)]}"
_SENTENCE_END_RE = rf"{_SENTENCE_END}[\s{re.escape(_CLOSERS)}]*$"


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "object")) for c in columns})


def _round_half_up(x: pd.Series) -> pd.Series:
    # Python's round() goes to even (2.5 -> 2); half-up is easier to state and test. The
    # epsilon absorbs float error such as (1 - 0.3) * 5 = 3.4999999999999996.
    return np.floor(x + 0.5 + 1e-9).astype("int64")


def _truncated(df: pd.DataFrame) -> pd.Series:
    return df["truncated"].fillna(False).astype(bool)


# --------------------------------------------------------------------------- buckets


def assign_quantiles(df: pd.DataFrame, num_quantiles: int) -> pd.DataFrame:
    """Per-prompt reward quantiles (Quark, ALT_RM).

    Rows with a missing reward are dropped. Returns the remaining rows in their input
    order with an int `bucket` column (0 = highest rewards). Per prompt with n rows:
    buckets of n // Q rows, the remainder in the last bucket (7 rows, Q=3: 2, 2, 3);
    when n < Q, bucket = rank (the best row in bucket 0). Ties in reward keep row order.
    """
    if num_quantiles < 1:
        raise ValueError(f"num_quantiles must be at least 1, got {num_quantiles}")
    require_columns(df, ["prompt_id", "reward"], "table to bucket by reward")
    out = df[df["reward"].notna()].reset_index(drop=True)
    if out.empty:
        return out.assign(bucket=pd.Series(dtype="int64"))
    # A stable sort on reward alone keeps row order among ties; cumcount then numbers
    # each prompt's rows best first without ever sorting the prompt ids.
    ordered = out.sort_values("reward", ascending=False, kind="stable")
    groups = ordered.groupby("prompt_id", sort=False, dropna=False)
    rank = groups.cumcount().to_numpy()
    size = groups["reward"].transform("size").to_numpy() // num_quantiles
    bucket = np.where(size > 0, np.minimum(rank // np.maximum(size, 1), num_quantiles - 1), rank)
    out["bucket"] = pd.Series(bucket, index=ordered.index).sort_index().astype("int64")
    return out


def _feedback_missing(feedback: pd.Series) -> pd.Series:
    return feedback.isna() | feedback.astype("string").str.strip().eq("").fillna(True)


def assign_score_buckets(df: pd.DataFrame) -> pd.DataFrame:
    """Judge buckets (ALT_LMU, ALT_LMC, SteerLM): dense rank of the score, highest first.

    Rows whose feedback (None, NaN or blank) or score is missing are dropped; the
    feedback text is kept exactly as the judge wrote it. Returns the remaining rows in
    input order with an int `bucket` column.
    """
    require_columns(df, ["feedback", "score"], "table to bucket by judge score")
    keep = df["score"].notna() & ~_feedback_missing(df["feedback"])
    out = df[keep].reset_index(drop=True)
    rank = out["score"].rank(method="dense", ascending=False) - 1
    out["bucket"] = rank.astype("int64")
    return out


# --------------------------------------------------------------------------- balancing


def _bucket_rank(df: pd.DataFrame, rng: np.random.Generator, prefer_complete: bool) -> np.ndarray:
    """A random rank of each row within its (prompt, bucket); with `prefer_complete`,
    rows with truncated == False come first. `df` must have a RangeIndex."""
    key = pd.DataFrame(
        {"prompt_id": df["prompt_id"], "bucket": df["bucket"], "u": rng.random(len(df))}
    )
    by = ["u"]
    if prefer_complete:
        key["t"] = _truncated(df)
        by = ["t", "u"]
    ordered = key.sort_values(by, kind="stable")
    rank = ordered.groupby(["prompt_id", "bucket"], sort=False, dropna=False).cumcount()
    return rank.sort_index().to_numpy()


def _spread_position(df: pd.DataFrame, rank: np.ndarray) -> np.ndarray:
    """Each row's turn in a round-robin over its prompt's buckets (0 = taken first)."""
    key = pd.DataFrame({"prompt_id": df["prompt_id"], "bucket": df["bucket"], "rank": rank})
    ordered = key.sort_values(["rank", "bucket"], kind="stable")
    return ordered.groupby("prompt_id", sort=False, dropna=False).cumcount().sort_index().to_numpy()


def flush(pool: pd.DataFrame, drop_factor: float, rng: np.random.Generator) -> pd.DataFrame:
    """Drop a `drop_factor` share of the pool before new samples are added.

    1.0 empties it, 0.0 keeps everything. In between each prompt keeps
    round((1 - drop_factor) * n) of its n rows (halves round up), picked at random and
    evenly over its buckets. Kept rows stay in pool order.
    """
    if not 0.0 <= drop_factor <= 1.0:
        raise ValueError(
            f"drop_factor must lie in [0, 1] (datapool.drop_factor), got {drop_factor}"
        )
    if pool is None:
        return _empty(POOL)
    if pool.empty or drop_factor >= 1.0:
        return pool.iloc[:0].reset_index(drop=True)
    require_columns(pool, ["prompt_id", "bucket"], "datapool to flush")
    pool = pool.reset_index(drop=True)
    if drop_factor <= 0.0:
        return pool.copy()
    n = pool.groupby("prompt_id", sort=False, dropna=False)["bucket"].transform("size")
    keep = _round_half_up((1.0 - drop_factor) * n).to_numpy()
    # The pool is kept uniformly at random, not complete-first: flushing should not
    # shift the pool's make-up; the draw applies the truncation preference later.
    position = _spread_position(pool, _bucket_rank(pool, rng, prefer_complete=False))
    return pool[position < keep].reset_index(drop=True)


# --------------------------------------------------------------------------- the pool


def update_pool(
    pool: pd.DataFrame | None,
    new_rows: pd.DataFrame,
    config: RunConfig,
    iteration: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Flush the pool, add this iteration's feedback rows and re-bucket everything.

    `pool` (POOL columns; None or empty on the first iteration) is flushed by
    `config.datapool.drop_factor`. `new_rows` (FEEDBACK columns) are tagged with
    `iteration`. Reward methods re-cut per-prompt quantiles over the whole pool and set
    `feedback` to the bucket's token / phrase; judge methods bucket by score and keep
    the judge's feedback and score. Returns POOL columns only.
    """
    require_columns(new_rows, POOL_INPUT, "feedback table added to the datapool")
    if pool is not None and not pool.empty:
        require_columns(pool, POOL, "datapool")
    kept = flush(pool, config.datapool.drop_factor, rng)
    added = new_rows[POOL_INPUT].assign(iteration=iteration)
    parts = [p[POOL_INPUT + ["iteration"]] for p in (kept, added) if not p.empty]
    if not parts:
        return _empty(POOL)
    combined = pd.concat(parts, ignore_index=True)
    combined["truncated"] = _truncated(combined)
    combined["iteration"] = combined["iteration"].astype("int64")
    if method_spec(config).bucket_rule == "score_rank":
        out = assign_score_buckets(combined)
    else:
        out = assign_quantiles(combined, config.datapool.num_quantiles)
        out["feedback"] = bucket_text(config, out["bucket"])
    return out[POOL] if not out.empty else _empty(POOL)


# --------------------------------------------------------------------------- training set


def eos_rule(generation: pd.Series, truncated: pd.Series) -> pd.Series:
    """Whether to append EOS to each response.

    Always, except when the generation was cut off at max_new_tokens and does not end a
    sentence: teaching the model to stop there would teach it to stop after exactly
    max_new_tokens. A sentence ends with . ! ? … (or 。！？), possibly followed by
    closing quotes / brackets and whitespace.
    """
    text = generation.fillna("").astype(str)
    ends_sentence = text.str.contains(_SENTENCE_END_RE, regex=True)
    cut_off = truncated.fillna(False).astype(bool).to_numpy()
    return pd.Series(~cut_off | ends_sentence.to_numpy(), index=generation.index, dtype=bool)


def _select(pool: pd.DataFrame, config: RunConfig, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the pool rows that go into the training set."""
    rank = _bucket_rank(pool, rng, prefer_complete=True)
    if method_spec(config).bucket_rule == "reward_quantiles":
        return rank < config.datapool.num_samples_per_quantile
    return _spread_position(pool, rank) < config.datapool.num_samples_per_prompt


def draw_training_set(
    pool: pd.DataFrame, config: RunConfig, rng: np.random.Generator
) -> pd.DataFrame:
    """The balanced training set of one iteration (TRAIN columns), in pool order.

    Quark / ALT_RM: `num_samples_per_quantile` rows from each (prompt, bucket). Judge
    methods: `num_samples_per_prompt` rows per prompt spread round-robin over its
    buckets. Within a bucket, generations that were not truncated come first, in random
    order; truncated ones only fill the count.
    """
    if pool is None or pool.empty:
        return _empty(TRAIN)
    require_columns(pool, POOL, "datapool to draw a training set from")
    pool = pool.reset_index(drop=True)
    chosen = pool[_select(pool, config, rng)].reset_index(drop=True)
    if chosen.empty:
        return _empty(TRAIN)
    query = compose_queries(config, chosen["feedback"].astype(str), chosen["prompt"].astype(str))
    # Byte-level BPE engines (GPT-2, vLLM) decode the first generated token with its
    # space (" could"): one space, not two, so the response tokenizes as it was sampled.
    generation = chosen["generation"].fillna("").astype(str).str.lstrip(" ")
    out = pd.DataFrame(
        {
            "prompt_id": chosen["prompt_id"],
            "query": query,
            "reference_query": reference_queries(config, query, chosen["prompt"].astype(str)),
            "response": " " + generation,
            "append_eos": eos_rule(chosen["generation"], chosen["truncated"]),
            "bucket": chosen["bucket"].astype("int64"),
        }
    )
    return out[TRAIN]


# --------------------------------------------------------------------------- exemplar


def top_feedback(pool: pd.DataFrame) -> str:
    """The ALT_LMU exemplar: the feedback written most often for the latest iteration's
    generations with the highest score any of them got; ties go to the shortest text,
    then the alphabetically first, so the choice is deterministic."""
    require_columns(pool, ["feedback", "score", "iteration"], "datapool to choose an exemplar from")
    scored = pool[pool["score"].notna() & ~_feedback_missing(pool["feedback"])]
    if scored.empty:
        raise ValueError(
            "no generation in the datapool has feedback and a score, so there is no exemplar "
            "to condition on; check the feedback shards' missing_reason column (or set "
            "feedback.exemplar_rule=fixed with feedback.exemplar_text)"
        )
    latest = scored[scored["iteration"] == scored["iteration"].max()]
    top = latest.loc[latest["score"] == latest["score"].max(), "feedback"].astype(str)
    counts = top.value_counts().rename("count").reset_index()
    counts["length"] = counts["feedback"].str.len()
    best = counts.sort_values(["count", "length", "feedback"], ascending=[False, True, True])
    return str(best["feedback"].iloc[0])


def choose_exemplar(pool: pd.DataFrame, config: RunConfig) -> str:
    """The exemplar feedback that conditions the next iteration's sampling and validation
    (the method's `exemplar` rule, then `feedback.exemplar_rule`). Quark / ALT_RM: the
    best bucket's token or phrase; ALT_LMU: `top_feedback(pool)`; ALT_LMC / SteerLM: the
    best category / attribute values; with exemplar_rule=fixed, `feedback.exemplar_text`
    for every judge method. (The one exception to "never opens files": an LLM judge's
    labels are read from its template.)"""
    rule = method_spec(config).exemplar
    if rule == "best_bucket":
        return default_exemplar(config)
    if config.feedback.exemplar_rule == "fixed":
        return str(config.feedback.exemplar_text)
    if rule == "top_feedback":
        return top_feedback(pool)
    return best_feedback(config)


# --------------------------------------------------------------------------- stats


def _none_if_nan(x: Any) -> float | None:
    return None if pd.isna(x) else float(x)


def pool_stats(pool: pd.DataFrame) -> dict[str, Any]:
    """Summary of a pool for metrics and reports (plain Python values, NaN as None)."""
    if pool is None or pool.empty:
        return {
            "rows": 0,
            "prompts": 0,
            "rows_per_bucket": {},
            "mean_reward_per_bucket": {},
            "mean_score_per_bucket": {},
            "truncated_share": None,
        }
    require_columns(pool, ["prompt_id", "bucket", "truncated"], "datapool")
    by_bucket = pool.groupby("bucket", sort=True)
    # A judge pool has no rewards and a reward pool no scores: report what exists.
    reward = by_bucket["reward"].mean() if "reward" in pool else pd.Series(dtype=float)
    score = by_bucket["score"].mean() if "score" in pool else pd.Series(dtype=float)
    return {
        "rows": int(len(pool)),
        "prompts": int(pool["prompt_id"].nunique(dropna=False)),
        "rows_per_bucket": {int(b): int(n) for b, n in by_bucket.size().items()},
        "mean_reward_per_bucket": {int(b): _none_if_nan(v) for b, v in reward.items()},
        "mean_score_per_bucket": {int(b): _none_if_nan(v) for b, v in score.items()},
        "truncated_share": float(_truncated(pool).mean()),
    }
