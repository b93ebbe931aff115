"""The one subprocess launcher: every sampling, feedback, perplexity and training job.

A job runs in a process of its own (a crash or an out-of-memory stays in that job, and
its GPU memory is freed when it exits), in a session and process group of its own (stopping the
parent takes every process of the job down, all ranks of a multi-GPU training too; a
Ctrl-C at the terminal reaches only the parent). While it runs the job is known to
`runtime.stop`, which ends it when the run is stopped; no job starts after that.

The protocol, the same for every kind of job:

- the parent writes a `Job` (kind, the kind's typed spec, the slot's thread count) to a
  JSON file and starts `python -m alt_core.runtime.entry JOB.json`, or a launcher
  prefix such as `accelerate launch ... -m alt_core.runtime.entry JOB.json`;
- the child runs the job and, on success, writes its result (a JSON object) to
  `Job.result_path` atomically, then exits 0; on failure it exits non-zero and its
  last lines say why;
- the parent streams the child's output (stdout and stderr) line by line to a log
  callback (`name` only labels errors; callers tag lines as they like), keeps the tail to name the cause of a failure, and returns the result.

Settings travel in the job file, never in environment variables; the child's
environment carries only what engines read from it (CUDA_VISIBLE_DEVICES, OpenMP
threads, vLLM's CPU cache size) and the fault-injection hooks (`runtime.faults`).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alt_core.runtime import stop, workers

JobKind = Literal["sample", "feedback", "perplexity", "train"]
ENTRY_MODULE = "alt_core.runtime.entry"
# Child processes: keep engine chatter out of the logs unless asked for.
QUIET_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerError(RuntimeError):
    """A job's process failed; the message has its exit status and last output lines."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


class Job(BaseModel):
    """What crosses the process boundary: one file, no secrets."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    spec: dict[str, Any] = Field(description="The kind's typed spec, dumped to JSON.")
    result_path: str = Field(description="Where the child writes its result JSON.")
    num_threads: int | None = Field(
        None, description="torch threads of a CPU slot (None: torch's default)."
    )


def write_result(path: str, result: Mapping[str, Any]) -> None:
    """Called by the child as its last act: the result, atomically (a killed child
    leaves no result, never half of one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(dict(result), fh, default=str)
    os.replace(tmp, path)


def entry_command(job_path: str | Path, prefix: Sequence[str] | None = None) -> list[str]:
    """The child's command: `python -m alt_core.runtime.entry JOB` (or behind a launcher
    prefix such as `accelerate launch ...`, which itself runs python)."""
    start = list(prefix) if prefix else [sys.executable]
    return [*start, "-m", ENTRY_MODULE, str(job_path)]


def child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child = {**os.environ, **QUIET_ENV, **(env or {}), "PYTHONUNBUFFERED": "1"}
    # The child must import this checkout of alt_core whatever the current directory.
    child["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, child.get("PYTHONPATH")) if p)
    return child


def describe_exit(returncode: int) -> str:
    # A negative code is a signal: SIGKILL (-9) usually means the host ran out of memory.
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def run_job(
    kind: JobKind,
    spec: BaseModel,
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    num_threads: int | None = None,
    log: Callable[[str], None] = print,
    prefix: Sequence[str] | None = None,
    tail_lines: int = 40,
    keep: bool = False,
) -> dict[str, Any]:
    """Run one job in a child process (see the module docstring); return its result.
    With `keep`, the job goes to the kept worker of its slot (`runtime.workers`), which
    runs it the same way and lives on with what it loaded.

    Raises WorkerError with the exit status and the last output lines when the child
    fails or ends without a result, and StopRequested (`runtime.stop`) instead when the
    run is stopping: the job is then not started, or was told to stop.
    """
    with tempfile.TemporaryDirectory(prefix=f"alt-{kind}-") as tmp:
        job = Job(
            kind=kind,
            spec=spec.model_dump(mode="json"),
            result_path=str(Path(tmp) / "result.json"),
            num_threads=num_threads,
        )
        job_path = Path(tmp) / "job.json"
        job_path.write_text(job.model_dump_json())
        tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        if keep and prefix is None and workers.reuse_possible():
            return _run_kept(job, job_path, name, env, num_threads, log, tail)
        start = functools.partial(
            subprocess.Popen,
            entry_command(job_path, prefix),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(env),
            start_new_session=True,
        )
        with stop.start_job(start, name) as proc:
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    line = line.rstrip("\n")
                    tail.append(line)
                    log(line)
                returncode = proc.wait()
            except BaseException:
                # The parent is being stopped: take the job's whole process group with it.
                kill_process_group(proc)
                raise
        result_file = Path(job.result_path)
        if returncode == 0 and result_file.exists():
            return json.loads(result_file.read_text())
        stop.check(f"{name} ({describe_exit(returncode)})")
    raise _failed(name, returncode, tail)


def _failed(name: str, returncode: int, tail: collections.deque[str]) -> WorkerError:
    cause = "\n".join(tail) or "(no output)"
    how = describe_exit(returncode) if returncode else "exited without a result"
    return WorkerError(
        f"{name} failed (exit code {returncode}): it {how}. Last output:\n{cause}", returncode
    )


def serve_command() -> list[str]:
    """A kept worker's command: the entry module, serving jobs from its stdin."""
    return [sys.executable, "-m", ENTRY_MODULE, "--serve"]


def _run_kept(
    job: Job,
    job_path: Path,
    name: str,
    env: Mapping[str, str] | None,
    num_threads: int | None,
    log: Callable[[str], None],
    tail: collections.deque[str],
) -> dict[str, Any]:
    """`run_job` through the slot's kept worker; a worker that ends during the job is
    dropped (the next job of the slot starts a new one) and the job fails as a one-off
    job's process would."""
    slot_env = dict(env or {})
    worker = workers.worker_for(
        job.kind,
        slot_env,
        num_threads,
        lambda key: workers.KeptWorker(key, serve_command(), child_env(slot_env)),
    )
    with worker.lock:
        try:
            worker.run(job_path, log, tail)
        except workers.WorkerGone as gone:
            workers.forget(worker)
            stop.check(f"{name} ({describe_exit(gone.returncode)})")
            raise _failed(name, gone.returncode, tail) from None
        except BaseException:
            # The parent is being stopped mid-job: the worker goes with it.
            workers.forget(worker)
            raise
    result_file = Path(job.result_path)
    if not result_file.exists():
        raise _failed(name, 0, tail)
    return json.loads(result_file.read_text())


def kill_process_group(proc: subprocess.Popen) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
