"""Every setting this package reads from the environment, declared once.

These are host settings an operator sets for a machine (`alt serve`, a worker), never
run settings: those live in the config and travel to child processes in the job file
(`runtime.launcher`). The fault-injection variables are in `runtime.faults`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

GPU_LIMIT_ENV = "ALT_GPU_LIMIT"
DEVICE_LOCK_DIR_ENV = "ALT_DEVICE_LOCK_DIR"
# Seconds a run folder's lease lasts unless renewed (`runtime.runlock` renews it every
# third of it): how long a lock left by a lost host keeps the folder from another run.
LEASE_ENV = "ALT_RUN_LEASE_S"
DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class HostSettings:
    """Read from the environment by `HostSettings.current()`.

    gpu_limit (ALT_GPU_LIMIT): a Prefect global concurrency limit sized to the host's
        GPUs; when set, every stage takes its device slots from it, so several flow runs
        on one host never share a GPU (`runtime.slots`). Unset: process-local slots.
    device_lock_dir (ALT_DEVICE_LOCK_DIR): where the per-device lock files of the host
        live (default: <tmp>/alt-devices); every process of the host must see the same.
    """

    gpu_limit: str | None
    device_lock_dir: Path

    @classmethod
    def current(cls) -> HostSettings:
        lock_dir = os.environ.get(DEVICE_LOCK_DIR_ENV) or str(
            Path(tempfile.gettempdir()) / "alt-devices"
        )
        return cls(gpu_limit=os.environ.get(GPU_LIMIT_ENV) or None, device_lock_dir=Path(lock_dir))


def lease_seconds() -> float:
    """ALT_RUN_LEASE_S (default 60): the length of a run folder's lease, in seconds."""
    value = os.environ.get(LEASE_ENV)
    try:
        seconds = float(value) if value else DEFAULT_LEASE_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{LEASE_ENV}={value!r}: give the lease length in seconds (> 0)")
    return seconds
