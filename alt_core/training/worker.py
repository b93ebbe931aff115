"""Training as a job: the function that runs it in a child process, and the child's side.

Training runs in a process of its own because DeepSpeed sets up torch.distributed, pins
memory and JIT-builds ops: none of that should live inside a Prefect worker or a test
process, and a crash must not take them down. It goes through the one launcher
(`alt_core.runtime.launcher`), like every other job:

    python -m alt_core.runtime.entry JOB.json                               # one process
    accelerate launch --num_processes N -m alt_core.runtime.entry JOB.json  # N GPUs

A single process sets the torch.distributed variables itself (a free MASTER_PORT); under
a launcher the variables it set are left alone. Training is resumable (see
`alt_core.training.state`): run the same spec again after a failure and it continues
from its last checkpoint.

Fault injection, for the resume tests and benchmark: with `ALT_TRAIN_FAIL_AT_STEP=N` in
its environment (`alt_core.runtime.faults`), every training process kills itself with
SIGKILL right after optimizer step N (and that step's checkpoint, if one was due), the way
the OOM killer or a lost machine ends a run: no exception handler and no cleanup run.

Stopping: a training process that receives SIGTERM (`alt_core.runtime.stop` sends it to
the job's group when the run is stopped) finishes its optimizer step, saves a checkpoint
when one fits in what is left of `stop.GRACE_S` (see `save_fits`), and exits with
`STOPPED_EXIT`; the run's resume continues from that checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alt_core.runtime import stop
from alt_core.runtime.faults import TRAIN_FAULT_ENV, kill_run, pause_if
from alt_core.runtime.launcher import WorkerError, describe_exit, entry_command, run_job
from alt_core.training.spec import TrainingError, TrainSpec
from alt_core.training.state import finished_summary

FAIL_AT_STEP_ENV = TRAIN_FAULT_ENV
# A training that stopped on SIGTERM (after saving what it could) exits with this code.
STOPPED_EXIT = 143


class TrainingStopped(TrainingError):
    """Training was asked to stop (SIGTERM); raised by the step loop after the step."""


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


def step_hook(environ: Mapping[str, str] | None = None) -> Callable[[int], None]:
    """What runs after every optimizer step: the fault hooks (the crash of
    ALT_TRAIN_FAIL_AT_STEP, the pause point `train:<step>` of `runtime.faults`)."""
    crash = crash_hook(environ)

    def after(step: int) -> None:
        if crash is not None:
            crash(step)
        pause_if(f"train:{step}")

    return after


def stop_requested(dist: Any) -> bool:
    """Whether any training process was asked to stop; every process calls this after
    each step, so they all stop (and save) at the same step."""
    asked = stop.stopping() is not None
    if dist.world == 1:
        return asked
    import torch

    return bool(dist.sum(torch.tensor([float(asked)])).item() > 0)


def save_fits(dist: Any, last_save_s: float | None) -> bool:
    """Whether a checkpoint can be written before the grace time ends: when the last save
    of this training took less than the grace left (before the first save: when at least
    half of it is left). Rank 0 decides for all."""
    left = stop.GRACE_S - stop.seconds_since_request()
    fits = left > (last_save_s if last_save_s is not None else stop.GRACE_S / 2)
    return bool(dist.broadcast(fits))


def run_training(spec: dict[str, Any]) -> dict[str, Any]:
    """The child's side (`alt_core.runtime.entry`, kind `train`): train, return the summary."""
    from alt_core.training.loop import train

    # SIGTERM: finish the step, save if that fits in the grace time, exit STOPPED_EXIT.
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.request_stop(signum))
    ensure_single_process_env()
    parsed = TrainSpec.model_validate(spec)
    try:
        return train(parsed, log=_stdout_line, after_step=step_hook())
    except TrainingStopped as exc:
        _stdout_line(str(exc))
        raise SystemExit(STOPPED_EXIT) from None


def _stdout_line(message: str) -> None:
    # The parent streams this process's stdout (PYTHONUNBUFFERED): it is the log channel.
    sys.stdout.write(f"{message}\n")


def launcher_prefix(spec: TrainSpec) -> list[str] | None:
    """`accelerate launch ...` for several processes; None (plain python) for one."""
    cfg = spec.training
    if cfg.num_processes == 1:
        return None
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    # DeepSpeed itself is configured in code (alt_core.training.loop), not by launcher flags.
    options = ["--multi_gpu", "--num_machines", "1", "--num_processes", str(cfg.num_processes)]
    options += ["--mixed_precision", cfg.mixed_precision, "--dynamo_backend", "no"]
    options += ["--main_process_port", str(free_port())]
    return [*launch, *options]


def worker_command(spec: TrainSpec, job_path: Path) -> list[str]:
    """The command that runs a training job: plain python for one process, else accelerate."""
    return entry_command(job_path, launcher_prefix(spec))


def launch_training(
    spec: TrainSpec,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Run `train(spec)` as a job in a child process, streaming its output lines to `log`.

    Returns the training summary. Raises TrainingError with the exit status and the last
    output lines when the job fails; running the same spec again resumes from the last
    checkpoint. When `spec.output_dir` already holds the final model of this training,
    returns its saved summary without starting a process.
    """
    done = finished_summary(spec)
    if done is not None:
        log(f"training already finished: {spec.output_dir} holds its final model; nothing to do")
        return done
    try:
        return run_job(
            "train",
            spec,
            name="train",
            env=env,
            num_threads=num_threads,
            log=log,
            prefix=launcher_prefix(spec),
        )
    except WorkerError as exc:
        last = str(exc).split("Last output:\n", 1)[-1]
        raise TrainingError(
            f"training worker {describe_exit(exc.returncode)} (output: {spec.output_dir}); its "
            f"state is kept in {spec.resolved_state_dir}: run the same training again to "
            f"resume from the last checkpoint. Last output lines:\n{last}"
        ) from None
