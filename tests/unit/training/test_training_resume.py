"""Exact training resume: checkpoints, their selection, and SIGKILL mid-training.

The unit tests build checkpoint folders by hand. The integration tests train a tiny GPT-2
with real DeepSpeed in the worker process: once without interruption, then killed with
SIGKILL (`ALT_TRAIN_FAIL_AT_STEP`) and restarted, and compare every step's loss and the
final weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from alt_core.store import write_table
from alt_core.training import state as train_state
from alt_core.training.loop import TrainingError, TrainSpec
from alt_core.training.state import (
    METRICS_FILE,
    STATE_FILE,
    CheckpointError,
    finished_summary,
    prune,
    read_checkpoint,
    resume_key,
    rng_states,
    set_rng_states,
    state_lock,
    usable_checkpoints,
)
from alt_core.training.worker import FAIL_AT_STEP_ENV, crash_hook, launch_training

QUIET_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# What a resumed step must reproduce; elapsed_s is wall time and differs.
NO_KL = {"training": {"kl_coef": 0.0}}
COMPARED = ("step", "epoch", "loss", "nll", "kl", "entropy", "lr", "grad_norm", "tokens")


def _fake_checkpoint(state_dir: Path, step: int, key: str, payload: bytes = b"x" * 64) -> Path:
    """A checkpoint folder as `save_checkpoint` leaves it, without a model in it."""
    tmp = state_dir / f"{train_state.TMP_PREFIX}{step:08d}"
    (tmp / "pytorch_model").mkdir(parents=True)
    (tmp / "pytorch_model" / "states.pt").write_bytes(payload)
    (tmp / "scheduler.bin").write_bytes(b"s" * 8)
    train_state._write_record(tmp, {"resume_key": key, "step": step, "records": []})
    final = train_state.checkpoint_path(state_dir, step)
    tmp.rename(final)
    return final


# ----------------------------------------------------------------------------- unit


def test_state_dir_defaults_beside_the_output_folder():
    spec = TrainSpec(
        policy_path="/p", train_table="t", output_dir="/run/iter_1/policy.partial/", **NO_KL
    )
    assert spec.resolved_state_dir == Path("/run/iter_1/policy.partial.state")
    spec.state_dir = "/elsewhere/state"
    assert spec.resolved_state_dir == Path("/elsewhere/state")
    with pytest.raises(ValueError):
        TrainSpec(policy_path="/p", train_table="t", output_dir="o", keep_checkpoints=0, **NO_KL)


def test_resume_key_covers_what_is_trained_not_where_or_how_often(tmp_path):
    table = str(tmp_path / "train.parquet")
    write_table(table, pd.DataFrame({"query": ["a"], "response": ["b"]}))
    base = {"policy_path": str(tmp_path / "p"), "train_table": table, "seed": 1, **NO_KL}
    spec = TrainSpec(**base, output_dir="/a")
    key = resume_key(spec)
    same = TrainSpec(
        **base, output_dir="/b", state_dir="/s", checkpoint_every=3, keep_checkpoints=5
    )
    assert resume_key(same) == key
    assert resume_key(TrainSpec(**{**base, "seed": 2}, output_dir="/a")) != key
    lr = TrainSpec(**{**base, "training": {"kl_coef": 0, "learning_rate": 1e-3}}, output_dir="/a")
    assert resume_key(lr) != key
    # Same path, new content (a datapool rebuilt with other settings): another key.
    write_table(table, pd.DataFrame({"query": ["a"], "response": ["c"]}))
    assert resume_key(spec) != key


def test_damaged_and_unfinished_checkpoints_are_skipped(tmp_path):
    state, key = tmp_path / "state", "k1"
    _fake_checkpoint(state, 4, key)
    newest = _fake_checkpoint(state, 8, key)
    assert [p.name for p, _ in usable_checkpoints(state, key, print)] == [
        "step-00000008",
        "step-00000004",
    ]
    # The newest loses bytes of one file (a damaged disk, a partial copy) ...
    states = newest / "pytorch_model" / "states.pt"
    states.write_bytes(states.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="has 10 bytes, 64 were saved"):
        read_checkpoint(newest, key)
    # ... a save was killed before its rename, another before its resume.json ...
    (state / f"{train_state.TMP_PREFIX}00000012").mkdir()
    (state / "step-00000016").mkdir()
    # ... and a checkpoint belongs to other inputs.
    _fake_checkpoint(state, 20, "other-key")
    lines: list[str] = []
    found = usable_checkpoints(state, key, lines.append)
    assert [(p.name, r["step"]) for p, r in found] == [("step-00000004", 4)]
    text = "\n".join(lines)
    assert "step-00000008: file pytorch_model/states.pt has 10 bytes" in text
    assert "no resume.json" in text and "interrupted" in text and "other inputs" in text
    assert sorted(p.name for p in state.iterdir()) == ["step-00000004"]  # the rest is gone


def test_unreadable_or_misnamed_resume_records_are_refused(tmp_path):
    path = _fake_checkpoint(tmp_path, 4, "k")
    renamed = path.rename(tmp_path / "step-00000005")
    with pytest.raises(CheckpointError, match="named step-00000005"):
        read_checkpoint(renamed, "k")
    (renamed / STATE_FILE).write_text('{"format": 1, "resume_')
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(renamed, "k")


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path, step, "k")
    removed = prune(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step-00000002", "step-00000004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000006", "step-00000008"]


def test_rng_states_round_trip():
    import random

    import numpy as np

    saved = rng_states()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_states(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_state_lock_refuses_a_second_training(tmp_path):
    refused = pytest.raises(TrainingError, match="another training")
    with state_lock(tmp_path / "state"), refused, state_lock(tmp_path / "state"):
        pass
    with state_lock(tmp_path / "state"):  # released when the holder is done
        pass


def test_finished_summary_needs_the_same_training(tmp_path):
    spec = TrainSpec(policy_path="/p", train_table="t", output_dir=str(tmp_path / "out"), **NO_KL)
    assert finished_summary(spec) is None
    (tmp_path / "out").mkdir()
    metrics = {"summary": {"steps": 3}, "resume_key": resume_key(spec)}
    (tmp_path / "out" / METRICS_FILE).write_text(json.dumps(metrics))
    assert finished_summary(spec) is None  # metrics without a model: not finished
    (tmp_path / "out" / "model.safetensors").write_bytes(b"weights")
    assert finished_summary(spec) == {"steps": 3}
    other = spec.model_copy(update={"seed": 9})
    assert finished_summary(other) is None


def test_crash_hook_reads_its_variable():
    assert crash_hook({}) is None
    assert callable(crash_hook({FAIL_AT_STEP_ENV: "7"}))
    with pytest.raises(ValueError, match=FAIL_AT_STEP_ENV):
        crash_hook({FAIL_AT_STEP_ENV: "seven"})


# ---------------------------------------------------------------------- integration


def _spec(setup: dict, name: str, log_every: int = 1, **extra) -> TrainSpec:
    training = {
        "log_every": log_every,
        "learning_rate": 3e-3,
        "epochs": 2,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "kl_coef": 0.05,
        "entropy_coef": 0.06,
        "zero_stage": 2,
        "max_seq_len": 64,
    }
    return TrainSpec(
        policy_path=setup["model"],
        reference_path=setup["model"],
        train_table=setup["table"],
        output_dir=str(setup["root"] / name / "policy.partial"),
        training=training,
        seed=5,
        checkpoint_every=4,
        **extra,
    )


def _run(spec: TrainSpec, fail_at: int | None = None) -> tuple[dict | None, list[str]]:
    lines: list[str] = []
    env = {**QUIET_ENV, **({FAIL_AT_STEP_ENV: str(fail_at)} if fail_at else {})}
    try:
        return launch_training(spec, env=env, log=lines.append), lines
    except TrainingError as exc:
        assert fail_at, f"training failed: {exc}"
        assert "killed by signal 9" in str(exc) and "resume" in str(exc)
        return None, lines


def _steps(spec: TrainSpec) -> list[dict]:
    return json.loads((Path(spec.output_dir) / METRICS_FILE).read_text())["steps"]


def _step_lines(lines: list[str]) -> list[int]:
    return [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("step ")]


def _checkpoints(spec: TrainSpec) -> list[str]:
    return sorted(p.name for p in spec.resolved_state_dir.glob("step-*"))


def _assert_same_training(resumed: TrainSpec, baseline: TrainSpec) -> float:
    """Every step's record and the final weights match; returns the largest difference."""
    got, want = _steps(resumed), _steps(baseline)
    assert [r["step"] for r in got] == list(range(1, 13))
    worst = 0.0
    for mine, theirs in zip(got, want, strict=True):
        for key in COMPARED:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6, rel=0), (mine, theirs)
            if isinstance(mine[key], float):
                worst = max(worst, abs(mine[key] - theirs[key]))
    a = load_file(str(Path(resumed.output_dir) / "model.safetensors"))
    b = load_file(str(Path(baseline.output_dir) / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        worst = max(worst, (a[name] - b[name]).abs().max().item())
    assert worst <= 1e-6
    return worst


def test_fetch_skips_a_corrupt_copy_for_an_older_one(tmp_path, s3_run_root):
    state_uri = f"{s3_run_root}/policy.state"
    for step in (4, 8):
        train_state.mirror_checkpoint(_fake_checkpoint(tmp_path / "saved", step, "k"), state_uri, 2)
    train_state.mirror_checkpoint(_fake_checkpoint(tmp_path / "saved", 12, "k"), state_uri, 2)
    assert train_state.stored_checkpoints(state_uri) == ["step-00000012", "step-00000008"]
    from alt_core import store

    store.write_bytes_atomic(f"{state_uri}/step-00000012/scheduler.bin", b"garbage!")
    lines: list[str] = []
    local = tmp_path / "fresh"
    fetched = train_state.fetch_newer_checkpoint(local, state_uri, 0, lines.append)
    assert fetched == local / "step-00000008"
    assert "does not match its commit hash" in lines[0]
    assert [p.name for p, _ in usable_checkpoints(local, "k", print)] == ["step-00000008"]
    # Nothing newer than what is local: nothing fetched.
    assert train_state.fetch_newer_checkpoint(local, state_uri, 8, print) is None
