"""What every stage task shares: the run logger and Prefect progress artifacts, lent to
the stage bodies of `alt_core.pipeline.stages` as a `StageEnv`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import CancelledRun, CrashedRun, MissingContextError

from alt_core.pipeline.stages import StageEnv
from alt_core.runtime import stop
from alt_core.runtime.progress import artifact_key

__all__ = ["artifact_key", "jobs_end_with_the_flow_run", "logger", "progress", "stage_env"]


def jobs_end_with_the_flow_run() -> contextlib.AbstractContextManager[None]:
    """Around a flow's body: a cancel in the UI or a SIGTERM from Prefect's runner (which
    reaches the body as TerminationSignal, or as a subflow's CancelledRun or CrashedRun)
    ends every job of this process before the flow run ends (`runtime.stop`)."""
    return stop.on_termination(also=(CancelledRun, CrashedRun))


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("alt")


def progress(key: str, description: str) -> Callable[[float], None]:
    """A Prefect progress artifact (0..100) and a function that updates it."""
    try:
        artifact_id = create_progress_artifact(0.0, key=key, description=description)
    except Exception:  # noqa: BLE001 - progress is a courtesy; never fail a stage over it
        return lambda _pct: None

    def update(pct: float) -> None:
        with contextlib.suppress(Exception):
            update_progress_artifact(artifact_id, min(100.0, max(0.0, pct)))

    return update


def stage_env() -> StageEnv:
    log = logger()
    return StageEnv(log=log.info, warn=log.warning, progress=progress)
