"""Integration tier of `tests.unit.training.test_trackers`: the real engines on the tiny model."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest

from alt_core.store import write_table
from alt_core.training.loop import (
    TRACKER_DIR,
    TrainingError,
)
from alt_core.training.state import METRICS_FILE
from alt_core.training.worker import FAIL_AT_STEP_ENV, launch_training
from tests.unit.training.test_trackers import QUIET_ENV, TRACKED, _scalars, _spec


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny GPT-2 and a 16-row table: 4 rows per update, 4 updates in one epoch."""
    from tests.support.tiny import build_tiny_model, tiny_corpus

    root = tmp_path_factory.mktemp("trackers")
    model = build_tiny_model(root / "model", n_embd=32)
    text = tiny_corpus(32, seed=2)
    table = pd.DataFrame(
        {
            "query": text[:16],
            "reference_query": text[:16],
            "response": [" " + t for t in text[16:]],
            "append_eos": [True] * 16,
        }
    )
    return {"root": root, "model": str(model), "table": write_table(str(root / "t.parquet"), table)}


@pytest.mark.integration
def test_tensorboard_logs_every_step_once_across_a_resume(setup):
    spec = _spec(setup, "tb", ["tensorboard"])
    started = time.time()
    with pytest.raises(TrainingError, match="killed by signal 9"):
        launch_training(spec, env={**QUIET_ENV, FAIL_AT_STEP_ENV: "3"}, log=lambda _line: None)
    # Steps 1-3 were logged; the checkpoint of step 2 is where the rerun picks up.
    assert [s for s, _ in _scalars(spec)["train/loss"]] == [1, 2, 3]
    summary = launch_training(spec, env=QUIET_ENV, log=lambda _line: None)
    print(f"killed + resumed training wall time: {time.time() - started:.1f} s")
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4

    scalars = _scalars(spec)
    assert set(scalars) == {f"train/{k}" for k in TRACKED}
    records = json.loads((Path(spec.output_dir) / METRICS_FILE).read_text())["steps"]
    # Step 3 of the killed attempt is hidden (purged): each step shows once, as retrained.
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in records] == [1, 2, 3, 4]
    for key in TRACKED:
        values = [v for _, v in scalars[f"train/{key}"]]
        assert all(math.isfinite(v) for v in values)
        assert values == pytest.approx([r[key] for r in records], rel=1e-5)


@pytest.mark.integration
def test_no_tracker_writes_nothing(setup):
    spec = _spec(setup, "off", [])
    summary = launch_training(spec, env=QUIET_ENV, log=lambda _line: None)
    assert summary["steps"] == 4
    out = Path(spec.output_dir)
    assert (out / "model.safetensors").exists() and not (out / TRACKER_DIR).exists()
