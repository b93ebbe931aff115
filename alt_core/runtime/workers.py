"""Kept workers: one long-lived job process per device slot, for the whole run.

With `sampling.engine_reuse` on (the default), a sampling, perplexity or reward-model job
does not start a process of its own: it goes to the kept worker of its device slot,
which runs job after job and keeps what it loaded (`runtime.resident`): a vLLM engine
that switches policies in place, the reference model, a reward model. A job is the same
`Job` file as a one-off job's (`runtime.launcher`), and its result comes back the same
way; only the process lives on.

The protocol: the parent writes one JSON line per command to the worker's stdin
(`{"op": "job", "path": JOB.json}`, `{"op": "exit"}`); the worker streams the job's
output lines to its stdout and ends each job with one line `DONE_MARK {"rc": N}`. A job
that fails ends the worker after that line (whatever it loaded may be broken), and one
that crashes ends it without: either way the slot's next job starts a new worker, so a
crash stays in its job and the stage's retry gets a fresh engine.

A worker is known to `runtime.stop` for its whole life: stopping the run ends it as it
ends a one-off job. `close_all()` ends every worker at the end of a flow run (and at
exit). Workers are only kept for the process-local device slots: under a host-wide GPU
limit (ALT_GPU_LIMIT) a slot's devices go back to the host between jobs, so every job
runs in a process of its own there.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from alt_core.runtime import stop
from alt_core.runtime.env import HostSettings

DONE_MARK = "\x1eALT-JOB-END"
# Which kept worker a job goes to: the engines and the scorers of one slot are separate
# processes (a vLLM engine pins its slot's cores; a scorer is torch on the same cores,
# used in other stages).
GROUP = {"sample": "engine", "perplexity": "scorer", "feedback": "scorer"}
CLOSE_WAIT_S = 15.0


class WorkerGone(RuntimeError):
    """The kept worker ended during a job (crashed, was killed, or failed the job)."""

    def __init__(self, returncode: int):
        super().__init__(f"kept worker ended with code {returncode}")
        self.returncode = returncode


def reuse_possible() -> bool:
    """Workers are kept only with process-local device slots (see the module docstring)."""
    return HostSettings.current().gpu_limit is None


class KeptWorker:
    """One `python -m alt_core.runtime.entry --serve` process and its pipes."""

    def __init__(self, key: tuple[Any, ...], command: list[str], env: dict[str, str]):
        self.key = key
        self.lock = threading.Lock()
        start = functools.partial(
            subprocess.Popen,
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.proc = stop.start_process(start, f"kept {key[0]} worker")
        self.jobs = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job_path: Path, log: Callable[[str], None], tail: collections.deque) -> int:
        """Send one job; stream its lines to `log` (and `tail`) until its end mark.
        Returns the job's status (0: done); raises WorkerGone when the worker ended."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "job", "path": str(job_path)}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerGone(self.proc.wait()) from None
        self.jobs += 1
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(DONE_MARK):
                rc = int(json.loads(line[len(DONE_MARK) :])["rc"])
                if rc != 0:
                    raise WorkerGone(self.proc.wait())
                return rc
            tail.append(line)
            log(line)
        raise WorkerGone(self.proc.wait())

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Ask the worker to exit (its engines shut down cleanly), then end its group."""
        if self.alive() and self.proc.stdin is not None:
            with suppress(BrokenPipeError, OSError, ValueError):
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait_s)
        if self.proc.stdout is not None:
            with suppress(OSError, ValueError):
                self.proc.stdout.close()
        stop.end_process(self.proc)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


_WORKERS: dict[tuple[Any, ...], KeptWorker] = {}
_LOCK = threading.Lock()


def worker_for(
    kind: str,
    env: Mapping[str, str],
    num_threads: int | None,
    start: Callable[[tuple[Any, ...]], KeptWorker],
) -> KeptWorker:
    """The kept worker of this kind's group and this slot (its environment), started
    with `start(key)` when there is none or the last one ended."""
    key = (GROUP[kind], tuple(sorted(env.items())), num_threads)
    with _LOCK:
        worker = _WORKERS.get(key)
        if worker is not None and not worker.alive():
            worker.close(0)
            worker = None
        if worker is None:
            worker = _WORKERS[key] = start(key)
        return worker


def forget(worker: KeptWorker) -> None:
    """Drop an ended worker, so its slot's next job starts a new one."""
    with _LOCK:
        if _WORKERS.get(worker.key) is worker:
            del _WORKERS[worker.key]
    worker.close(0)


def kept() -> list[KeptWorker]:
    with _LOCK:
        return list(_WORKERS.values())


def close_all() -> None:
    """End every kept worker of this process (the end of a flow run, and at exit)."""
    with _LOCK:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for worker in workers:
        worker.close()


@contextlib.contextmanager
def kept_for_the_run() -> Iterator[None]:
    """Around a flow run's body: its kept workers end with it (also on failure)."""
    try:
        yield
    finally:
        close_all()


atexit.register(close_all)
