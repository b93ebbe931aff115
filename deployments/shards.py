"""Scaling past one machine: sampling and feedback shards as flow runs on a work pool.

The iteration flow can hand each shard to the `alt-shard` deployment instead of running
it in its own process: `run_shard_remotely` creates a flow run of that deployment (shown
in the UI as a subflow of the iteration), waits for it, and returns the same result a
local shard task returns. Any worker of the deployment's work pool, on any host, takes
it. Only references travel: the shard reads its inputs from and commits its output to
the run folder, so the run folder must be storage every worker sees (s3://).

Wiring in `flows/iteration.py` (the shard deployment is a run setting):

    if deployment:
        fut = run_shard_remotely.submit(config, "sample", spec.to_dict(), name, deployment)
    else:
        fut = stages.sample_shard.submit(config, spec.to_dict(), name)
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from alt_core import store
from alt_core.config import RunConfig
from alt_core.store import ArtifactError

SHARD_DEPLOYMENT = "alt-shard/alt-shard"


class RemoteShardError(RuntimeError):
    """A shard's flow run on the work pool did not complete."""


@task(name="remote-shard", cache_policy=NO_CACHE)
def run_shard_remotely(
    config: RunConfig,
    kind: str,
    spec: dict[str, Any],
    name: str,
    deployment: str = SHARD_DEPLOYMENT,
    poll_interval: float = 2.0,
) -> dict[str, Any]:
    """Run one shard as a flow run of `deployment`; returns {"uri": output, ...}.

    The shard flow retries its own stage; a shard that still fails fails this task with
    the remote flow run's name, so its logs are one click away in the UI.
    """
    from prefect.deployments import run_deployment

    if kind not in ("sample", "feedback"):
        raise ValueError(f"kind must be 'sample' or 'feedback' (got {kind!r})")
    flow_run = run_deployment(
        deployment,
        parameters={"config": config, "kind": kind, "spec": spec, "name": name},
        flow_run_name=name,
        tags=["alt-shard", kind],
        poll_interval=poll_interval,
    )
    state = flow_run.state
    if state is None or not state.is_completed():
        ended = f"{state.type.value}: {state.message}" if state else "without a state"
        raise RemoteShardError(
            f"{name}: flow run {flow_run.name} ({flow_run.id}) of {deployment} ended {ended}. "
            "Its logs are in the UI; rerun the iteration to redo only the missing shards"
        )
    uri = spec["output_uri"]
    if not store.is_committed(uri):
        raise ArtifactError(
            f"{name}: the remote shard completed but {uri} is not committed here: the worker "
            "wrote to storage this flow does not see; use an s3:// run folder across hosts"
        )
    return {"uri": uri, "rows": store.commit_info(uri)["rows"], "flow_run_id": str(flow_run.id)}
