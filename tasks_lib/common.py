"""What every stage task shares: logging, device slots, skip-if-committed, progress."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError

from alt_core.procs import SlotPool

_POOLS: dict[tuple[str, int, int], SlotPool] = {}
_POOLS_LOCK = threading.Lock()
_STEP = re.compile(r"\bstep (\d+)/(\d+)\b")

# Child processes: keep engine chatter out of the flow logs unless asked for.
WORKER_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("alt")


def slot_pool(kind: str, num_slots: int, devices_per_slot: int = 1) -> SlotPool:
    """One pool per kind of stage and size, shared by all tasks of this process."""
    key = (kind, num_slots, devices_per_slot)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = SlotPool(num_slots, devices_per_slot)
        return _POOLS[key]


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


def worker_log(name: str, on_step: Callable[[float], None] | None = None) -> Callable[[str], None]:
    """Forward a child's lines to the run logger; turn `step i/n` lines into progress."""
    log = logger()

    def emit(line: str) -> None:
        log.info(line)
        if on_step is not None:
            m = _STEP.search(line)
            if m:
                on_step(100.0 * int(m.group(1)) / max(int(m.group(2)), 1))

    return emit


def artifact_key(*parts: object) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")
