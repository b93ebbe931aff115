"""Stopping a run: every job process is known while it runs, and one request ends them all.

Each job of `runtime.launcher` starts in a session of its own (its engine's processes
and a training's ranks share its process group), so a Ctrl-C at the terminal reaches
only the `alt` process, which decides the order of the shutdown:

1. `request_stop(signum)` marks this process as stopping: from then on `start_job`
   refuses to start a job (`StopRequested`), and every running job's group is sent
   SIGTERM. A training job saves a checkpoint when it can within `GRACE_S`
   (`alt_core.training.worker`); the others just exit.
2. `finish_jobs()` waits up to `GRACE_S` for the groups to end, then SIGKILLs what is
   left of them.
3. A second request does not wait: every group is SIGKILLed at once.

The same module runs in a training child, where `request_stop` (its SIGTERM handler)
only sets the flag that the step loop reads (`stopping()`).

A flow run started by Prefect's runner (`alt serve`) or a worker is stopped, on a
cancel from the UI or a SIGTERM to its process, by a SIGTERM that Prefect's own handler
turns into an exception in the flow's thread (`TerminationSignal`; a parent flow sees
its subflow's as `CancelledRun` or `CrashedRun`). Without more, the flow engine would
leave its task runner, whose shutdown waits for the stage threads and so for their jobs,
until the runner SIGKILLs the process 30 s later and the jobs, in their own sessions,
run on. Where a flow waits on its stages (`flows.iteration.run_stages`) and around the
flows' bodies, the work therefore runs inside `on_termination()`
(`tasks_lib.common.jobs_end_with_the_flow_run`), which ends the jobs as that exception
passes. Prefect's handler stays the one installed: the runner acknowledges a cancel over
its control channel only while it is.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# Seconds a job is given between SIGTERM and SIGKILL. A training job saves a checkpoint
# in that time when its last save took less than what is left of it.
GRACE_S = 5.0
# A pseudo signal number for a stop asked for by a Prefect cancel (not by a signal).
CANCEL = 0


class StopRequested(RuntimeError):
    """The run is stopping: a job was refused, or ended because it was told to stop."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    jobs: dict[int, tuple[subprocess.Popen, str]] = field(default_factory=dict)
    stages: collections.Counter[str] = field(default_factory=collections.Counter)
    signum: int | None = None
    requests: int = 0
    at: float = 0.0
    running_then: list[str] = field(default_factory=list)


_STATE = _State()


def signal_name(signum: int) -> str:
    return "cancelled in Prefect" if signum == CANCEL else signal.Signals(signum).name


def stopping() -> int | None:
    """The signal this process was asked to stop by (`CANCEL` for a Prefect cancel), or
    None while it runs on."""
    return _STATE.signum


def seconds_since_request() -> float:
    return time.monotonic() - _STATE.at if _STATE.signum is not None else 0.0


def check(what: str = "work") -> None:
    """Raise StopRequested when the run is stopping (work done in this process calls it
    between steps)."""
    if _STATE.signum is not None:
        raise StopRequested(f"{what} stopped: the run was {_stopped_by()}")


def _stopped_by() -> str:
    signum = _STATE.signum
    if signum is None or signum == CANCEL:
        return "cancelled in Prefect" if signum == CANCEL else "stopped"
    return f"interrupted by {signal_name(signum)}"


@contextlib.contextmanager
def start_job(start: Callable[[], subprocess.Popen], name: str) -> Iterator[subprocess.Popen]:
    """Start a job's process with `start` (in a session of its own) and keep it known
    while the caller runs it; refused with StopRequested once the run is stopping. The
    check and the start hold one lock, so no job starts after a stop request was seen."""
    proc = start_process(start, name)
    try:
        yield proc
    finally:
        end_process(proc)


def start_process(start: Callable[[], subprocess.Popen], name: str) -> subprocess.Popen:
    """`start_job` for a process that outlives one call (a kept engine of
    `runtime.workers`): known, and so stopped with the run, until `end_process`."""
    with _STATE.lock:
        if _STATE.signum is not None:
            raise StopRequested(f"{name} was not started: the run was {_stopped_by()}")
        proc = start()
        _STATE.jobs[proc.pid] = (proc, name)
    return proc


def end_process(proc: subprocess.Popen) -> None:
    """Forget a process of `start_process` and SIGKILL whatever is left of its group (an
    engine process whose parent exited)."""
    with _STATE.lock:
        _STATE.jobs.pop(proc.pid, None)
    _signal_group(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_stage(name: str) -> Iterator[None]:
    """Mark the stage `name` (a DAG node, e.g. iter-1-train) as running in this process,
    for the report of what a stop interrupted."""
    with _STATE.lock:
        _STATE.stages[name] += 1
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.stages[name] -= 1
            if not _STATE.stages[name]:
                del _STATE.stages[name]


def running() -> list[str]:
    """The stages and jobs running now; after a stop request, those running at the
    first request."""
    with _STATE.lock:
        return list(_STATE.running_then) if _STATE.signum is not None else _names()


def _names() -> list[str]:
    jobs = {name for _, name in _STATE.jobs.values()}
    return sorted(_STATE.stages) or sorted(jobs)


def request_stop(signum: int) -> bool:
    """Ask this process to stop (see the module docstring). Returns True for the first
    request; a later one SIGKILLs every job at once and returns False."""
    with _STATE.lock:
        _STATE.requests += 1
        first = _STATE.signum is None
        if first:
            _STATE.signum, _STATE.at = signum, time.monotonic()
            _STATE.running_then = _names()
        pids = list(_STATE.jobs)
    for pid in pids:
        _signal_group(pid, signal.SIGTERM if first else signal.SIGKILL)
    return first


def kill_jobs() -> None:
    """SIGKILL every job's process group now."""
    with _STATE.lock:
        pids = list(_STATE.jobs)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)


def finish_jobs(grace_s: float = GRACE_S) -> bool:
    """After a stop request: wait for the jobs to end, for what is left of `grace_s`
    since the request, then SIGKILL the rest. Returns True if all ended in the grace."""
    deadline = _STATE.at + grace_s
    while _alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _alive():
        return True
    kill_jobs()
    end = time.monotonic() + 2.0
    while _alive() and time.monotonic() < end:
        time.sleep(0.05)
    return False


def _alive() -> bool:
    with _STATE.lock:
        procs = [proc for proc, _ in _STATE.jobs.values()]
    # The thread that runs a job reaps it; a kept engine between jobs has no such thread,
    # so its leader is reaped here (a zombie leader would keep its group "existing").
    # A group whose leader was reaped is gone from the table already (`end_process`
    # SIGKILLs what is left of it) or still holds its engine's processes.
    return any(proc.poll() is None or _group_exists(proc.pid) for proc in procs)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@contextlib.contextmanager
def on_termination(also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """When the body is ended by a termination rather than by an error (an exception
    that is not an `Exception`: KeyboardInterrupt, SystemExit, Prefect's
    `TerminationSignal`; or one of the types in `also`), stop this process's jobs
    before it goes on: a SIGTERM to each group, SIGKILL for what is left after
    `GRACE_S`. An error does not stop them: shards that are running finish and commit.
    """
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, Exception) and not isinstance(exc, also):
            raise
        if request_stop(signal.SIGTERM):
            finish_jobs()
        else:
            kill_jobs()
        raise


def reset() -> None:
    """Forget a stop request (tests; a process that runs on after a stop)."""
    with _STATE.lock:
        _STATE.signum, _STATE.requests, _STATE.at = None, 0, 0.0
        _STATE.running_then = []
        _STATE.stages.clear()
