"""The ALT iteration DAG and the evaluation subflow: wiring only, no logic."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from alt_core import store
from alt_core.config import RunConfig
from alt_core.evaluation import eval_metrics
from alt_core.methods import uses_judge
from alt_core.pipeline import stages as pipeline
from alt_core.store import RunLayout
from tasks_lib import stages
from tasks_lib.common import logger
from tasks_lib.reporting import publish_iteration


def _sample_then_feedback(
    config: RunConfig,
    layout: RunLayout,
    iteration: int,
    stage: str,
    prompts_uri: str,
    model_uri: str,
    greedy: bool,
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Sampling shards, each followed by its feedback shard as soon as it is done."""
    num_rows = store.commit_info(prompts_uri)["rows"]
    specs, fb_specs = pipeline.shard_specs(
        config, layout, iteration, stage, prompts_uri, model_uri, greedy=greedy, num_rows=num_rows
    )
    t0 = time.perf_counter()
    sample_futs = [
        stages.sample_shard.submit(config, spec.to_dict(), f"iter-{iteration}-{stage}-sample-{i}")
        for i, spec in enumerate(specs)
    ]
    fb_futs = [
        stages.feedback_shard.submit(
            config, spec, f"iter-{iteration}-{stage}-feedback-{i}", wait_for=[sf]
        )
        for i, (spec, sf) in enumerate(zip(fb_specs, sample_futs, strict=True))
    ]
    samples = [f.result() for f in sample_futs]
    t1 = time.perf_counter()
    feedback = [f.result() for f in fb_futs]
    times = {f"{stage}_sample_s": t1 - t0, f"{stage}_feedback_s": time.perf_counter() - t1}
    return samples, feedback, times


@flow(name="alt-evaluate", log_prints=True)
def evaluate_policy(
    config: RunConfig, run_dir: str, iteration: int, policy_uri: str, inputs: dict[str, str]
) -> dict[str, Any]:
    """Greedy generations on validation prompts, their reward and reference perplexity."""
    layout = RunLayout(run_dir)
    t0 = time.perf_counter()
    prompts_uri = stages.eval_prompts(config, run_dir, iteration, inputs)
    _, feedback, _ = _sample_then_feedback(
        config, layout, iteration, "eval", prompts_uri, policy_uri, greedy=True
    )
    scored_uri = stages.join_eval_feedback(
        config, layout.table(iteration, "eval", "scored"), [f["uri"] for f in feedback]
    )
    eval_uri = stages.reference_perplexity(
        config, scored_uri, layout.table(iteration, "eval", "eval"), inputs["reference_uri"]
    )
    metrics = eval_metrics(store.read_table(eval_uri))
    metrics["eval_s"] = time.perf_counter() - t0
    return metrics


@flow(name="alt-iteration", log_prints=True)
def alt_iteration(
    config: RunConfig, run_dir: str, iteration: int, inputs: dict[str, str]
) -> dict[str, Any]:
    """One ALT iteration: prompts -> samples -> feedback -> datapool -> training -> eval."""
    layout = RunLayout(run_dir)
    policy_in = inputs["policy_uri"] if iteration == 1 else layout.policy(iteration - 1)
    prompts_uri = stages.draw_prompts(config, run_dir, iteration, inputs)
    _, feedback, times = _sample_then_feedback(
        config, layout, iteration, "train", prompts_uri, policy_in, greedy=False
    )
    feedback_uris = [f["uri"] for f in feedback]
    row: dict[str, Any] = {"iteration": iteration, **times}
    if uses_judge(config):
        from alt_core.feedback.judge.provider import merge_shard_stats

        row.update(merge_shard_stats(feedback))
    row.update(pipeline.feedback_summary(store.read_tables(feedback_uris)))
    t0 = time.perf_counter()
    pool = stages.update_datapool(config, run_dir, iteration, feedback_uris)
    row["datapool_s"] = time.perf_counter() - t0
    row["pool_rows"] = pool["stats"].get("rows")
    row["train_set_rows"] = store.commit_info(pool["train_uri"])["rows"]
    t0 = time.perf_counter()
    trained = stages.train_policy(
        config, run_dir, iteration, pool["train_uri"], policy_in, inputs["reference_uri"]
    )
    row["train_s"] = time.perf_counter() - t0
    row["train_loss"] = trained.get("final_loss")
    row.update(evaluate_policy(config, run_dir, iteration, trained["uri"], inputs))
    store.write_json(store.join(layout.iteration(iteration), "metrics.json"), row)
    publish_iteration(config, run_dir, iteration, row)
    logger().info(f"iteration {iteration}: {row}")
    return row
