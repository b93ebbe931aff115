"""Flows that only deployments need: thin entry points over `flows/` for the UI,
schedules and remote shards. No logic here beyond picking a folder and checking inputs.

- `alt-single-iteration`: one iteration of a run folder (the UI's "run iteration k").
- `alt-scheduled-run`: a full run in a fresh folder named after the scheduled time.
- `alt-shard`: one sampling or feedback shard, for a work pool of GPU workers (see
  `deployments.shards`).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from alt_core import store
from alt_core.config import (
    ConfigError,
    RunConfig,
    RunSettings,
    absolute_paths,
    absolute_uri,
    config_from_preset,
)
from alt_core.pipeline.layout import RunLayout
from alt_core.preflight import preflight
from alt_core.runtime import workers
from alt_core.runtime.runlock import RunLock
from tasks_lib.common import jobs_end_with_the_flow_run


@flow(name="alt-single-iteration", log_prints=True)
def single_iteration(
    config: RunSettings, run_dir: str, iteration: int = 1, preset: str | None = None
) -> dict[str, Any]:
    """One ALT iteration of a run folder: prompts, samples, feedback, datapool, training
    and evaluation. Work already committed in the folder with the same settings and
    inputs is reused; what other settings affect is redone.

    Args:
        config: The run configuration; every field is described in the form below. With
            a preset, the settings given over it (a field left out keeps its value).
        run_dir: Run folder or s3:// URI. Iteration k > 1 starts from the policy that
            iteration k-1 committed there.
        iteration: Which iteration to run, from 1 to config.iterations.
        preset: The preset `config` is given over (a deployment sets the one it was
            served with). None: `config` is the whole configuration.
    """
    from flows.iteration import alt_iteration
    from tasks_lib import stages

    run_config = absolute_paths(config_from_preset(preset, config))
    run_dir = absolute_uri(run_dir)
    for note in preflight(run_config, run_dir, writes=True):  # before anything is written
        print(f"note: {note}")
    if not 1 <= iteration <= run_config.iterations:
        raise ConfigError(f"iteration must be in 1..{run_config.iterations} (got {iteration})")
    previous = RunLayout(run_dir).policy(iteration - 1)
    if iteration > 1 and not store.dir_committed(previous):
        raise ConfigError(
            f"iteration {iteration} starts from the policy of iteration {iteration - 1}, "
            f"which {run_dir} does not hold ({previous}): run iteration {iteration - 1} first"
        )
    # A cancel or SIGTERM from Prefect's runner ends the jobs too (runtime.stop).
    # One run per folder (runtime.runlock); its kept engines end with it (runtime.workers).
    with jobs_end_with_the_flow_run(), RunLock(run_dir), workers.kept_for_the_run():
        inputs = stages.prepare_run(run_config, run_dir)
        return alt_iteration(run_config, run_dir, iteration, inputs)


@flow(name="alt-scheduled-run", log_prints=True)
def scheduled_run(
    config: RunSettings, runs_root: str = "runs", preset: str | None = None
) -> list[dict[str, Any]]:
    """A full ALT run in a new folder <runs_root>/<name>-<scheduled time>. Retrying this
    flow run continues the same folder; the next scheduled run gets a new one.

    Args:
        config: The run configuration; every field is described in the form below. With
            a preset, the settings given over it (a field left out keeps its value).
        runs_root: Folder or s3:// URI under which each scheduled run gets its folder.
        preset: The preset `config` is given over (a deployment sets the one it was
            served with). None: `config` is the whole configuration.
    """
    from prefect.runtime import flow_run

    from flows.run import alt_run

    run_config = absolute_paths(config_from_preset(preset, config))
    when = flow_run.scheduled_start_time
    run_dir = absolute_uri(store.join(runs_root, f"{run_config.name}-{when:%Y%m%d-%H%M%S}"))
    return alt_run(config=run_config, run_dir=run_dir)


@flow(name="alt-shard", log_prints=True)
def alt_shard(
    config: RunConfig, kind: Literal["sample", "feedback"], spec: dict[str, Any], name: str
) -> dict[str, Any]:
    """One sampling or feedback shard, run by whichever worker of the pool takes it. It
    reads and writes the run folder named in `spec`, which must be storage every worker
    sees (s3:// across hosts).

    Args:
        config: The run configuration of the iteration that sent this shard.
        kind: 'sample' (vLLM generations) or 'feedback' (rewards or judge feedback).
        spec: The shard's spec as the iteration flow built it (input and output URIs).
        name: The shard's name in logs, e.g. train-sample-3.
    """
    from alt_core.pipeline.dag import shard_node
    from tasks_lib.stages import TASKS

    node = shard_node(config, kind, spec, name)
    with jobs_end_with_the_flow_run():  # a cancel ends the shard's job first (runtime.stop)
        return TASKS[node.stage](config, node).model_dump()
