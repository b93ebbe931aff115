"""Prefect tasks: a decorator and one call each.

Every stage of the DAG (`alt_core.pipeline.dag`) runs as the task of its name, which calls
`alt_core.pipeline.stages.run_node`: outputs already committed with the node's
fingerprint are returned without redoing the work, so rerunning a flow over the same run
folder (a retry from the UI, `alt resume`, a new flow run) redoes only what is missing.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alt_core.config import RunConfig
from alt_core.pipeline import dag
from alt_core.pipeline import stages as pipeline
from alt_core.pipeline.layout import RunInputs
from alt_core.pipeline.specs import StageResult
from alt_core.runtime import stop
from tasks_lib.common import logger, stage_env

STAGE_RETRIES = 1


def retry_unless_stopping(_task: object, _run: object, _state: object) -> bool:
    """A run that is being stopped (`alt_core.runtime.stop`) retries nothing."""
    return stop.stopping() is None


@task(name="prepare-run", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def prepare_run(config: RunConfig, run_dir: str) -> RunInputs:
    """Record the config and resolve the starting model and prompt sets."""
    return pipeline.prepare_run(config, run_dir, log=logger().info)


def _stage_task(stage: dag.Stage):
    body = pipeline.BODIES[stage.name].__name__

    @task(
        name=stage.name.replace("_", "-"),
        description=f"The {stage.name} stage (`alt_core.pipeline.stages.{body}`).",
        task_run_name="{node.name}",
        cache_policy=NO_CACHE,
        retries=STAGE_RETRIES,
        retry_delay_seconds=5,
        retry_condition_fn=retry_unless_stopping,
    )
    def run(config: RunConfig, node: dag.Node) -> StageResult:
        with stop.running_stage(node.name):
            return pipeline.run_node(config, node, stage_env())

    return run


# One task per stage, named after it in the UI (train-sample, datapool, ...).
TASKS = {name: _stage_task(stage) for name, stage in dag.STAGES.items()}
