"""Integration tier of `tests.unit.training.test_training_resume`: the real engines on the tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from alt_core.store import write_table
from alt_core.training import state as train_state
from alt_core.training.loop import TrainSpec
from alt_core.training.state import (
    METRICS_FILE,
)
from tests.unit.training.test_training_resume import (
    _assert_same_training,
    _checkpoints,
    _run,
    _spec,
    _step_lines,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny GPT-2 (with dropout, so RNG state matters) and a 24-row table: 2 rows per
    micro-batch x 2 micro-batches per update = 6 updates per epoch, 12 over 2 epochs."""
    from tests.support.tiny import build_tiny_model, tiny_corpus

    root = tmp_path_factory.mktemp("resume")
    model = build_tiny_model(root / "model")
    text = tiny_corpus(48, seed=1)
    table = pd.DataFrame(
        {
            "query": ["Excellent. input: " + t for t in text[:24]],
            "reference_query": text[:24],
            "response": [" " + t for t in text[24:]],
            "append_eos": [i % 3 != 0 for i in range(24)],
        }
    )
    return {"root": root, "model": str(model), "table": write_table(str(root / "t.parquet"), table)}


@pytest.fixture(scope="module")
def baseline(setup) -> TrainSpec:
    spec = _spec(setup, "baseline")
    summary, lines = _run(spec)
    assert summary["steps"] == 12 and summary["resumed_from_step"] is None
    assert _step_lines(lines) == list(range(1, 13))
    assert _checkpoints(spec) == ["step-00000008", "step-00000012"]  # saved at 4, 8, 12; keep 2
    return spec


@pytest.mark.integration
def test_killed_training_resumes_where_its_last_checkpoint_left_off(setup, baseline):
    spec = _spec(setup, "killed")
    summary, lines = _run(spec, fail_at=7)
    assert summary is None and _step_lines(lines) == list(range(1, 8))
    assert _checkpoints(spec) == ["step-00000004"]
    assert not (Path(spec.output_dir) / METRICS_FILE).exists()

    summary, lines = _run(spec)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12
    assert any("resuming after step 4/12 (epoch 0, step 4 of the epoch)" in x for x in lines)
    assert _step_lines(lines) == list(range(5, 13))  # no step trained twice or skipped
    worst = _assert_same_training(spec, baseline)
    print(f"largest difference to the uninterrupted run: {worst:.3g}")

    started = time.time()
    again, lines = _run(spec)  # finished: returns the saved summary, trains nothing
    assert again == summary and not _step_lines(lines)
    assert any("already finished" in x for x in lines) and time.time() - started < 5


@pytest.mark.integration
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(setup, baseline):
    spec = _spec(setup, "damaged")
    _run(spec, fail_at=9)  # in epoch 1, after the checkpoint of step 8
    assert _checkpoints(spec) == ["step-00000004", "step-00000008"]
    newest = spec.resolved_state_dir / "step-00000008"
    biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    (spec.resolved_state_dir / f"{train_state.TMP_PREFIX}00000012").mkdir()  # a killed save

    summary, lines = _run(spec)
    assert summary["resumed_from_step"] == 4
    assert any("skipping and removing checkpoint" in x and "step-00000008" in x for x in lines)
    assert _step_lines(lines) == list(range(5, 13))
    _assert_same_training(spec, baseline)
    assert _checkpoints(spec) == ["step-00000008", "step-00000012"]


@pytest.mark.integration
def test_state_of_other_inputs_is_not_resumed(setup, baseline):
    """The same folders with another seed: the old state is discarded, not loaded."""
    spec = _spec(setup, "killed-other")
    _run(spec, fail_at=5)
    other = spec.model_copy(update={"seed": 6})
    summary, lines = _run(other)
    assert summary["resumed_from_step"] is None and _step_lines(lines) == list(range(1, 13))
    assert any("other inputs" in x for x in lines)


@pytest.mark.integration
def test_state_copied_to_the_run_store_survives_a_lost_machine(setup, baseline, s3_run_root):
    """Checkpoints are copied to S3 as they are saved; a training restarted with an empty
    local disk (another machine, a lost scratch folder) fetches the newest and continues."""
    import shutil

    state_uri = f"{s3_run_root}/iter_001/policy.state"
    spec = _spec(setup, "lost-machine", log_every=5, state_uri=state_uri)
    _, lines = _run(spec, fail_at=9)  # after the checkpoint of step 8 (saved at 4, 8; keep 2)
    assert _step_lines(lines) == [1, 5]
    assert train_state.stored_checkpoints(state_uri) == ["step-00000008", "step-00000004"]
    shutil.rmtree(spec.resolved_state_dir)
    shutil.rmtree(spec.output_dir, ignore_errors=True)

    summary, lines = _run(spec)
    assert any("fetched the training state of step 8" in x for x in lines)
    # Printed: the first step after the resume, every 5th, and the last.
    assert summary["resumed_from_step"] == 8 and _step_lines(lines) == [9, 10, 12]
    _assert_same_training(spec, baseline)
    # The store keeps the newest two, like the local folder.
    assert train_state.stored_checkpoints(state_uri) == ["step-00000012", "step-00000008"]
