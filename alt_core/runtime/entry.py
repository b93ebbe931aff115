"""Entry point of every job process: `python -m alt_core.runtime.entry JOB.json`.

The parent (`alt_core.runtime.launcher.run_job`) writes the job file and reads the
result file; see that module for the protocol. A training job with several processes
runs this module under `accelerate launch`: every rank runs the job and rank 0 writes
the result.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alt_core.runtime.launcher import Job, write_result


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m alt_core.runtime.entry JOB.json", file=sys.stderr)  # noqa: T201
        return 2
    job = Job.model_validate_json(Path(argv[0]).read_text())
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


if __name__ == "__main__":
    sys.exit(main())
