"""Experiment trackers (training.report_to) through Accelerate, off by default.

The unit tests check that trackers are a setting of the run, not of what it trains (the
resume key ignores them), that a missing tracker package is named before DeepSpeed
starts, and that the settings reach the tracker as flat scalars. The integration tests
train a tiny GPT-2 with real DeepSpeed in the worker process and read the TensorBoard
event files back with TensorBoard's own reader: once killed mid-training and resumed
(every step logged exactly once, numbered on from the checkpoint), once with no tracker.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from alt_core.store import write_table
from alt_core.training.loop import (
    TRACKER_DIR,
    TrainingError,
    TrainSpec,
    _check_trackers,
    _tracker_config,
)
from alt_core.training.state import resume_key

QUIET_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TRACKED = ("loss", "nll", "kl", "entropy", "lr", "grad_norm")


# ----------------------------------------------------------------------------- unit


def test_trackers_and_run_name_leave_the_resume_key_alone(tmp_path):
    table = write_table(str(tmp_path / "t.parquet"), pd.DataFrame({"query": ["a"]}))
    base = {"policy_path": str(tmp_path / "p"), "train_table": table, "output_dir": "/o"}
    plain = TrainSpec(**base, training={"kl_coef": 0.0})
    tracked = TrainSpec(
        **base, training={"kl_coef": 0.0, "report_to": ["tensorboard"]}, run_name="x-iter-002"
    )
    assert resume_key(tracked) == resume_key(plain)


def test_run_name_must_be_a_safe_folder_name():
    for bad in ("../escape", "a/b", "with space", ""):
        with pytest.raises(ValueError, match="run_name"):
            TrainSpec(policy_path="/p", train_table="t", output_dir="o", run_name=bad)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_tracker_package_is_named():
    _check_trackers(["tensorboard"])
    with pytest.raises(TrainingError, match=r"\['wandb'\].*pip install wandb"):
        _check_trackers(["tensorboard", "wandb"])


def test_tracker_config_is_flat_scalars():
    spec = TrainSpec(
        policy_path="/p",
        train_table="t",
        output_dir="o",
        reference_path="/r",
        training={"report_to": ["tensorboard"], "max_grad_norm": None},
        added_tokens=["<|good|>"],
        seed=4,
    )
    config = _tracker_config(spec)
    assert all(isinstance(v, (bool, int, float, str)) for v in config.values())
    assert config["seed"] == 4 and config["kl_coef"] == 0.05
    assert config["report_to"] == '["tensorboard"]' and config["max_grad_norm"] == "null"
    assert json.loads(config["added_tokens"]) == ["<|good|>"]


# ---------------------------------------------------------------------- integration


def _spec(setup: dict, name: str, report_to: list[str]) -> TrainSpec:
    return TrainSpec(
        policy_path=setup["model"],
        train_table=setup["table"],
        output_dir=str(setup["root"] / name / "policy.partial"),
        training={
            "learning_rate": 1e-3,
            "epochs": 1,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "kl_coef": 0.0,
            "max_seq_len": 48,
            "report_to": report_to,
        },
        run_name=f"{name}-iter-001",
        checkpoint_every=2,
    )


def _scalars(spec: TrainSpec) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every `train/*` scalar TensorBoard shows for this run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(spec.output_dir) / TRACKER_DIR / spec.run_name
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("train/")
    }
