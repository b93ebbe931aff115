"""The per-iteration metrics row, assembled from the stages' results and artifacts.

Keys (in this order in `iter_NNN/metrics.json`): iteration; train_sample_s,
train_feedback_s; the judge's counters (judge methods); train_samples and the sampled
reward's mean, sd, missing count, truncated share and length; datapool_s, pool_rows,
train_set_rows; train_s, train_loss; the evaluation's valid_* metrics (on the toxicity
task also valid_toxicity_*) and eval_s; and
`reused`, the stages whose outputs this attempt found committed. Every `*_s` is the
stage's time over all attempts at its current outputs (`pipeline.timings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from alt_core import methods, store
from alt_core.config import RunConfig
from alt_core.evaluation import eval_metrics
from alt_core.pipeline.specs import StageResult


@dataclass
class StagesRun:
    """Every stage's results; its time over all attempts at these outputs (this attempt:
    from the moment the stage it waits on was done, or its submission for the first, to
    its own last result; see `alt_core.pipeline.timings`); and the stages this attempt
    reused whole."""

    results: dict[str, list[StageResult]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def feedback_summary(feedback: pd.DataFrame) -> dict[str, Any]:
    reward = feedback["reward"].astype(float)
    return {
        "train_samples": len(feedback),
        "train_reward_mean": float(reward.mean()),
        "train_reward_std": float(reward.std(ddof=0)),
        "train_missing_feedback": int(reward.isna().sum()),
        "train_truncated_share": float(feedback["truncated"].mean()) if len(feedback) else 0.0,
        "train_gen_tokens": float(feedback["num_tokens"].mean()) if len(feedback) else 0.0,
    }


def evaluation_row(config: RunConfig, run: StagesRun) -> dict[str, Any]:
    """The evaluation's metrics: the task's (`RunConfig.task`; the toxicity task adds the
    expected maximum toxicity, toxicity probability and mean toxicity), its time and the
    stages reused."""
    (scored,) = run.results["perplexity"]
    task, threshold = config.task, config.feedback.toxicity.threshold
    return {
        **eval_metrics(store.read_table(scored.uri), task, threshold),
        "eval_s": sum(run.seconds.values()),
        "reused": list(run.reused),
    }


def iteration_row(config: RunConfig, iteration: int, run: StagesRun) -> dict[str, Any]:
    """The row of iteration k from its stages' results and times."""
    results, seconds = run.results, run.seconds
    row: dict[str, Any] = {"iteration": iteration}
    row["train_sample_s"] = seconds["train_sample"]
    row["train_feedback_s"] = seconds["train_feedback"]
    feedback = results["train_feedback"]
    if methods.uses_judge(config):
        from alt_core.feedback.judge.provider import merge_shard_stats

        row.update(merge_shard_stats([r.stats for r in feedback]))
    row.update(feedback_summary(store.read_tables([r.uri for r in feedback])))
    (pool,) = results["datapool"]
    row["datapool_s"] = seconds["datapool"]
    row["pool_rows"] = pool.stats.get("pool_rows")
    row["train_set_rows"] = pool.stats.get("train_set_rows")
    (trained,) = results["train"]
    row["train_s"] = seconds["train"]
    row["train_loss"] = trained.stats.get("final_loss")
    row["reused"] = list(run.reused)
    return row
