"""The training worker process and the function that launches it.

Training runs in a process of its own because DeepSpeed sets up torch.distributed, pins
memory and JIT-builds ops: none of that should live inside a Prefect worker or a test
process, and a crash must not take them down.

    python -m alt_core.training.worker SPEC.json                      # one process
    accelerate launch --num_processes N -m alt_core.training.worker SPEC.json   # N GPUs

A single process sets the torch.distributed variables itself (a free MASTER_PORT); under
a launcher the variables it set are left alone. On success the main process prints one
JSON line `{"train_summary": {...}}` last; on failure the exit code is 1 and the last
stderr line says what failed. Training is resumable (see `alt_core.training.state`): run
the same spec again after a failure and it continues from its last checkpoint.

Fault injection, for the resume tests and benchmark: with `ALT_TRAIN_FAIL_AT_STEP=N` in
its environment, every worker process kills itself with SIGKILL right after optimizer
step N (and that step's checkpoint, if one was due), the way the OOM killer or a lost
machine ends a run: no exception handler and no cleanup run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alt_core.runtime.faults import TRAIN_FAULT_ENV, kill_run
from alt_core.runtime.launcher import kill_process_group
from alt_core.training.loop import TrainingError, TrainSpec, train
from alt_core.training.state import finished_summary

SUMMARY_KEY = "train_summary"
FAIL_AT_STEP_ENV = TRAIN_FAULT_ENV
_STDERR_TAIL = 30


def free_port() -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_single_process_env(environ: dict[str, str] | None = None) -> bool:
    """Fill in the torch.distributed variables for a lone process; returns True if it did.

    A launcher (accelerate launch, torchrun) sets WORLD_SIZE; then nothing is touched.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return False
    defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    defaults["MASTER_ADDR"] = "127.0.0.1"
    if "MASTER_PORT" not in env:
        defaults["MASTER_PORT"] = str(free_port())
    for key, value in defaults.items():
        env.setdefault(key, value)
    return True


def crash_hook(environ: Mapping[str, str] | None = None) -> Callable[[int], None] | None:
    """The `after_step` hook that SIGKILLs this process after step ALT_TRAIN_FAIL_AT_STEP,
    or None when the variable is unset."""
    value = (os.environ if environ is None else environ).get(FAIL_AT_STEP_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{FAIL_AT_STEP_ENV} must be a step number >= 1, got {value!r}")
    fail_at = int(value)

    def kill_after(step: int) -> None:
        if step == fail_at:
            # The whole run goes down when the CLI recorded its process group; a lone
            # worker (the trainer's own tests) goes down alone.
            kill_run()

    return kill_after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one conditional-SFT training job.")
    parser.add_argument("spec", help="TrainSpec JSON file")
    args = parser.parse_args(argv)
    ensure_single_process_env()
    try:
        spec = TrainSpec.from_json(Path(args.spec).read_text())
        summary = train(spec, log=lambda msg: print(msg, flush=True), after_step=crash_hook())
    except Exception as exc:
        traceback.print_exc()
        print(
            f"alt_core.training.worker: training failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({SUMMARY_KEY: summary}, default=str), flush=True)
    return 0


def worker_command(spec: TrainSpec, spec_path: Path) -> list[str]:
    """The command that runs the worker: plain python for one process, else accelerate."""
    worker = ["-m", "alt_core.training.worker", str(spec_path)]
    cfg = spec.training
    if cfg.num_processes == 1:
        return [sys.executable, *worker]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    # DeepSpeed itself is configured in code (alt_core.training.loop), not by launcher flags.
    options = ["--multi_gpu", "--num_machines", "1", "--num_processes", str(cfg.num_processes)]
    options += ["--mixed_precision", cfg.mixed_precision, "--dynamo_backend", "no"]
    options += ["--main_process_port", str(free_port())]
    return [*launch, *options, *worker]


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child = {**os.environ, **(env or {})}
    # The worker must import this checkout of alt_core whatever the current directory.
    root = str(Path(__file__).resolve().parents[2])
    child["PYTHONPATH"] = os.pathsep.join(p for p in (root, child.get("PYTHONPATH")) if p)
    child.setdefault("PYTHONUNBUFFERED", "1")
    return child


def launch_training(
    spec: TrainSpec, env: Mapping[str, str] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run `train(spec)` in a worker subprocess, streaming its output lines to `log`.

    Returns the worker's summary. Raises TrainingError with the exit code and the last
    stderr lines when the worker fails; running the same spec again resumes from the
    last checkpoint. When `spec.output_dir` already holds the final model of this
    training, returns its saved summary without starting a worker.
    """
    done = finished_summary(spec)
    if done is not None:
        log(f"training already finished: {spec.output_dir} holds its final model; nothing to do")
        return done
    lock = threading.Lock()
    tail: deque[str] = deque(maxlen=_STDERR_TAIL)
    summary: dict[str, Any] | None = None

    def emit(line: str) -> None:
        with lock:
            log(line)

    def pump_stderr(stream: Any) -> None:
        for line in stream:
            tail.append(line.rstrip("\n"))
            emit(line.rstrip("\n"))

    with tempfile.TemporaryDirectory(prefix="alt-train-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(spec.to_json())
        cmd = worker_command(spec, spec_path)
        # Its own session: the training processes (all ranks under `accelerate launch`)
        # form one group that goes down together when the parent is stopped.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(env),
            start_new_session=True,
        )
        try:
            reader = threading.Thread(target=pump_stderr, args=(proc.stderr,), daemon=True)
            reader.start()
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                if line.startswith('{"' + SUMMARY_KEY + '"'):
                    summary = json.loads(line)[SUMMARY_KEY]
                emit(line)
            code = proc.wait()
            reader.join()
        except BaseException:
            kill_process_group(proc)
            raise
    if code != 0:
        # A negative code is a signal: SIGKILL (-9) usually means the host ran out of memory.
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = "\n".join(tail) or "(no stderr output)"
        raise TrainingError(
            f"training worker {how} (output: {spec.output_dir}); its state is kept in "
            f"{spec.resolved_state_dir}: run the same training again to resume from the last "
            f"checkpoint. Last stderr lines:\n{last}"
        )
    if summary is None:
        raise TrainingError("training worker exited cleanly but printed no summary line")
    return summary


if __name__ == "__main__":
    sys.exit(main())
