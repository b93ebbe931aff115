"""Device slots: which GPUs (or CPU cores) a job may use, and how many jobs run at once.

By default a stage takes a slot from a process-local `SlotPool` (GPU groups on GPUs,
disjoint core groups on the CPU): right for one run per machine, `alt run`. When several
flow runs share a host (`alt serve`, a worker running several flow runs), the host
setting ALT_GPU_LIMIT (`runtime.env`) names a Prefect global concurrency limit sized to
the host's GPUs: every stage then first takes as many slots of that limit as it needs
devices (strict: a limit that does not exist is an error, never a free-for-all), and
picks its GPUs with per-device lock files that every process on the host sees, so each
job process is given devices no other one holds (CUDA_VISIBLE_DEVICES). Prefect is
imported only when such a limit is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from alt_core.runtime.env import DEVICE_LOCK_DIR_ENV, GPU_LIMIT_ENV, HostSettings

__all__ = [
    "DEVICE_LOCK_DIR_ENV",
    "GPU_LIMIT_ENV",
    "LimitedSlots",
    "Slot",
    "SlotPool",
    "host_devices",
    "slot_pool",
]

# How long a stage admitted by the global limit waits for free devices on its host. It
# only waits when something outside the limit holds devices (a misconfigured limit).
DEVICE_WAIT_S = 600.0

_POOLS: dict[tuple[str, int, int, str | None], SlotPool | LimitedSlots] = {}
_POOLS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Slot:
    """What a job in this slot is given: environment for its engines (devices, OpenMP
    threads) and, on CPUs, its torch thread count (sent in the job file)."""

    env: dict[str, str] = field(default_factory=dict)
    num_threads: int | None = None


def gpu_slot(devices: Iterable[int]) -> Slot:
    return Slot(env={"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)})


def slot_pool(kind: str, num_slots: int, devices_per_slot: int = 1) -> SlotPool | LimitedSlots:
    """One pool per kind of stage and size, shared by all tasks of this process; behind
    the global concurrency limit named by ALT_GPU_LIMIT when it is set."""
    limit = HostSettings.current().gpu_limit
    key = (kind, num_slots, devices_per_slot, limit)
    with _POOLS_LOCK:
        if key not in _POOLS:
            local = SlotPool(num_slots, devices_per_slot)
            _POOLS[key] = LimitedSlots(limit, local) if limit else local
        return _POOLS[key]


def cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch or no driver both mean "no GPU"
        return 0


class SlotPool:
    """A fixed number of device slots shared by the shards of one process.

    On GPUs a slot is a group of `devices_per_slot` GPUs (CUDA_VISIBLE_DEVICES); on the
    CPU it is a disjoint group of cores, because vLLM's CPU build pins its OpenMP threads
    and two engines on the same cores fight over them.
    """

    def __init__(self, num_slots: int, devices_per_slot: int = 1):
        self.devices_per_slot = devices_per_slot
        self.num_gpus = cuda_device_count()
        if self.num_gpus:
            num_slots = max(1, min(num_slots, self.num_gpus // devices_per_slot))
        self.num_slots = max(1, num_slots)
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(self.num_slots):
            self._free.put(i)

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        index = self._free.get()
        try:
            yield self.slot_for(index)
        finally:
            self._free.put(index)

    def slot_for(self, index: int) -> Slot:
        if self.num_gpus:
            first = index * self.devices_per_slot
            return gpu_slot(range(first, first + self.devices_per_slot))
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        cores = cores or list(range(os.cpu_count() or 1))
        per = max(1, len(cores) // self.num_slots)
        mine = cores[index * per : (index + 1) * per] or cores[-per:]
        env = {
            "VLLM_CPU_OMP_THREADS_BIND": f"{mine[0]}-{mine[-1]}",
            "OMP_NUM_THREADS": str(len(mine)),
        }
        return Slot(env=env, num_threads=len(mine))


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
    def slot(self) -> Iterator[Slot]:
        from prefect.concurrency.sync import concurrency

        self.check_limit()
        # A long training must not die over one failed lease renewal: the slot is
        # accounting, the device locks below are what keeps shards apart.
        with concurrency(
            self.limit, occupy=self.occupy, strict=True, raise_on_lease_renewal_failure=False
        ):
            if self.local.num_gpus:
                with host_devices(self.occupy, self.local.num_gpus) as devices:
                    yield gpu_slot(devices)
            else:
                with self.local.slot() as cpu:
                    yield cpu


def _device_lock_dir() -> Path:
    path = HostSettings.current().device_lock_dir
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
