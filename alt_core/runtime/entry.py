"""Entry point of every job process: `python -m alt_core.runtime.entry JOB.json`.

The parent (`alt_core.runtime.launcher.run_job`) writes the job file and reads the
result file; see that module for the protocol. A training job with several processes
runs this module under `accelerate launch`: every rank runs the job and rank 0 writes
the result.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alt_core.runtime.launcher import Job, write_result
from alt_core.runtime.workers import DONE_MARK


def _sample(spec: dict[str, Any]) -> dict[str, Any]:
    from alt_core.sampling import SampleSpec, sample_shard

    return sample_shard(SampleSpec.model_validate(spec))


def _feedback(spec: dict[str, Any]) -> dict[str, Any]:
    from alt_core.pipeline.specs import FeedbackSpec
    from alt_core.pipeline.stages import score_feedback

    return score_feedback(FeedbackSpec.model_validate(spec))


def _perplexity(spec: dict[str, Any]) -> dict[str, Any]:
    from alt_core.pipeline.specs import PerplexitySpec
    from alt_core.pipeline.stages import score_perplexity

    return score_perplexity(PerplexitySpec.model_validate(spec))


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    from alt_core.training.worker import run_training

    return run_training(spec)


# How a failure names the job in its last line.
WHAT = {
    "sample": "sampling",
    "feedback": "feedback",
    "perplexity": "perplexity",
    "train": "training",
}

RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sample": _sample,
    "feedback": _feedback,
    "perplexity": _perplexity,
    "train": _train,
}


def run(job: Job) -> int:
    """Run one job: 0 and its result file written, or 1 with the cause as the last
    lines of its output."""
    if job.num_threads:
        import torch

        torch.set_num_threads(job.num_threads)
    try:
        result = RUNNERS[job.kind](job.spec)
    except Exception as exc:
        traceback.print_exc()
        print(  # noqa: T201 - the parent reads a failed job's last lines
            f"alt_core.runtime.entry: {WHAT[job.kind]} failed: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    if os.environ.get("RANK", "0") == "0":
        write_result(job.result_path, result)
    return 0


def serve() -> int:
    """A kept worker (`runtime.workers`): run the jobs named on stdin one after another,
    keeping what they load (`runtime.resident`), until told to exit or stdin closes.
    A failed job ends the worker: what it had loaded may be broken."""
    from alt_core.runtime import resident

    resident.start_serving()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("op") == "exit":
                break
            rc = run(Job.model_validate_json(Path(command["path"]).read_text()))
            if rc == 0:
                resident.between_jobs()
            sys.stderr.flush()
            print(f"{DONE_MARK}{json.dumps({'rc': rc})}", flush=True)  # noqa: T201
            if rc:
                return rc
    finally:
        resident.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    if len(argv) != 1:
        print("usage: python -m alt_core.runtime.entry JOB.json | --serve", file=sys.stderr)  # noqa: T201
        return 2
    return run(Job.model_validate_json(Path(argv[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main())
