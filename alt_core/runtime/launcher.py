"""Shard processes and the device slots they run in.

Every sampling, feedback and training shard runs in a process of its own, so a crash or
an out-of-memory stays in that shard and its GPU memory is freed when it exits. The
parent streams the child's output line by line to a log callback and keeps the tail to
name the cause when the child fails.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

RESULT_PREFIX = "ALT_RESULT "


class WorkerError(RuntimeError):
    """A shard process exited with an error."""


def emit_result(result: dict[str, Any]) -> None:
    """Called by a worker as its last act: hands a JSON summary to the parent."""
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def run_worker(
    argv: list[str],
    spec: dict[str, Any],
    *,
    name: str,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    tail_lines: int = 40,
) -> dict[str, Any]:
    """Run `python -m <argv...> SPEC.json` in its own process group; return its result.

    The spec travels as a file (never on the command line) and holds no secrets.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh, default=str)
        spec_path = fh.name
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", *argv, spec_path]
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    result: dict[str, Any] | None = None
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
                continue
            tail.append(line)
            log(f"[{name}] {line}")
        rc = proc.wait()
    except BaseException:
        # The parent is being stopped: take the whole shard process group down with it.
        kill_process_group(proc)
        raise
    finally:
        Path(spec_path).unlink(missing_ok=True)
    if rc != 0 or result is None:
        cause = "\n".join(tail) or "(no output)"
        raise WorkerError(f"{name} failed (exit code {rc}). Last output:\n{cause}")
    return result


def kill_process_group(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[dict[str, str]]:
        index = self._free.get()
        try:
            yield self.env_for(index)
        finally:
            self._free.put(index)

    def env_for(self, index: int) -> dict[str, str]:
        if self.num_gpus:
            first = index * self.devices_per_slot
            devices = range(first, first + self.devices_per_slot)
            return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        cores = cores or list(range(os.cpu_count() or 1))
        per = max(1, len(cores) // self.num_slots)
        mine = cores[index * per : (index + 1) * per] or cores[-per:]
        return {
            "VLLM_CPU_OMP_THREADS_BIND": f"{mine[0]}-{mine[-1]}",
            "OMP_NUM_THREADS": str(len(mine)),
            "ALT_NUM_THREADS": str(len(mine)),
        }
