"""Unit tests of the datapool: buckets, flush, pool updates and the training-set draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alt_core.config import RunConfig
from alt_core.datapool import (
    assign_quantiles,
    assign_score_buckets,
    draw_training_set,
    eos_rule,
    flush,
    pool_stats,
    update_pool,
)
from alt_core.schemas import FEEDBACK, POOL, TRAIN, SchemaError

JUDGE = {"provider": "rule_critic"}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def feedback_rows(
    rewards: dict[int, list[float]],
    truncated: dict[int, list[bool]] | None = None,
    scores: dict[int, list[float]] | None = None,
    feedback: dict[int, list[str | None]] | None = None,
) -> pd.DataFrame:
    """A FEEDBACK table with one row per reward, prompts in dict order."""
    frames = []
    for pid, rs in rewards.items():
        n = len(rs)
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": pid,
                    "prompt": f"prompt {pid}",
                    "query": f"prompt {pid}",
                    "sample_idx": range(n),
                    "generation": [f"gen {pid}-{i}." for i in range(n)],
                    "num_tokens": 3,
                    "truncated": (truncated or {}).get(pid, [False] * n),
                    "reward": rs,
                    "feedback": (feedback or {}).get(pid, [None] * n),
                    "score": (scores or {}).get(pid, [np.nan] * n),
                    "analysis": None,
                    "missing_reason": None,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[FEEDBACK]


def judge_rows(scores: dict[int, list[float]], **kw) -> pd.DataFrame:
    """Judge feedback rows: feedback text names the score, reward is missing."""
    fb = {pid: [f"score was {s}" for s in ss] for pid, ss in scores.items()}
    rewards = {pid: [np.nan] * len(ss) for pid, ss in scores.items()}
    return feedback_rows(rewards, scores=scores, feedback=fb, **kw)


def pool_from(df: pd.DataFrame, bucket: list[int], iteration: int = 1) -> pd.DataFrame:
    return df.assign(bucket=bucket, iteration=iteration)[POOL]


def bucket_sizes(df: pd.DataFrame, pid: int | None = None) -> list[int]:
    rows = df if pid is None else df[df["prompt_id"] == pid]
    return rows.groupby("bucket").size().sort_index().tolist()


# --------------------------------------------------------------------------- quantiles


def test_quantiles_remainder_goes_to_last_bucket():
    rewards = [0.5, 3.0, -1.0, 2.0, 0.0, 1.0, 4.0]
    out = assign_quantiles(feedback_rows({0: rewards}), 3)
    assert bucket_sizes(out) == [2, 2, 3]
    by_bucket = out.groupby("bucket")["reward"]
    assert sorted(by_bucket.get_group(0)) == [3.0, 4.0]
    assert sorted(by_bucket.get_group(1)) == [1.0, 2.0]
    assert sorted(by_bucket.get_group(2)) == [-1.0, 0.0, 0.5]
    # Input order is kept.
    assert out["reward"].tolist() == rewards


def test_quantiles_divisible_count_gives_equal_buckets():
    out = assign_quantiles(feedback_rows({0: list(range(10))}), 5)
    assert bucket_sizes(out) == [2] * 5
    assert out.set_index("reward")["bucket"].loc[[9, 8, 1, 0]].tolist() == [0, 0, 4, 4]


def test_quantiles_are_per_prompt_not_global():
    # Prompt 1's rewards are all below prompt 0's: global cuts would put them all last.
    df = feedback_rows({0: [10.0, 11.0, 12.0, 13.0], 1: [-4.0, -3.0, -2.0, -1.0]})
    out = assign_quantiles(df, 2)
    for pid in (0, 1):
        rows = out[out["prompt_id"] == pid]
        assert bucket_sizes(rows) == [2, 2]
        assert (
            rows.loc[rows["bucket"] == 0, "reward"].min()
            > rows.loc[rows["bucket"] == 1, "reward"].max()
        )


def test_quantiles_drop_missing_reward():
    df = feedback_rows({0: [1.0, np.nan, 2.0, 3.0, np.nan]})
    out = assign_quantiles(df, 3)
    assert out["reward"].tolist() == [1.0, 2.0, 3.0]
    assert out["bucket"].tolist() == [2, 1, 0]
    assert out.index.tolist() == [0, 1, 2]


def test_quantiles_fewer_rows_than_quantiles_bucket_is_rank():
    out = assign_quantiles(feedback_rows({0: [1.0, 5.0], 1: [7.0]}), 5)
    assert out["bucket"].tolist() == [1, 0, 0]


def test_quantiles_ties_keep_row_order():
    out = assign_quantiles(feedback_rows({0: [1.0] * 6}), 3)
    assert out["bucket"].tolist() == [0, 0, 1, 1, 2, 2]


def test_quantiles_do_not_mutate_input_and_handle_empty():
    df = feedback_rows({0: [1.0, 2.0, np.nan]})
    before = df.copy()
    assign_quantiles(df, 2)
    pd.testing.assert_frame_equal(df, before)
    empty = assign_quantiles(df.iloc[:0], 2)
    assert empty.empty and "bucket" in empty.columns
    with pytest.raises(ValueError, match="num_quantiles"):
        assign_quantiles(df, 0)


def test_score_buckets_dense_rank_and_missing_dropped():
    df = judge_rows({0: [3, 1, 3, 0], 1: [1, 2, np.nan]})
    df.loc[3, "feedback"] = None  # prompt 0's score-0 row has no feedback
    df.loc[1, "feedback"] = "  "  # a blank feedback is missing too
    out = assign_score_buckets(df)
    # Scores present: 3, 2, 1 -> buckets 0, 1, 2 (pool-wide, highest first).
    assert out["score"].tolist() == [3, 3, 1, 2]
    assert out["bucket"].tolist() == [0, 0, 2, 1]
    assert out["feedback"].tolist() == ["score was 3", "score was 3", "score was 1", "score was 2"]


# --------------------------------------------------------------------------- flush


def test_flush_one_empties_and_zero_keeps_everything():
    df = feedback_rows({0: [1.0, 2.0, 3.0], 1: [4.0, 5.0]})
    pool = pool_from(df, [0, 1, 2, 0, 1])
    emptied = flush(pool, 1.0, rng())
    assert emptied.empty and list(emptied.columns) == POOL
    pd.testing.assert_frame_equal(flush(pool, 0.0, rng()), pool)
    assert flush(pool.iloc[:0], 0.5, rng()).empty
    with pytest.raises(ValueError, match="drop_factor"):
        flush(pool, 1.5, rng())


def test_flush_half_keeps_rounded_share_per_prompt():
    df = feedback_rows({0: [0.0] * 10, 1: [0.0] * 5, 2: [0.0], 3: [0.0] * 4})
    pool = pool_from(df, [0] * len(df))
    kept = flush(pool, 0.5, rng())
    # 10 -> 5, 5 -> 2.5 -> 3 (halves round up), 1 -> 1, 4 -> 2.
    assert kept.groupby("prompt_id").size().to_dict() == {0: 5, 1: 3, 2: 1, 3: 2}
    # Float error does not flip a half: (1 - 0.3) * 5 = 3.5 -> 4.
    assert len(flush(pool[pool["prompt_id"] == 1], 0.3, rng())) == 4


def test_flush_takes_evenly_from_buckets():
    df = feedback_rows({0: [0.0] * 20, 1: [0.0] * 20})
    pool = pool_from(df, [b for b in range(5) for _ in range(4)] * 2)
    for seed in range(5):
        kept = flush(pool, 0.5, rng(seed))
        assert bucket_sizes(kept, 0) == [2] * 5
        assert bucket_sizes(kept, 1) == [2] * 5


def test_flush_short_bucket_passes_its_share_on():
    # Buckets of 1, 5 and 6 rows; keeping 6 of 12 -> 2 per bucket, but bucket 0 has 1.
    df = feedback_rows({0: [0.0] * 12})
    pool = pool_from(df, [0] + [1] * 5 + [2] * 6)
    kept = flush(pool, 0.5, rng())
    assert len(kept) == 6
    assert bucket_sizes(kept) == [1, 3, 2]


def test_flush_is_random_and_deterministic_given_seed():
    df = feedback_rows({0: [0.0] * 40})
    pool = pool_from(df, [0] * 40)
    a = flush(pool, 0.5, rng(1))
    pd.testing.assert_frame_equal(a, flush(pool, 0.5, rng(1)))
    assert a["generation"].tolist() != flush(pool, 0.5, rng(2))["generation"].tolist()
    assert a["generation"].tolist() != pool["generation"].head(20).tolist()


# --------------------------------------------------------------------------- update_pool


def test_update_pool_quark_sets_tokens_iteration_and_drops_missing():
    config = RunConfig(method="quark", datapool={"num_quantiles": 2})
    new = feedback_rows({0: [1.0, 4.0, np.nan, 2.0, 3.0], 1: [5.0, 6.0]})
    pool = update_pool(None, new, config, iteration=1, rng=rng())
    assert list(pool.columns) == POOL
    assert len(pool) == 6
    assert (pool["iteration"] == 1).all()
    p0 = pool[pool["prompt_id"] == 0].set_index("reward")
    assert p0.loc[[4.0, 3.0, 2.0, 1.0], "bucket"].tolist() == [0, 0, 1, 1]
    assert p0.loc[[4.0, 1.0], "feedback"].tolist() == ["_QUANTILE_TOKEN_0_", "_QUANTILE_TOKEN_1_"]


def test_update_pool_alt_rm_uses_phrases():
    config = RunConfig(method="alt_rm")
    new = feedback_rows({0: [5.0, 4.0, 3.0, 2.0, 1.0]})
    pool = update_pool(pd.DataFrame(columns=POOL), new, config, iteration=1, rng=rng())
    assert pool["feedback"].tolist() == ["Excellent.", "Good.", "Mediocre.", "Bad.", "Horrible."]


def test_update_pool_requantiles_old_and_new_rows_together():
    config = RunConfig(method="quark", datapool={"num_quantiles": 2, "drop_factor": 0.0})
    first = update_pool(None, feedback_rows({0: [1.0, 2.0]}), config, 1, rng())
    assert first["bucket"].tolist() == [1, 0]
    second = update_pool(first, feedback_rows({0: [3.0, 4.0]}), config, 2, rng())
    assert second["iteration"].tolist() == [1, 1, 2, 2]
    # The old best (2.0) now sits in the worse half, and its token follows.
    assert second["bucket"].tolist() == [1, 1, 0, 0]
    assert second["feedback"].tolist()[1] == "_QUANTILE_TOKEN_1_"


def test_update_pool_default_drop_factor_replaces_old_rows():
    config = RunConfig(method="quark")
    first = update_pool(None, feedback_rows({0: [1.0, 2.0]}), config, 1, rng())
    second = update_pool(first, feedback_rows({1: [3.0, 4.0]}), config, 2, rng())
    assert second["prompt_id"].tolist() == [1, 1]
    assert (second["iteration"] == 2).all()


def test_update_pool_judge_keeps_scores_and_feedback():
    config = RunConfig(method="alt_lmu", feedback=JUDGE)
    new = judge_rows({0: [3, 0, np.nan, 2], 1: [1]})
    pool = update_pool(None, new, config, iteration=1, rng=rng())
    assert pool["score"].tolist() == [3, 0, 2, 1]
    assert pool["bucket"].tolist() == [0, 3, 1, 2]
    assert pool["feedback"].tolist() == ["score was 3", "score was 0", "score was 2", "score was 1"]


def test_update_pool_empty_inputs_and_schema_errors():
    config = RunConfig(method="quark")
    empty = update_pool(None, feedback_rows({0: [1.0]}).iloc[:0], config, 1, rng())
    assert empty.empty and list(empty.columns) == POOL
    with pytest.raises(SchemaError, match="reward"):
        update_pool(None, feedback_rows({0: [1.0]}).drop(columns="reward"), config, 1, rng())


# --------------------------------------------------------------------------- draw


def quark_pool(config: RunConfig, rewards: dict[int, list[float]], **kw) -> pd.DataFrame:
    return update_pool(None, feedback_rows(rewards, **kw), config, 1, rng())


def test_draw_is_balanced_per_quantile():
    config = RunConfig(method="quark", datapool={"num_quantiles": 3, "num_samples_per_quantile": 2})
    pool = quark_pool(config, {0: list(np.linspace(0, 1, 12)), 1: [0.1, 0.2, 0.3, 0.4]})
    train = draw_training_set(pool, config, rng())
    assert list(train.columns) == TRAIN
    assert bucket_sizes(train, 0) == [2, 2, 2]
    # Prompt 1 has 4 rows in buckets of 1, 1, 2: a short bucket gives what it has.
    assert bucket_sizes(train, 1) == [1, 1, 2]


def test_draw_prefers_complete_generations_and_falls_back():
    config = RunConfig(method="quark", datapool={"num_quantiles": 2, "num_samples_per_quantile": 2})
    # Bucket 0: 3 complete + 3 truncated; bucket 1: 1 complete + 5 truncated.
    truncated = [False, True, False, True, False, True] + [True, True, False, True, True, True]
    pool = quark_pool(config, {0: list(range(12, 0, -1))}, truncated={0: truncated})
    for seed in range(10):
        train = draw_training_set(pool, config, rng(seed))
        picked = pool.set_index(" " + pool["generation"]).loc[train["response"]]
        flags = picked.groupby("bucket")["truncated"].apply(sorted).to_dict()
        assert flags == {0: [False, False], 1: [False, True]}


def test_draw_quark_and_alt_rm_compose_queries():
    rewards = {7: [2.0, 1.0]}
    quark = RunConfig(method="quark", datapool={"num_quantiles": 2, "num_samples_per_quantile": 1})
    train = draw_training_set(quark_pool(quark, rewards), quark, rng())
    assert train["query"].tolist() == ["_QUANTILE_TOKEN_0_prompt 7", "_QUANTILE_TOKEN_1_prompt 7"]
    assert train["reference_query"].tolist() == ["prompt 7", "prompt 7"]
    assert train["response"].tolist() == [" gen 7-0.", " gen 7-1."]
    assert train["bucket"].tolist() == [0, 1]

    alt_rm = RunConfig(
        method="alt_rm",
        datapool={
            "num_quantiles": 2,
            "num_samples_per_quantile": 1,
            "quantile_phrases": ["Excellent.", "Bad."],
        },
    )
    train = draw_training_set(quark_pool(alt_rm, rewards), alt_rm, rng())
    assert train["query"].tolist() == ["Excellent. input: prompt 7", "Bad. input: prompt 7"]
    assert train["reference_query"].tolist() == train["query"].tolist()


def test_draw_judge_composes_feedback_query():
    config = RunConfig(method="alt_lmu", feedback=JUDGE)
    pool = update_pool(None, judge_rows({3: [2]}), config, 1, rng())
    train = draw_training_set(pool, config, rng())
    assert train["query"].tolist() == ["feedback: score was 2 input: prompt 3"]
    assert train["reference_query"].tolist() == train["query"].tolist()


def test_spread_draw_short_bucket_passes_share_on():
    config = RunConfig(method="alt_lmc", feedback=JUDGE, datapool={"num_samples_per_prompt": 8})
    # Score 3 has one row, the others five each: 8 over 4 buckets would be 2 each.
    scores = {0: [3] + [2] * 5 + [1] * 5 + [0] * 5}
    pool = update_pool(None, judge_rows(scores), config, 1, rng())
    for seed in range(5):
        train = draw_training_set(pool, config, rng(seed))
        # Round-robin: 1 from bucket 0, then its unused share goes to the next buckets.
        assert bucket_sizes(train) == [1, 3, 2, 2]


def test_spread_draw_fills_from_rows_not_taken_and_caps_at_pool():
    config = RunConfig(method="steerlm", feedback=JUDGE, datapool={"num_samples_per_prompt": 8})
    scores = {0: [3, 2] + [0] * 10, 1: [3, 2, 1]}
    pool = update_pool(None, judge_rows(scores), config, 1, rng())
    train = draw_training_set(pool, config, rng())
    # Pool-wide buckets: 3 -> 0, 2 -> 1, 1 -> 2, 0 -> 3; prompt 0 has no score 1.
    assert bucket_sizes(train, 0) == [1, 1, 6]
    assert len(train[train["prompt_id"] == 1]) == 3
    assert not train.duplicated(["prompt_id", "response"]).any()


def test_spread_draw_prefers_complete_generations():
    config = RunConfig(method="alt_lmu", feedback=JUDGE, datapool={"num_samples_per_prompt": 2})
    scores = {0: [3, 3, 3, 2, 2, 2]}
    truncated = {0: [True, False, True, True, True, False]}
    pool = update_pool(None, judge_rows(scores, truncated=truncated), config, 1, rng())
    for seed in range(10):
        train = draw_training_set(pool, config, rng(seed))
        assert sorted(train["response"]) == [" gen 0-1.", " gen 0-5."]


def test_draw_is_deterministic_given_seed():
    config = RunConfig(method="alt_rm", datapool={"num_samples_per_quantile": 1})
    pool = quark_pool(config, {p: list(np.arange(20.0)) for p in range(5)})
    a = draw_training_set(pool, config, rng(3))
    pd.testing.assert_frame_equal(a, draw_training_set(pool, config, rng(3)))
    assert a["response"].tolist() != draw_training_set(pool, config, rng(4))["response"].tolist()


def test_draw_empty_pool_and_schema_error():
    config = RunConfig(method="quark")
    for empty in (None, pd.DataFrame(columns=POOL)):
        train = draw_training_set(empty, config, rng())
        assert train.empty and list(train.columns) == TRAIN
    with pytest.raises(SchemaError, match="bucket"):
        draw_training_set(feedback_rows({0: [1.0]}), config, rng())


def test_draw_sets_append_eos_by_rule():
    config = RunConfig(method="quark", datapool={"num_quantiles": 1, "num_samples_per_quantile": 4})
    pool = quark_pool(config, {0: [4.0, 3.0, 2.0, 1.0]}, truncated={0: [False, True, True, False]})
    pool["generation"] = ["no stop", "cut mid", "cut at end.", "done"]
    train = draw_training_set(pool, config, rng()).set_index("response")
    assert train.loc[[" no stop", " cut mid", " cut at end.", " done"], "append_eos"].tolist() == [
        True,
        False,
        True,
        True,
    ]


# --------------------------------------------------------------------------- eos rule


@pytest.mark.parametrize(
    ("generation", "truncated", "expected"),
    [
        ("A finished sentence.", False, True),
        ("an unfinished thought", False, True),  # stopped by the model itself
        ("an unfinished thought", True, False),
        ("A finished sentence.", True, True),
        ("Really?", True, True),
        ("Wow!  \n", True, True),
        ('He said "stop."', True, True),
        ("(as noted.)", True, True),
        ("She wrote ‘fine!’ ", True, True),
        ("Ellipsis…", True, True),
        ("ends with a comma,", True, False),
        ("a.b c", True, False),
        ("", True, False),
        ("", False, True),
    ],
)
def test_eos_rule(generation, truncated, expected):
    out = eos_rule(pd.Series([generation]), pd.Series([truncated]))
    assert out.dtype == bool
    assert out.tolist() == [expected]


def test_eos_rule_keeps_index_and_handles_missing():
    gen = pd.Series(["cut", None, "ok."], index=[5, 6, 7])
    out = eos_rule(gen, pd.Series([True, True, None], index=[5, 6, 7]))
    assert out.index.tolist() == [5, 6, 7]
    assert out.tolist() == [False, False, True]


# --------------------------------------------------------------------------- stats


def test_pool_stats():
    config = RunConfig(method="quark", datapool={"num_quantiles": 2})
    pool = quark_pool(
        config, {0: [4.0, 3.0, 2.0, 1.0], 1: [1.0, 0.0]}, truncated={0: [True, False, False, False]}
    )
    stats = pool_stats(pool)
    assert stats["rows"] == 6
    assert stats["prompts"] == 2
    assert stats["rows_per_bucket"] == {0: 3, 1: 3}
    assert stats["mean_reward_per_bucket"] == pytest.approx({0: 8 / 3, 1: 1.0})
    assert stats["mean_score_per_bucket"] == {0: None, 1: None}
    assert stats["truncated_share"] == pytest.approx(1 / 6)
    assert pool_stats(pd.DataFrame(columns=POOL))["rows"] == 0
