"""Kept engines (`sampling.engine_reuse`): the same run with and without them, through
the real flow (vLLM's CPU build, DeepSpeed), commits the same samples and metrics."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from tests.support.runs import tiny_run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What differs between two equal runs: wall times and the stages' own records.
_TIMES = {"train_sample_s", "train_feedback_s", "datapool_s", "train_s", "eval_s", "reused"}


# The policies the engine serves: the base (iteration 0's evaluation, iteration 1's
# train sampling), then iteration 1's checkpoint (its evaluation): fresh, kept, switched.
_TABLES = [(0, "eval"), (1, "train"), (1, "eval")]


def _run(tmp_path, model_dir, name: str, reuse: bool):
    from flows.run import alt_run

    config = tiny_run_config(
        tmp_path,
        model_dir,
        iterations=1,
        sampling={
            "num_generations": 4, "max_new_tokens": 12, "num_shards": 2, "concurrency": 1,
            "engine_reuse": reuse,
        },
        evaluation={"evaluate_initial": True},
    )  # fmt: skip
    run_dir = str(tmp_path / name)
    rows = alt_run(config=config, run_dir=run_dir)
    return run_dir, rows


def _samples(run_dir: str) -> dict[str, pd.DataFrame]:
    layout = RunLayout(run_dir)
    tables = {}
    for k, phase in _TABLES:
        for i in range(2):
            uri = layout.shard(k, f"{phase}_samples", i)
            if store.is_committed(uri):
                tables[f"{k}-{phase}-{i}"] = store.read_table(uri)
    return tables


def _engines(run_dir: str) -> list[str]:
    return [
        store.commit_info(RunLayout(run_dir).shard(k, f"{phase}_samples", i))["meta"]["engine"]
        for k, phase in _TABLES
        for i in range(2)
    ]


def test_kept_engines_commit_what_fresh_engines_do(tmp_path, tiny_model_dir, prefect_harness):
    fresh_dir, fresh_rows = _run(tmp_path, tiny_model_dir, "fresh", reuse=False)
    kept_dir, kept_rows = _run(tmp_path, tiny_model_dir, "kept", reuse=True)

    # One engine served every shard: started once, switched to each new policy in place
    # (checked against the trainer's probe), kept for the shards of the same policy.
    assert set(_engines(fresh_dir)) == {"fresh"}
    engines = _engines(kept_dir)
    print("engines with reuse:", engines)
    assert engines.count("fresh") == 1  # the first shard to run (either of iteration 0's)
    assert engines.count("switched") == 1  # iteration 1's policy, at its evaluation
    assert engines.count("kept") == 4  # the other shards of the same policy
    fresh, kept = _samples(fresh_dir), _samples(kept_dir)
    assert fresh.keys() == kept.keys() and len(fresh) == 6
    for key in fresh:
        pd.testing.assert_frame_equal(fresh[key], kept[key], check_exact=True, obj=key)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in _TIMES} for r in rows]  # noqa: E731
    assert strip(fresh_rows) == strip(kept_rows)
