"""Fault injection for the resume tests: end the whole run at a named point.

With `ALT_FAULT_POINT=<point>` in the environment, the code that reaches that point
SIGKILLs the run's process group (recorded in `ALT_RUN_PGID` by the command line, which
makes the armed run a process group of its own so that nothing above it, such as `make`
or a CI job, goes down with it) and its own, the way a lost machine or the OOM killer ends
a run: no exception handler, no cleanup. Points: `<stage>:<shard>` for shard workers (for example
`train_samples:1`, `train_feedback:0`), `datapool` (between the pool and the training
set writes), `perplexity` (evaluation); training uses `ALT_TRAIN_FAIL_AT_STEP=N`.

For the stop tests, `ALT_FAULT_PAUSE=<point>` holds the code that reaches the point until
the run is stopped (`runtime.stop`), so a signal lands while that stage is running; the
points are those above and `train:<step>` (after optimizer step N). With
`ALT_FAULT_PAUSE_MARK=<file>` the paused process appends `<point> <pid>` to that file
first, which tells the test the stage has begun.
Unset, every check is one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time

from alt_core.runtime import stop

FAULT_ENV = "ALT_FAULT_POINT"
TRAIN_FAULT_ENV = "ALT_TRAIN_FAIL_AT_STEP"
RUN_PGID_ENV = "ALT_RUN_PGID"
PAUSE_ENV = "ALT_FAULT_PAUSE"
PAUSE_MARK_ENV = "ALT_FAULT_PAUSE_MARK"


def armed(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(FAULT_ENV) or env.get(TRAIN_FAULT_ENV))


def claim_run_group() -> None:
    """Called by the `alt` command: when a fault is armed, make this process the leader of
    a process group of its own and record it, so the injected kill ends the run (this
    process, its Prefect tasks and every worker) and never the shell, `make` or test
    runner that started it. Unarmed, it changes nothing."""
    if not armed():
        return
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)
    os.environ[RUN_PGID_ENV] = str(os.getpid())


def shard_point(output_uri: str) -> str:
    """`.../iter_001/train_samples/shard_001.parquet` -> `train_samples:1`."""
    m = re.search(r"/([a-z_]+)/shard_(\d+)\.parquet$", output_uri)
    return f"{m.group(1)}:{int(m.group(2))}" if m else output_uri


def kill_run() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    pgid = os.environ.get(RUN_PGID_ENV)
    if pgid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pgid), signal.SIGKILL)
    try:
        # A worker leads its own group (its engine's processes are in it); a process
        # that does not lead its group must not take its parent's group down.
        if os.getpgid(0) == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def crash_if(point: str) -> None:
    """Kill the run (ALT_FAULT_POINT) or pause it until stopped (ALT_FAULT_PAUSE) at
    `point`; a paused run that is stopped raises StopRequested here."""
    if os.environ.get(FAULT_ENV) == point:
        kill_run()
    if pause_if(point):
        stop.check(point)


def pause_if(point: str) -> bool:
    """Wait here until this process is asked to stop, when ALT_FAULT_PAUSE names
    `point`; returns whether it paused. A job process without a SIGTERM handler of its
    own simply dies of the signal while it waits."""
    if os.environ.get(PAUSE_ENV) != point:
        return False
    if mark := os.environ.get(PAUSE_MARK_ENV):
        with open(mark, "a") as fh:
            fh.write(f"{point} {os.getpid()}\n")
    while stop.stopping() is None:
        time.sleep(0.05)
    return True
