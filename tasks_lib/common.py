"""What every stage task shares: logging, device slots, skip-if-committed, progress.

Device slots. By default a stage takes a slot from a process-local `SlotPool` (GPU groups
on GPUs, disjoint core groups on the CPU): right for one run per machine, `alt run`.
When several flow runs share a host (`alt serve`, a worker running several flow runs),
the environment variable ALT_GPU_LIMIT names a Prefect global concurrency limit sized to
the host's GPUs: every stage then first takes as many slots of that limit as it needs
devices (strict: a limit that does not exist is an error, never a free-for-all), and
picks its GPUs with per-device lock files that every process on the host sees, so each
shard process is given devices no other one holds (CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError

from alt_core.runtime.launcher import SlotPool

GPU_LIMIT_ENV = "ALT_GPU_LIMIT"
DEVICE_LOCK_DIR_ENV = "ALT_DEVICE_LOCK_DIR"
# How long a stage admitted by the global limit waits for free devices on its host. It
# only waits when something outside the limit holds devices (a misconfigured limit).
DEVICE_WAIT_S = 600.0

_POOLS: dict[tuple[str, int, int, str | None], SlotPool | LimitedSlots] = {}
_POOLS_LOCK = threading.Lock()
# Training prints `step I/N ...`; sampling and feedback `progress DONE/TOTAL ...`
# (alt_core.runtime.progress).
_PROGRESS = re.compile(r"\b(?:step|progress) (\d+)/(\d+)\b")

# Child processes: keep engine chatter out of the flow logs unless asked for.
WORKER_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("alt")


def gpu_limit_name() -> str | None:
    """The Prefect global concurrency limit stages take device slots from, if any."""
    return os.environ.get(GPU_LIMIT_ENV) or None


def slot_pool(kind: str, num_slots: int, devices_per_slot: int = 1) -> SlotPool | LimitedSlots:
    """One pool per kind of stage and size, shared by all tasks of this process; behind
    the global concurrency limit named by ALT_GPU_LIMIT when it is set."""
    limit = gpu_limit_name()
    key = (kind, num_slots, devices_per_slot, limit)
    with _POOLS_LOCK:
        if key not in _POOLS:
            local = SlotPool(num_slots, devices_per_slot)
            _POOLS[key] = LimitedSlots(limit, local) if limit else local
        return _POOLS[key]


class LimitedSlots:
    """Device slots admitted by a Prefect global concurrency limit shared by every
    process on the host (see the module docstring). Same `slot()` interface as SlotPool."""

    def __init__(self, limit: str, local: SlotPool):
        self.limit = limit
        self.local = local
        self._checked = False

    @property
    def occupy(self) -> int:
        return self.local.devices_per_slot

    def check_limit(self) -> None:
        """Fail early and clearly: a missing limit, or one too small to ever admit us."""
        if self._checked:
            return
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                found = client.read_global_concurrency_limit_by_name(self.limit)
            except ObjectNotFound:
                raise RuntimeError(
                    f"the global concurrency limit {self.limit!r} named by {GPU_LIMIT_ENV} does "
                    f"not exist: create it with `prefect gcl create {self.limit} --limit N` "
                    f"(N: the GPUs of this host), or unset {GPU_LIMIT_ENV} to use "
                    "process-local slots"
                ) from None
        if found.limit < self.occupy:
            raise RuntimeError(
                f"the global concurrency limit {self.limit!r} has {found.limit} slot(s) but "
                f"this stage needs {self.occupy} devices at once; raise the limit "
                f"(`prefect gcl update {self.limit} --limit {self.occupy}`) or lower "
                "sampling.tensor_parallel_size / training.num_processes"
            )
        self._checked = True

    @contextlib.contextmanager
    def slot(self) -> Iterator[dict[str, str]]:
        from prefect.concurrency.sync import concurrency

        self.check_limit()
        # A long training must not die over one failed lease renewal: the slot is
        # accounting, the device locks below are what keeps shards apart.
        with concurrency(
            self.limit, occupy=self.occupy, strict=True, raise_on_lease_renewal_failure=False
        ):
            if self.local.num_gpus:
                with host_devices(self.occupy, self.local.num_gpus) as devices:
                    yield {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
            else:
                with self.local.slot() as env:
                    yield env


def _device_lock_dir() -> Path:
    path = Path(os.environ.get(DEVICE_LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "alt-devices")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(lock_dir: Path, count: int, total: int) -> list[tuple[int, IO[str]]] | None:
    held: list[tuple[int, IO[str]]] = []
    for device in range(total):
        fh = open(lock_dir / f"device-{device}.lock", "a+")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        held.append((device, fh))
        if len(held) == count:
            return held
    _release(held)
    return None


def _release(held: list[tuple[int, IO[str]]]) -> None:
    for _, fh in held:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def host_devices(count: int, total: int, wait_s: float = DEVICE_WAIT_S) -> Iterator[list[int]]:
    """Hold `count` of this host's `total` devices for the caller, exclusively among all
    processes of the host (flock on one file per device; the OS drops the locks of a
    process that dies, so a killed shard never leaks a device)."""
    lock_dir, deadline = _device_lock_dir(), time.monotonic() + wait_s
    while (held := _try_lock(lock_dir, count, total)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no {count} free device(s) of {total} on this host after {wait_s:.0f} s although "
                f"the global concurrency limit admitted this stage: the limit is larger than "
                f"the host's GPUs, or processes outside it hold devices (locks in {lock_dir})"
            )
        time.sleep(1.0)
    try:
        yield [device for device, _ in held]
    finally:
        _release(held)


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


def progress_fraction(line: str) -> float | None:
    """The percentage a `step I/N` or `progress DONE/TOTAL` line reports, else None."""
    m = _PROGRESS.search(line)
    return 100.0 * int(m.group(1)) / max(int(m.group(2)), 1) if m else None


def worker_log(name: str, on_step: Callable[[float], None] | None = None) -> Callable[[str], None]:
    """Forward a stage's lines to the run logger; turn its progress lines into updates of
    a progress artifact (`on_step`)."""
    log = logger()

    def emit(line: str) -> None:
        log.info(line)
        if on_step is not None:
            pct = progress_fraction(line)
            if pct is not None:
                on_step(pct)

    return emit


def artifact_key(*parts: object) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")
