"""Benchmark: the cost of resuming a training run that was killed mid-way.

Run: .venv/bin/python bench/bench_resume.py [--steps 24] [--checkpoint-every 4] [--kill-at 7]

A tiny GPT-2 (made here) trains with real DeepSpeed in the worker process, which kills
itself with SIGKILL after optimizer step `--kill-at` (ALT_TRAIN_FAIL_AT_STEP); the same
training is then started again and resumes from its newest checkpoint. The work redone
is the steps between that checkpoint and the kill, as a share of the whole training; the
goal is at most one checkpoint interval. Also printed: the time a checkpoint save takes
and the time from the restart to the first resumed step (worker start and state load).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pandas as pd  # noqa: E402

from alt_core.store import write_table  # noqa: E402
from alt_core.training.loop import TrainingError, TrainSpec  # noqa: E402
from alt_core.training.worker import FAIL_AT_STEP_ENV, launch_training  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
BATCH = 2
EPOCHS = 2


def make_spec(root: Path, steps: int, checkpoint_every: int) -> TrainSpec:
    """A spec whose training takes exactly `steps` optimizer steps (one micro-batch each)."""
    from tiny import build_tiny_model, tiny_corpus

    if steps % EPOCHS:
        raise SystemExit(f"--steps must be a multiple of {EPOCHS} (the epochs)")
    rows = steps // EPOCHS * BATCH
    text = tiny_corpus(2 * rows, seed=1)
    table = pd.DataFrame(
        {
            "query": text[:rows],
            "reference_query": text[:rows],
            "response": [" " + t for t in text[rows:]],
            "append_eos": True,
        }
    )
    model = str(build_tiny_model(root / "model"))
    return TrainSpec(
        policy_path=model,
        reference_path=model,
        train_table=write_table(str(root / "train.parquet"), table),
        output_dir=str(root / "policy.partial"),
        training={"epochs": EPOCHS, "per_device_batch_size": BATCH, "max_seq_len": 64},
        checkpoint_every=checkpoint_every,
    )


class Clock:
    """Collects the worker's lines with the time each arrived."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.lines.append((time.time(), line))

    def first(self, prefix: str) -> float:
        return next(t for t, line in self.lines if line.startswith(prefix))

    def save_seconds(self) -> list[float]:
        pattern = re.compile(r"saved the training state of step \d+ in .* \(([\d.]+) s\)")
        return [float(m.group(1)) for _, line in self.lines if (m := pattern.search(line))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of the training")
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--kill-at", type=int, default=7, help="SIGKILL after this step")
    args = parser.parse_args()
    if not 0 < args.kill_at < args.steps:
        raise SystemExit("--kill-at must be between 1 and --steps - 1")
    with tempfile.TemporaryDirectory(prefix="alt-bench-resume-") as tmp:
        spec = make_spec(Path(tmp), args.steps, args.checkpoint_every)
        killed = Clock()
        try:
            launch_training(spec, env={**ENV, FAIL_AT_STEP_ENV: str(args.kill_at)}, log=killed)
            raise SystemExit("the worker was meant to be killed but finished")
        except TrainingError:
            pass
        resumed = Clock()
        restarted = time.time()
        summary = launch_training(spec, env=ENV, log=resumed)
        first_step = resumed.first("step ") - restarted
    total, start = summary["steps"], summary["resumed_from_step"] or 0
    redone = args.kill_at - start
    saves = killed.save_seconds() + resumed.save_seconds()
    print(
        f"training resume: killed at step {args.kill_at} of {total}, resumed from step "
        f"{start}, redone {redone} steps = {100 * redone / total:.1f}% of training "
        f"(checkpoint interval {args.checkpoint_every})"
    )
    print(
        f"  restart to first resumed step: {first_step:.1f} s (worker start, model and state "
        f"load); {len(saves)} checkpoint saves, {sum(saves) / max(1, len(saves)):.2f} s each"
    )


if __name__ == "__main__":
    main()
