"""The ALT iteration and the evaluation subflow: wiring only, read from the DAG.

    iteration k:   prompts ─▶ train_sample[i] ─▶ train_feedback[i] ─▶ datapool ─▶ train
    evaluation k:  eval_prompts ─▶ eval_sample[i] ─▶ eval_feedback[i] ─▶ eval_join ─▶ perplexity

The stages, their inputs, outputs and config sections are declared once in
`alt_core.pipeline.dag`; each runs as the task of its name (`tasks_lib.stages`). Shards of
a stage run concurrently; a per-shard stage (feedback) starts each shard as soon as the
shard it pairs with is committed.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from alt_core import store
from alt_core.config import RunConfig
from alt_core.pipeline import dag
from alt_core.pipeline.layout import RunInputs, RunLayout
from alt_core.pipeline.metrics import evaluation_row, iteration_row
from alt_core.pipeline.specs import StageResult
from tasks_lib.common import logger
from tasks_lib.reporting import publish_iteration
from tasks_lib.stages import TASKS


def run_stages(
    config: RunConfig, ctx: dag.Ctx, stages: tuple[dag.Stage, ...]
) -> tuple[dict[str, list[StageResult]], dict[str, float]]:
    """Plan and submit each stage in order. Returns every stage's results and its wall
    time: from the moment the stage it waits on was done (its submission, for the first)
    to its own last result."""
    by_name = {s.name: s for s in stages}
    planned: dict[str, list[dag.Node]] = {}
    futures: dict[str, list[Any]] = {}
    results: dict[str, list[StageResult]] = {}
    seconds: dict[str, float] = {}
    mark = time.perf_counter()

    def resolve(name: str) -> None:
        nonlocal mark
        if name in results:
            return
        if paired := by_name[name].per_shard_of:
            resolve(paired)
        results[name] = [f.result() for f in futures[name]]
        seconds[name], mark = time.perf_counter() - mark, time.perf_counter()

    for stage in stages:
        for upstream in stage.after:
            resolve(upstream)
        nodes = planned[stage.name] = stage.plan(ctx, planned)
        task = TASKS[stage.name]
        if stage.per_shard_of:
            pairs = zip(nodes, futures[stage.per_shard_of], strict=True)
            futures[stage.name] = [task.submit(config, n, wait_for=[up]) for n, up in pairs]
        else:
            futures[stage.name] = [task.submit(config, n) for n in nodes]
    for stage in stages:
        resolve(stage.name)
    return results, seconds


@flow(name="alt-evaluate", log_prints=True)
def evaluate_policy(
    config: RunConfig, run_dir: str, iteration: int, inputs: RunInputs
) -> dict[str, Any]:
    """Greedy generations on validation prompts, their reward and reference perplexity."""
    t0 = time.perf_counter()
    ctx = dag.Ctx(config, RunLayout(run_dir), inputs, iteration)
    results, _ = run_stages(config, ctx, dag.EVALUATION)
    return evaluation_row(results, time.perf_counter() - t0)


@flow(name="alt-iteration", log_prints=True)
def alt_iteration(
    config: RunConfig, run_dir: str, iteration: int, inputs: RunInputs
) -> dict[str, Any]:
    """One ALT iteration: prompts -> samples -> feedback -> datapool -> training -> eval."""
    layout = RunLayout(run_dir)
    ctx = dag.Ctx(config, layout, inputs, iteration)
    results, seconds = run_stages(config, ctx, dag.ITERATION)
    row = iteration_row(config, iteration, results, seconds)
    row.update(evaluate_policy(config, run_dir, iteration, inputs))
    store.write_json(store.join(layout.iteration(iteration), "metrics.json"), row)
    publish_iteration(config, run_dir, iteration, row)
    logger().info(f"iteration {iteration}: {row}")
    return row
