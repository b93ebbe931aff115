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
from alt_core.pipeline.metrics import StagesRun, evaluation_row, iteration_row
from alt_core.pipeline.timings import StageTimes, stage_fingerprint
from tasks_lib.common import jobs_end_with_the_flow_run, logger
from tasks_lib.reporting import publish_iteration
from tasks_lib.stages import TASKS


def run_stages(config: RunConfig, ctx: dag.Ctx, stages: tuple[dag.Stage, ...]) -> StagesRun:
    """Plan and submit each stage in order; record each stage's time when it is done or
    has failed.

    A cancel or SIGTERM from Prefect's runner reaches the flow here, where it waits on
    the stages' futures; the jobs end before the flow engine leaves its task runner,
    whose shutdown waits for the stage threads, and so for their jobs
    (`tasks_lib.common.jobs_end_with_the_flow_run`)."""
    with jobs_end_with_the_flow_run():
        return _run_stages(config, ctx, stages)


def _run_stages(config: RunConfig, ctx: dag.Ctx, stages: tuple[dag.Stage, ...]) -> StagesRun:
    by_name = {s.name: s for s in stages}
    planned: dict[str, list[dag.Node]] = {}
    futures: dict[str, list[Any]] = {}
    out = StagesRun()
    times = StageTimes(ctx.layout.timings(ctx.iteration))
    mark = time.perf_counter()

    def resolve(name: str) -> None:
        nonlocal mark
        if name in out.results:
            return
        if paired := by_name[name].per_shard_of:
            resolve(paired)
        try:
            results = [f.result() for f in futures[name]]
        except BaseException:
            times.add(
                name, time.perf_counter() - mark, _fingerprint(config, planned[name]), "failed"
            )
            raise
        fp, reused = _fingerprint(config, planned[name]), all(r.skipped for r in results)
        times.add(name, time.perf_counter() - mark, fp, "done", reused=reused)
        mark = time.perf_counter()
        out.results[name], out.seconds[name] = results, times.total(name, fp)
        if reused:
            out.reused.append(name)

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
    return out


def _fingerprint(config: RunConfig, nodes: list[dag.Node]) -> str | None:
    """The stage's outputs' fingerprint; None when an input cannot be read (then the
    attempt counts towards nothing)."""
    try:
        return stage_fingerprint(n.fingerprint(config) for n in nodes)
    except (store.ArtifactError, OSError, KeyError, ValueError):
        return None


@flow(name="alt-evaluate", log_prints=True)
def evaluate_policy(
    config: RunConfig, run_dir: str, iteration: int, inputs: RunInputs
) -> dict[str, Any]:
    """Generations on validation prompts, their reward and reference perplexity."""
    ctx = dag.Ctx(config, RunLayout(run_dir), inputs, iteration)
    return evaluation_row(config, run_stages(config, ctx, dag.EVALUATION))


@flow(name="alt-iteration", log_prints=True)
def alt_iteration(
    config: RunConfig, run_dir: str, iteration: int, inputs: RunInputs
) -> dict[str, Any]:
    """One ALT iteration: prompts -> samples -> feedback -> datapool -> training -> eval."""
    layout = RunLayout(run_dir)
    ctx = dag.Ctx(config, layout, inputs, iteration)
    row = iteration_row(config, iteration, run_stages(config, ctx, dag.ITERATION))
    evaluation = evaluate_policy(config, run_dir, iteration, inputs)
    row.update(evaluation, reused=[*row["reused"], *evaluation["reused"]])
    store.write_json(store.join(layout.iteration(iteration), "metrics.json"), row)
    publish_iteration(config, run_dir, iteration, row)
    logger().info(f"iteration {iteration}: {row}")
    return row
